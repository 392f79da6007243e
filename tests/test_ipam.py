"""Unit tests for controller.ipam (pure; no etcd, no namespaces)."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # until pytest's pythonpath is configured for the repo root
    sys.path.insert(0, _ROOT)

from controller import errors, ipam  # noqa: E402
from controller.errors import AlreadyExists, BaryonError, InvalidArgument  # noqa: E402


def plan(**kw: Any) -> ipam.SubnetPlan:
    args: dict[str, Any] = {
        "cidr": "10.0.0.0/24",
        "ip_version": None,
        "gateway_ip": None,
        "allocation_pools": [],
        "dns_nameservers": [],
        "host_routes": [],
        "enable_dhcp": True,
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
    }
    args.update(kw)
    return ipam.validate_subnet(**args)


def v6(**kw: Any) -> ipam.SubnetPlan:
    return plan(**{"cidr": "2001:db8::/64", **kw})


def fails(
    fn: Callable[[], object],
    reason: str,
    field: str | None,
    contains: str = "",
    cls: type[BaryonError] = InvalidArgument,
) -> BaryonError:
    with pytest.raises(cls) as info:
        fn()
    err = info.value
    assert err.reason == reason, (err.reason, err.message)
    if field is not None:
        assert err.field_violations == [(field, err.message)]
    assert contains in err.message, err.message
    return err


def bad_subnet(reason: str, field: str | None, contains: str = "", **kw: Any) -> BaryonError:
    return fails(lambda: plan(**kw), reason, field, contains)


# ----------------------------------------------------------------------------- errors


def test_error_hierarchy() -> None:
    e = InvalidArgument("bad cidr", field="subnet.cidr", network_id="n1")
    assert e.reason == "InvalidInput"
    assert e.field_violations == [("subnet.cidr", "bad cidr")]
    assert e.metadata == {"network_id": "n1"}
    assert e.grpc_code_name == "INVALID_ARGUMENT"
    assert str(e) == e.message == "bad cidr"
    e2 = errors.FailedPrecondition("x", reason="SubnetInUse", violations=[("a", "b")])
    assert e2.field_violations == [("a", "b")] and e2.reason == "SubnetInUse"
    assert errors.Conflict is errors.FailedPrecondition
    codes = {
        errors.NotFound: "NOT_FOUND",
        errors.FailedPrecondition: "FAILED_PRECONDITION",
        errors.AlreadyExists: "ALREADY_EXISTS",
        errors.ResourceExhausted: "RESOURCE_EXHAUSTED",
        errors.Aborted: "ABORTED",
        errors.Unauthenticated: "UNAUTHENTICATED",
        errors.PermissionDenied: "PERMISSION_DENIED",
        errors.Unavailable: "UNAVAILABLE",
    }
    for cls, code in codes.items():
        assert issubclass(cls, BaryonError) and cls.grpc_code_name == code
        assert cls("m").reason  # every class has a default reason


# ----------------------------------------------------------------------------- conversions


def test_ip_int_roundtrip() -> None:
    assert ipam.ip_to_int("10.0.0.1") == 0x0A000001
    assert ipam.int_to_ip(0x0A000001, 4) == "10.0.0.1"
    assert ipam.parse_ip("2001:DB8::1") == ((0x20010DB8 << 96) | 1, 6)
    assert ipam.int_to_ip((0x20010DB8 << 96) | 1, 6) == "2001:db8::1"
    assert ipam.int_to_ip(0, 6) == "::"
    assert ipam.int_to_ip(ipam.ip_to_int("::ffff:1.2.3.4"), 6) == "::ffff:1.2.3.4"


@pytest.mark.parametrize(
    "text", ["010.0.0.1", "1.2.3", " 1.2.3.4", "1.2.3.4 ", "1.2.3.256", "fe80::1%eth0", "", "x"]
)
def test_parse_ip_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ipam.parse_ip(text)


def test_int_to_ip_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        ipam.int_to_ip(1 << 32, 4)
    with pytest.raises(ValueError):
        ipam.int_to_ip(-1, 6)
    with pytest.raises(ValueError):
        ipam.int_to_ip(1, 5)


# ----------------------------------------------------------------------------- cidr / version


@pytest.mark.parametrize(
    ("cidr", "contains"),
    [
        ("abc", "is not a valid IP subnet"),
        ("", "is not a valid IP subnet"),
        ("10.0.0.0/33", "is not a valid IP subnet"),
        ("10.0.0.0/x", "is not a valid IP subnet"),
        ("010.0.0.0/24", "is not a valid IP subnet"),
        ("2001:db8::/129", "is not a valid IP subnet"),
        ("10.0.0.0", "'10.0.0.0/32' is recommended"),
        ("10.0.0.0/024", "'10.0.0.0/24' is recommended"),
        ("10.0.0.0/255.255.255.0", "is not a valid IP subnet"),
    ],
)
def test_invalid_cidr(cidr: str, contains: str) -> None:
    bad_subnet("InvalidInput", "subnet.cidr", contains, cidr=cidr)


def test_cidr_host_bits_are_normalized() -> None:
    assert plan(cidr="10.0.0.5/24").cidr == "10.0.0.0/24"
    p = plan(cidr="2001:DB8:0:0::5/64")
    assert (p.cidr, p.ip_version, p.prefixlen) == ("2001:db8::/64", 6, 64)


def test_ip_version() -> None:
    assert plan(ip_version=4).ip_version == 4
    assert plan(ip_version=0).ip_version == 4  # proto3 "unset"
    bad_subnet("InvalidInput", "subnet.ip_version", "is not in [4, 6]", ip_version=5)
    bad_subnet(
        "InvalidInput",
        "subnet.cidr",
        "cidr '10.0.0.0/24' does not match the ip_version '6'",
        ip_version=6,
    )
    bad_subnet("InvalidInput", "subnet.cidr", "ip_version '4'", cidr="2001:db8::/64", ip_version=4)


def test_zero_prefix_rejected() -> None:
    msg = "0 is not allowed as CIDR prefix length"
    bad_subnet("InvalidInput", "subnet.cidr", msg, cidr="0.0.0.0/0", enable_dhcp=False)
    bad_subnet("InvalidInput", "subnet.cidr", msg, cidr="::/0", enable_dhcp=False)


def test_field_prefix() -> None:
    err = fails(
        lambda: plan(cidr="nope", field_prefix="subnets[2]"), "InvalidInput", "subnets[2].cidr"
    )
    assert "nope" in err.message


@pytest.mark.parametrize(
    ("cidr", "contains"),
    [
        ("10.0.0.0/31", "prefix length that is incompatible with DHCP"),
        ("10.0.0.0/32", "prefix length that is incompatible with DHCP"),
        ("2001:db8::/127", "prefix length that is incompatible with DHCP"),
        ("224.0.0.0/24", "Multicast IP subnet"),
        ("ff00::/64", "Multicast IP subnet"),
        ("127.0.0.0/24", "Loopback IP subnet"),
        ("0.0.0.0/8", "First IP '0.0.0.0'"),
    ],
)
def test_dhcp_cidr_rules(cidr: str, contains: str) -> None:
    bad_subnet("InvalidInput", "subnet.cidr", contains, cidr=cidr)
    plan(cidr=cidr, enable_dhcp=False, gateway_ip="")  # fine without DHCP


def test_dhcp_prefix_limits_ok() -> None:
    assert plan(cidr="10.0.0.0/30").pools == [("10.0.0.2", "10.0.0.2")]
    assert v6(cidr="2001:db8::/126").pools == [("2001:db8::2", "2001:db8::3")]


# ----------------------------------------------------------------------------- gateway + pools


def test_default_v4_24() -> None:
    p = plan()
    assert p.cidr == "10.0.0.0/24"
    assert p.gateway_ip == "10.0.0.1" and p.gateway == ipam.ip_to_int("10.0.0.1")
    assert p.pools == [("10.0.0.2", "10.0.0.254")]
    assert p.pool_ranges == [(ipam.ip_to_int("10.0.0.2"), ipam.ip_to_int("10.0.0.254"))]
    assert p.pool_size == 253
    assert (p.network, p.last) == (ipam.ip_to_int("10.0.0.0"), ipam.ip_to_int("10.0.0.255"))
    assert p.dns_nameservers == [] and p.host_routes == []
    assert p.enable_dhcp and not p.is_auto_address


def test_no_gateway() -> None:
    p = plan(gateway_ip="")
    assert p.gateway_ip is None and p.gateway is None
    assert p.pools == [("10.0.0.1", "10.0.0.254")] and p.pool_size == 254


def test_gateway_splits_default_pool() -> None:
    assert plan(gateway_ip="10.0.0.254").pools == [("10.0.0.1", "10.0.0.253")]
    assert plan(gateway_ip="10.0.0.128").pools == [
        ("10.0.0.1", "10.0.0.127"),
        ("10.0.0.129", "10.0.0.254"),
    ]
    assert plan(gateway_ip="10.0.0.128").pool_size == 253


def test_gateway_outside_cidr_allowed() -> None:
    p = plan(gateway_ip="10.0.1.1")
    assert p.gateway_ip == "10.0.1.1"
    assert p.pools == [("10.0.0.1", "10.0.0.254")]


@pytest.mark.parametrize("gw", ["10.0.0.0", "10.0.0.255"])
def test_gateway_network_or_broadcast_rejected(gw: str) -> None:
    bad_subnet("InvalidInput", "subnet.gateway_ip", "Gateway is not valid on subnet", gateway_ip=gw)


def test_gateway_invalid_or_wrong_version() -> None:
    bad_subnet("InvalidInput", "subnet.gateway_ip", "is not a valid IP address", gateway_ip="x")
    bad_subnet(
        "InvalidInput",
        "subnet.gateway_ip",
        "gateway_ip '2001:db8::1' does not match the ip_version '4'",
        gateway_ip="2001:db8::1",
    )


def test_default_v4_30() -> None:
    p = plan(cidr="10.0.0.0/30")
    assert p.gateway_ip == "10.0.0.1" and p.pools == [("10.0.0.2", "10.0.0.2")]


def test_v4_31() -> None:
    # Neutron: both addresses are usable; the default gateway (network+1) is the last address,
    # which Neutron's IPAM refuses, so a /31 needs no gateway (or one outside it).
    p = plan(cidr="10.0.0.0/31", enable_dhcp=False, gateway_ip="")
    assert p.pools == [("10.0.0.0", "10.0.0.1")] and p.pool_size == 2
    p = plan(cidr="10.0.0.0/31", enable_dhcp=False, gateway_ip="10.0.1.1")
    assert p.pools == [("10.0.0.0", "10.0.0.1")]
    bad_subnet(
        "IpamValueInvalid",
        "subnet.gateway_ip",
        "Gateway IP 10.0.0.1 cannot be allocated in CIDR 10.0.0.0/31",
        cidr="10.0.0.0/31",
        enable_dhcp=False,
    )
    bad_subnet(
        "InvalidInput",
        "subnet.gateway_ip",
        "Gateway is not valid",
        cidr="10.0.0.0/31",
        enable_dhcp=False,
        gateway_ip="10.0.0.0",
    )


def test_v4_32() -> None:
    p = plan(cidr="10.0.0.5/32", enable_dhcp=False)
    assert p.cidr == "10.0.0.5/32"
    assert p.gateway_ip == "10.0.0.6"  # network+1, outside the /32: allowed
    assert p.pools == [("10.0.0.5", "10.0.0.5")] and p.pool_size == 1
    assert plan(cidr="10.0.0.5/32", enable_dhcp=False, gateway_ip="").pools == [
        ("10.0.0.5", "10.0.0.5")
    ]


def test_default_v6_64() -> None:
    p = v6()
    assert p.gateway_ip == "2001:db8::1"
    # the network address (subnet-router anycast) and the gateway are excluded
    assert p.pools == [("2001:db8::2", "2001:db8::ffff:ffff:ffff:ffff")]
    assert p.pool_size == 2**64 - 2
    p = v6(gateway_ip="")
    assert p.pools == [("2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff")]
    assert p.pool_size == 2**64 - 1


def test_v6_gateway_rules() -> None:
    # IPv6 has no broadcast: the last address and the network address are valid gateways.
    assert v6(gateway_ip="2001:db8::ffff:ffff:ffff:ffff").pool_size == 2**64 - 2
    p = v6(gateway_ip="2001:db8::")
    assert p.gateway_ip == "2001:db8::" and p.pools[0][0] == "2001:db8::1"
    assert v6(gateway_ip="fe80::1").gateway_ip == "fe80::1"  # outside: allowed


def test_v6_small_prefixes() -> None:
    assert v6(cidr="2001:db8::5/128", enable_dhcp=False).pools == [("2001:db8::5", "2001:db8::5")]
    p = v6(cidr="2001:db8::/127", enable_dhcp=False)
    assert p.pools == [] and p.pool_size == 0  # only address besides ::0 is the gateway


def test_explicit_pools_sorted_and_canonical() -> None:
    p = plan(allocation_pools=[("10.0.0.100", "10.0.0.200"), ("10.0.0.10", "10.0.0.20")])
    assert p.pools == [("10.0.0.10", "10.0.0.20"), ("10.0.0.100", "10.0.0.200")]
    assert p.pool_size == 11 + 101
    q = v6(allocation_pools=[["2001:DB8::10", "2001:db8::0:20"]])
    assert q.pools == [("2001:db8::10", "2001:db8::20")]
    assert plan(allocation_pools=[("10.0.0.2", "10.0.0.254")]).pool_size == 253


def test_pool_bad_addresses() -> None:
    bad_subnet(
        "InvalidInput",
        "subnet.allocation_pools[1].start",
        "is not a valid IP address",
        allocation_pools=[("10.0.0.2", "10.0.0.3"), ("10.0.0.x", "10.0.0.9")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.allocation_pools[0].end",
        "is not a valid IP address",
        allocation_pools=[("10.0.0.2", "")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.allocation_pools[0]",
        "Invalid data format",
        allocation_pools=[("10.0.0.2", "10.0.0.3", "10.0.0.4")],
    )


@pytest.mark.parametrize(
    "pool",
    [("10.0.0.9", "10.0.0.2"), ("2001:db8::2", "2001:db8::3"), ("10.0.0.2", "2001:db8::3")],
)
def test_pool_invalid(pool: tuple[str, str]) -> None:
    bad_subnet(
        "InvalidAllocationPool",
        "subnet.allocation_pools[0]",
        f"The allocation pool {pool[0]}-{pool[1]} is not valid.",
        allocation_pools=[pool],
    )


@pytest.mark.parametrize(
    "pool",
    [("10.0.0.0", "10.0.0.9"), ("10.0.0.2", "10.0.0.255"), ("10.0.0.200", "10.0.1.5")],
)
def test_pool_out_of_bounds(pool: tuple[str, str]) -> None:
    bad_subnet(
        "OutOfBoundsAllocationPool",
        "subnet.allocation_pools[0]",
        "spans beyond the subnet cidr 10.0.0.0/24",
        allocation_pools=[pool],
    )


def test_pool_out_of_bounds_v6_network_address() -> None:
    fails(
        lambda: v6(allocation_pools=[("2001:db8::", "2001:db8::9")]),
        "OutOfBoundsAllocationPool",
        "subnet.allocation_pools[0]",
    )
    # the last IPv6 address is usable
    assert v6(allocation_pools=[("2001:db8::ffff:ffff:ffff:fff0", "2001:db8::ffff:ffff:ffff:ffff")])


def test_pools_overlap() -> None:
    err = bad_subnet(
        "OverlappingAllocationPools",
        "subnet.allocation_pools[2]",
        "Found overlapping allocation pools: 10.0.0.10-10.0.0.20 10.0.0.15-10.0.0.30"
        " for subnet 10.0.0.0/24.",
        allocation_pools=[
            ("10.0.0.10", "10.0.0.20"),
            ("10.0.0.100", "10.0.0.110"),
            ("10.0.0.15", "10.0.0.30"),
        ],
    )
    assert err
    bad_subnet(
        "OverlappingAllocationPools",
        "subnet.allocation_pools[1]",
        allocation_pools=[("10.0.0.10", "10.0.0.20"), ("10.0.0.20", "10.0.0.20")],
    )


def test_pool_contains_gateway() -> None:
    bad_subnet(
        "GatewayConflictWithAllocationPools",
        "subnet.allocation_pools[0]",
        "Gateway ip 10.0.0.1 conflicts with allocation pool 10.0.0.1-10.0.0.50.",
        allocation_pools=[("10.0.0.1", "10.0.0.50")],
    )
    bad_subnet(
        "GatewayConflictWithAllocationPools",
        "subnet.allocation_pools[1]",
        allocation_pools=[("10.0.0.2", "10.0.0.5"), ("10.0.0.100", "10.0.0.120")],
        gateway_ip="10.0.0.110",
    )
    assert plan(allocation_pools=[("10.0.0.1", "10.0.0.50")], gateway_ip="").pool_size == 50


# ----------------------------------------------------------------------------- dns / routes


def test_dns_nameservers() -> None:
    p = plan(dns_nameservers=["8.8.8.8", "1.1.1.1"])
    assert p.dns_nameservers == ["8.8.8.8", "1.1.1.1"]
    assert v6(dns_nameservers=["2001:DB8::53"]).dns_nameservers == ["2001:db8::53"]
    bad_subnet(
        "InvalidInput",
        "subnet.dns_nameservers[1]",
        "'8.8.8' is not a valid nameserver",
        dns_nameservers=["1.1.1.1", "8.8.8"],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.dns_nameservers[1]",
        "Duplicate nameserver '8.8.8.8'",
        dns_nameservers=["8.8.8.8", "8.8.8.8"],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.dns_nameservers[0]",
        "dns_nameserver '2001:db8::53' does not match the ip_version '4'",
        dns_nameservers=["2001:db8::53"],
    )


def test_lists_given_as_strings() -> None:
    bad_subnet(
        "InvalidInput", "subnet.dns_nameservers", "Invalid data format", dns_nameservers="8.8.8.8"
    )
    bad_subnet("InvalidInput", "subnet.host_routes", "Invalid data format", host_routes="x")
    bad_subnet(
        "InvalidInput", "subnet.allocation_pools", "Invalid data format", allocation_pools="x"
    )


def test_dns_limit() -> None:
    five = [f"10.1.0.{i}" for i in range(1, 6)]
    assert len(plan(dns_nameservers=five).dns_nameservers) == 5
    bad_subnet(
        "DNSNameServersExhausted",
        "subnet.dns_nameservers",
        "The number of DNS nameservers exceeds the limit 5.",
        dns_nameservers=[*five, "10.1.0.9"],
    )
    fails(
        lambda: plan(dns_nameservers=five[:2], max_dns_nameservers=1),
        "DNSNameServersExhausted",
        "subnet.dns_nameservers",
    )


def test_host_routes() -> None:
    p = plan(host_routes=[("192.168.0.0/16", "10.0.0.10"), ("172.16.0.5/12", "10.0.0.11")])
    # destination kept as given (Neutron stores host bits), canonical text
    assert p.host_routes == [("192.168.0.0/16", "10.0.0.10"), ("172.16.0.5/12", "10.0.0.11")]
    assert v6(host_routes=[["2001:DB8:1::/48", "2001:db8::FE"]]).host_routes == [
        ("2001:db8:1::/48", "2001:db8::fe")
    ]
    bad_subnet(
        "InvalidInput",
        "subnet.host_routes[0].destination",
        "'10.1.0.0/32' is recommended",
        host_routes=[("10.1.0.0", "10.0.0.1")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.host_routes[0].nexthop",
        "is not a valid IP address",
        host_routes=[("10.1.0.0/16", "10.0.0")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.host_routes[1]",
        "Duplicate hostroute",
        host_routes=[("10.1.0.0/16", "10.0.0.1"), ("10.1.0.0/16", "10.0.0.1")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.host_routes[0].nexthop",
        "nexthop '2001:db8::1' does not match the ip_version '4'",
        host_routes=[("10.1.0.0/16", "2001:db8::1")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.host_routes[0].destination",
        "destination '2001:db8::/64' does not match the ip_version '4'",
        host_routes=[("2001:db8::/64", "10.0.0.1")],
    )
    bad_subnet(
        "InvalidInput",
        "subnet.host_routes[0]",
        "Invalid data format",
        host_routes=[("10.1.0.0/16",)],
    )


def test_host_routes_limit() -> None:
    routes = [(f"10.{i}.0.0/16", "10.0.0.1") for i in range(1, 22)]
    assert len(plan(host_routes=routes[:20]).host_routes) == 20
    bad_subnet(
        "HostRoutesExhausted",
        "subnet.host_routes",
        "The number of host routes exceeds the limit 20.",
        host_routes=routes,
    )


# ----------------------------------------------------------------------------- ipv6 modes


def test_ipv6_modes() -> None:
    p = v6(ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    assert p.is_auto_address and p.ipv6_ra_mode == p.ipv6_address_mode == "slaac"
    assert v6(ipv6_address_mode="dhcpv6-stateless").is_auto_address
    assert not v6(ipv6_address_mode="dhcpv6-stateful", cidr="2001:db8::/80").is_auto_address
    assert v6(ipv6_ra_mode="slaac").is_auto_address  # ra mode alone is fine
    p = v6(ipv6_ra_mode="", ipv6_address_mode="")
    assert p.ipv6_ra_mode is None and p.ipv6_address_mode is None


def test_ipv6_mode_errors() -> None:
    fails(
        lambda: v6(ipv6_ra_mode="bogus"),
        "InvalidInput",
        "subnet.ipv6_ra_mode",
        "bogus is not in ['dhcpv6-stateful', 'dhcpv6-stateless', 'slaac']",
    )
    fails(lambda: v6(ipv6_address_mode="SLAAC"), "InvalidInput", "subnet.ipv6_address_mode")
    bad_subnet(
        "InvalidInput",
        "subnet.ipv6_ra_mode",
        "ipv6_ra_mode is not valid when ip_version is 4",
        ipv6_ra_mode="slaac",
    )
    bad_subnet(
        "InvalidInput",
        "subnet.ipv6_address_mode",
        "ipv6_address_mode is not valid when ip_version is 4",
        ipv6_address_mode="slaac",
    )
    fails(
        lambda: v6(ipv6_address_mode="slaac", enable_dhcp=False),
        "InvalidInput",
        "subnet.enable_dhcp",
        "cannot be set when enable_dhcp is set to False",
    )
    fails(
        lambda: v6(ipv6_ra_mode="slaac", ipv6_address_mode="dhcpv6-stateful"),
        "InvalidInput",
        "subnet.ipv6_address_mode",
        "ipv6_ra_mode set to 'slaac' with ipv6_address_mode set to 'dhcpv6-stateful' is not valid",
    )
    fails(
        lambda: v6(cidr="2001:db8::/80", ipv6_address_mode="slaac"),
        "InvalidInput",
        "subnet.cidr",
        "Invalid CIDR 2001:db8::/80 for IPv6 address mode",
    )


# ----------------------------------------------------------------------------- update


def test_update_gateway() -> None:
    old = plan()
    # new gateway inside the (unchanged, default) pools: Neutron does not regenerate pools
    fails(
        lambda: ipam.validate_subnet_update(old, gateway_ip="10.0.0.50"),
        "GatewayConflictWithAllocationPools",
        "subnet.allocation_pools[0]",
    )
    new = ipam.validate_subnet_update(
        old, gateway_ip="10.0.0.254", allocation_pools=[("10.0.0.2", "10.0.0.200")]
    )
    assert new.gateway_ip == "10.0.0.254" and new.pools == [("10.0.0.2", "10.0.0.200")]
    assert (new.cidr, new.dns_nameservers, new.host_routes) == (old.cidr, [], [])
    removed = ipam.validate_subnet_update(old, gateway_ip="")
    assert removed.gateway_ip is None and removed.pools == old.pools
    fails(
        lambda: ipam.validate_subnet_update(old, gateway_ip="10.0.0.255"),
        "InvalidInput",
        "subnet.gateway_ip",
        "Gateway is not valid on subnet",
    )
    assert ipam.validate_subnet_update(old) == old


def test_update_pools() -> None:
    old = plan()
    fails(
        lambda: ipam.validate_subnet_update(old, allocation_pools=[("10.0.0.1", "10.0.0.9")]),
        "GatewayConflictWithAllocationPools",
        "subnet.allocation_pools[0]",
    )
    fails(
        lambda: ipam.validate_subnet_update(old, allocation_pools=[("10.0.0.9", "10.0.1.9")]),
        "OutOfBoundsAllocationPool",
        "subnet.allocation_pools[0]",
    )
    empty = ipam.validate_subnet_update(old, allocation_pools=[])
    assert empty.pools == [] and empty.pool_size == 0


def test_update_dns_routes_dhcp() -> None:
    old = plan(dns_nameservers=["1.1.1.1"], enable_dhcp=False, cidr="10.0.0.0/31", gateway_ip="")
    new = ipam.validate_subnet_update(
        old, dns_nameservers=["8.8.8.8"], host_routes=[("10.9.0.0/16", "10.0.0.1")]
    )
    assert new.dns_nameservers == ["8.8.8.8"] and new.host_routes == [("10.9.0.0/16", "10.0.0.1")]
    assert ipam.validate_subnet_update(new, dns_nameservers=[]).dns_nameservers == []
    fails(
        lambda: ipam.validate_subnet_update(old, dns_nameservers=["1.1.1.1"] * 2),
        "InvalidInput",
        "subnet.dns_nameservers[1]",
    )
    err = fails(
        lambda: ipam.validate_subnet_update(
            old, dns_nameservers=[f"10.1.0.{i}" for i in range(6)], subnet_id="s-1"
        ),
        "DNSNameServersExhausted",
        "subnet.dns_nameservers",
    )
    assert "for s-1." in err.message
    fails(
        lambda: ipam.validate_subnet_update(old, enable_dhcp=True),
        "InvalidInput",
        "subnet.cidr",
        "incompatible with DHCP",
    )
    s6 = v6(ipv6_address_mode="slaac")
    fails(
        lambda: ipam.validate_subnet_update(s6, enable_dhcp=False),
        "InvalidInput",
        "subnet.enable_dhcp",
        "Cannot disable enable_dhcp with ipv6 attributes set",
    )
    assert not ipam.validate_subnet_update(v6(), enable_dhcp=False).enable_dhcp


# ----------------------------------------------------------------------------- overlap


def test_check_no_overlap() -> None:
    others = [("s1", "10.0.0.0/24"), ("s2", "2001:db8::/64")]
    ipam.check_no_overlap("10.0.1.0/24", others)
    ipam.check_no_overlap("2001:db8:1::/64", others)
    ipam.check_no_overlap("10.0.0.0/24", [])
    for cidr in ("10.0.0.0/24", "10.0.0.128/25", "10.0.0.0/16", "10.0.0.7/32"):
        err = fails(
            lambda c=cidr: ipam.check_no_overlap(c, others, network_id="net-1"),  # type: ignore[misc]
            "InvalidInput",
            "subnet.cidr",
            f"Requested subnet with cidr: {cidr} for network: net-1 overlaps with another subnet",
        )
        assert "s1" not in err.message  # Neutron doesn't reveal the other subnet
    fails(
        lambda: ipam.check_no_overlap("2001:db8::/48", others),
        "InvalidInput",
        "subnet.cidr",
        "overlaps with another subnet",
    )


# ----------------------------------------------------------------------------- allocator


def test_allocator_exhausts_29_exactly_once() -> None:
    p = plan(cidr="10.0.0.0/29")
    assert p.pools == [("10.0.0.2", "10.0.0.6")]
    alloc = ipam.PoolAllocator.from_plan(p)
    assert alloc.size == len(alloc) == 5
    used: set[int] = set()
    picked: list[int] = []
    rng = random.Random(7)
    while (ip := alloc.pick(used.__contains__, rng)) is not None:
        assert ip not in used
        used.add(ip)
        picked.append(ip)
    assert sorted(picked) == list(range(ipam.ip_to_int("10.0.0.2"), ipam.ip_to_int("10.0.0.6") + 1))
    assert alloc.pick(used.__contains__, rng) is None
    assert alloc.first_free(used.__contains__) is None


def test_allocator_is_randomized() -> None:
    alloc = plan(cidr="10.0.0.0/24").allocator()
    orders = set()
    for seed in range(5):
        used: set[int] = set()
        rng = random.Random(seed)
        order = []
        for _ in range(10):
            ip = alloc.pick(used.__contains__, rng)
            assert ip is not None
            used.add(ip)
            order.append(ip)
        orders.add(tuple(order))
    assert len(orders) == 5
    firsts = {alloc.pick(lambda _ip: False) for _ in range(50)}  # default RNG
    assert len(firsts) > 1


def test_allocator_scan_finds_last_free_address() -> None:
    alloc = ipam.PoolAllocator([(10, 19), (100, 104), (50, 51)])
    assert alloc.size == 17
    for seed in range(30):
        for free in (10, 19, 50, 51, 100, 104):
            assert alloc.pick(lambda ip, f=free: ip != f, random.Random(seed)) == free  # type: ignore[misc]
    assert alloc.first_free(lambda ip: ip < 51) == 51
    assert [alloc.nth(i) for i in (0, 9, 10, 11, 12, 16)] == [10, 19, 50, 51, 100, 104]


def test_allocator_contains_and_empty() -> None:
    alloc = ipam.PoolAllocator([(100, 104), (10, 19)])
    assert alloc.contains(10) and alloc.contains(19) and alloc.contains(104)
    assert not alloc.contains(9) and not alloc.contains(20) and not alloc.contains(105)
    empty = ipam.PoolAllocator([])
    assert empty.size == 0 and empty.pick(lambda _ip: False) is None
    assert empty.first_free(lambda _ip: False) is None and not empty.contains(1)


def test_allocator_huge_ipv6_pool() -> None:
    p = v6()
    alloc = p.allocator()
    assert alloc.size == 2**64 - 2
    used: set[int] = set()
    rng = random.Random(1)
    for _ in range(1000):
        ip = alloc.pick(used.__contains__, rng)
        assert ip is not None and ip not in used and alloc.contains(ip) and p.contains(ip)
        used.add(ip)
    assert alloc.first_free(used.__contains__) is not None
    assert not alloc.contains(p.network) and not alloc.contains(p.network + 1)


# ----------------------------------------------------------------------------- requested IPs


def test_requested_ip_v4() -> None:
    p = plan(allocation_pools=[("10.0.0.100", "10.0.0.200")])
    assert ipam.check_requested_ip(p, "10.0.0.150") == ipam.ip_to_int("10.0.0.150")
    assert ipam.check_requested_ip(p, "10.0.0.5") == ipam.ip_to_int("10.0.0.5")  # outside pool
    assert ipam.check_requested_ip(p, "10.0.0.1") == p.gateway  # Neutron allows the gateway
    fails(
        lambda: ipam.check_requested_ip(p, "10.0.0.1", allow_gateway=False),
        "IpAddressInUse",
        "port.fixed_ips.ip_address",
        "10.0.0.1",
        cls=AlreadyExists,
    )
    for ip in ("10.0.0.0", "10.0.0.255", "10.0.1.1", "2001:db8::1"):
        fails(
            lambda ip=ip: ipam.check_requested_ip(p, ip, field="port.fixed_ips[0].ip_address"),  # type: ignore[misc]
            "InvalidIpForSubnet",
            "port.fixed_ips[0].ip_address",
            f"IP address {ip} is not a valid IP for the specified subnet.",
        )
    fails(
        lambda: ipam.check_requested_ip(p, "10.0.0.256"),
        "InvalidInput",
        "port.fixed_ips.ip_address",
        "is not a valid IP address",
    )


def test_requested_ip_v6() -> None:
    p = v6()
    assert ipam.check_requested_ip(p, "2001:db8::ffff:ffff:ffff:ffff") == p.last
    fails(lambda: ipam.check_requested_ip(p, "2001:db8::"), "InvalidIpForSubnet", None)
    assert ipam.check_requested_ip(p, "2001:db8::", router_port=True) == p.network
    s = v6(ipv6_address_mode="slaac")
    fails(
        lambda: ipam.check_requested_ip(s, "2001:db8::5", subnet_id="sub-1"),
        "AllocationOnAutoAddressSubnet",
        None,
        "cannot be directly assigned to a port on subnet sub-1",
    )
    assert ipam.check_requested_ip(s, "2001:db8::1", router_port=True) == s.gateway


def test_requested_ip_small_v4_subnets() -> None:
    # Neutron's check_subnet_ip rejects the first/last address whatever the prefix length.
    p31 = plan(cidr="10.0.0.0/31", enable_dhcp=False, gateway_ip="")
    for ip in ("10.0.0.0", "10.0.0.1"):
        fails(lambda ip=ip: ipam.check_requested_ip(p31, ip), "InvalidIpForSubnet", None)  # type: ignore[misc]


# ----------------------------------------------------------------------------- SLAAC / stored


def test_eui64() -> None:
    assert ipam.eui64_address("2001:db8::/64", "00:16:3e:33:44:55") == (
        "2001:db8::216:3eff:fe33:4455"
    )
    assert ipam.eui64_address("2001:db8:1:2::/64", "FA-16-3E-00-00-01") == (
        "2001:db8:1:2:f816:3eff:fe00:1"
    )
    p = v6(ipv6_address_mode="slaac")
    assert ipam.eui64_int(p.network, p.prefixlen, "fa:16:3e:00:00:01") == ipam.ip_to_int(
        "2001:db8::f816:3eff:fe00:1"
    )
    fails(lambda: ipam.eui64_address("2001:db8::/64", "00:16:3e:33:44"), "InvalidInput", None)
    fails(lambda: ipam.eui64_address("2001:db8::/64", "00:16-3e:33:44:55"), "InvalidInput", None)
    fails(
        lambda: ipam.eui64_address("10.0.0.0/24", "00:16:3e:33:44:55"),
        "AddressCalculationFailure",
        None,
    )
    fails(
        lambda: ipam.eui64_address("2001:db8::/80", "00:16:3e:33:44:55"),
        "AddressCalculationFailure",
        None,
    )
    fails(lambda: ipam.eui64_address("nope", "00:16:3e:33:44:55"), "InvalidInput", None)


def test_plan_from_stored_roundtrip() -> None:
    for p in (
        plan(
            gateway_ip="10.0.0.128",
            dns_nameservers=["8.8.8.8"],
            host_routes=[("10.9.0.0/16", "10.0.0.1")],
        ),
        plan(gateway_ip=""),
        v6(ipv6_ra_mode="slaac", ipv6_address_mode="slaac"),
    ):
        q = ipam.plan_from_stored(
            cidr=p.cidr,
            gateway_ip=p.gateway_ip or "",
            allocation_pools=p.pools,
            dns_nameservers=p.dns_nameservers,
            host_routes=p.host_routes,
            enable_dhcp=p.enable_dhcp,
            ipv6_ra_mode=p.ipv6_ra_mode or "",
            ipv6_address_mode=p.ipv6_address_mode or "",
        )
        assert q == p
    with pytest.raises(ValueError):
        ipam.plan_from_stored(cidr="bad", gateway_ip=None, allocation_pools=[])
