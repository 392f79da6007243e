"""Unit tests for controller.sgrules (pure)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # until pytest's pythonpath is configured for the repo root
    sys.path.insert(0, _ROOT)

from controller import sgrules  # noqa: E402
from controller.errors import InvalidArgument  # noqa: E402
from controller.sgrules import NormalizedRule, normalize_rule, rule_digest, rule_key  # noqa: E402


def rule(**kw: Any) -> NormalizedRule:
    args: dict[str, Any] = {
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": None,
        "port_range_min": None,
        "port_range_max": None,
        "remote_ip_prefix": None,
        "remote_group_id": None,
    }
    args.update(kw)
    return normalize_rule(**args)


def bad(reason: str, field: str, contains: str = "", **kw: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        rule(**kw)
    err = info.value
    assert err.reason == reason, (err.reason, err.message)
    assert err.field_violations == [(f"security_group_rule.{field}", err.message)]
    assert contains in err.message, err.message
    return err


# ----------------------------------------------------------------------------- basics


def test_minimal_rule_and_defaults() -> None:
    r = rule(ethertype=None)
    assert r == NormalizedRule("ingress", "IPv4", None, None, None, None, None, None)
    assert r.protocol_number is None
    assert rule(ethertype="", protocol="", remote_ip_prefix="", remote_group_id="") == r
    assert rule(ethertype="ipv6").ethertype == "IPv6"
    assert rule(direction="egress").direction == "egress"


def test_direction_required_and_valid() -> None:
    bad("InvalidInput", "direction", "Required attribute 'direction'", direction="")
    bad(
        "InvalidInput",
        "direction",
        "'Ingress' is not in ['ingress', 'egress']",
        direction="Ingress",
    )


def test_ethertype_invalid() -> None:
    bad("InvalidInput", "ethertype", "'IPv5' is not in ['IPv4', 'IPv6']", ethertype="IPv5")


def test_field_prefix() -> None:
    with pytest.raises(InvalidArgument) as info:
        normalize_rule("up", None, None, None, None, None, None, field_prefix="rules[3]")
    assert info.value.field_violations[0][0] == "rules[3].direction"


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize(
    ("given", "stored", "number"),
    [
        ("tcp", "tcp", 6),
        ("TCP", "tcp", 6),
        ("udp", "udp", 17),
        ("icmp", "icmp", 1),
        ("sctp", "sctp", 132),
        ("dccp", "dccp", 33),
        ("udplite", "udplite", 136),
        ("gre", "gre", 47),
        ("esp", "esp", 50),
        ("ah", "ah", 51),
        ("vrrp", "vrrp", 112),
        ("ospf", "ospf", 89),
        ("6", "6", 6),
        (6, "6", 6),
        ("0", "0", 0),
        (255, "255", 255),
        ("any", None, None),
        ("ANY", None, None),
    ],
)
def test_protocols_v4(given: str | int, stored: str | None, number: int | None) -> None:
    r = rule(protocol=given)
    assert r.protocol == stored and r.protocol_number == number


@pytest.mark.parametrize("given", ["foo", "256", -1, 300, "tcp6", "6.0", True])
def test_invalid_protocol(given: str | int) -> None:
    bad(
        "SecurityGroupRuleInvalidProtocol",
        "protocol",
        "not supported. Only protocol values [None, 'ah'",
        protocol=given,
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("icmp", "ipv6-icmp"),
        ("icmpv6", "ipv6-icmp"),
        ("ipv6-icmp", "ipv6-icmp"),
        ("1", "58"),
        (58, "58"),
    ],
)
def test_ipv6_icmp_canonicalization(given: str | int, stored: str) -> None:
    r = rule(ethertype="IPv6", protocol=given)
    assert r.protocol == stored and r.protocol_number == 58


@pytest.mark.parametrize(
    "proto",
    [
        "icmpv6",
        "ipv6-icmp",
        "58",
        "ipv6-frag",
        "ipv6-encap",
        "ipv6-nonxt",
        "ipv6-opts",
        "ipv6-route",
        "43",
    ],
)
def test_ipv6_only_protocol_with_ipv4(proto: str) -> None:
    bad(
        "SecurityGroupEthertypeConflictWithProtocol",
        "ethertype",
        "Invalid ethertype IPv4 for protocol",
        protocol=proto,
    )


# ----------------------------------------------------------------------------- ports


@pytest.mark.parametrize("proto", ["tcp", "udp", "sctp", "dccp", "udplite", "6", "17"])
def test_port_ranges(proto: str) -> None:
    r = rule(protocol=proto, port_range_min=22, port_range_max=22)
    assert (r.port_range_min, r.port_range_max) == (22, 22)
    assert rule(protocol=proto, port_range_min=1, port_range_max=65535).port_range_max == 65535


def test_port_range_errors() -> None:
    bad(
        "SecurityGroupInvalidPortRange",
        "port_range_max",
        "port_range_min must be <= port_range_max",
        protocol="tcp",
        port_range_min=100,
        port_range_max=99,
    )
    bad(
        "SecurityGroupInvalidPortRange",
        "port_range_max",
        protocol="tcp",
        port_range_min=80,  # Neutron requires both bounds for port protocols
    )
    bad("SecurityGroupInvalidPortRange", "port_range_min", protocol="udp", port_range_max=80)
    bad(
        "SecurityGroupInvalidPortValue",
        "port_range_min",
        "Invalid value for port 0",
        protocol="tcp",
        port_range_min=0,
        port_range_max=10,
    )
    bad(
        "SecurityGroupInvalidPortValue",
        "port_range_max",
        protocol="tcp",
        port_range_min=1,
        port_range_max=0,
    )
    bad(
        "SecurityGroupInvalidPortValue",
        "port_range_max",
        "Invalid value for port 65536",
        protocol="tcp",
        port_range_min=1,
        port_range_max=65536,
    )
    bad(
        "SecurityGroupInvalidPortValue",
        "port_range_min",
        protocol="tcp",
        port_range_min=-1,
        port_range_max=1,
    )
    bad(
        "SecurityGroupInvalidPortValue",
        "port_range_min",
        protocol="tcp",
        port_range_min=True,
        port_range_max=1,
    )


def test_ports_need_protocol() -> None:
    bad(
        "SecurityGroupProtocolRequiredWithPorts",
        "protocol",
        "Must also specify protocol if port range is given.",
        port_range_min=22,
        port_range_max=22,
    )


@pytest.mark.parametrize("proto", ["gre", "esp", "0", "200", "ipv6-frag"])
def test_ports_on_portless_protocol(proto: str) -> None:
    bad(
        "SecurityGroupInvalidProtocolForPort",
        "protocol",
        "for port range, only supported for DCCP, SCTP, TCP, UDP, UDPLITE protocols.",
        protocol=proto,
        ethertype="IPv6",
        port_range_min=1,
        port_range_max=2,
    )


def test_icmp_type_code() -> None:
    r = rule(protocol="icmp", port_range_min=8, port_range_max=0)
    assert (r.port_range_min, r.port_range_max) == (8, 0)
    assert rule(protocol="icmp", port_range_min=0).port_range_max is None  # type only
    assert rule(protocol="ipv6-icmp", ethertype="IPv6", port_range_min=255, port_range_max=255)
    bad(
        "SecurityGroupInvalidIcmpValue",
        "port_range_min",
        "Invalid value for ICMP type (port_range_min) 256. It must be 0 to 255.",
        protocol="icmp",
        port_range_min=256,
    )
    bad(
        "SecurityGroupInvalidIcmpValue",
        "port_range_max",
        "Invalid value for ICMP code (port_range_max) 300. It must be 0 to 255.",
        protocol="icmp",
        port_range_min=3,
        port_range_max=300,
    )
    bad(
        "SecurityGroupMissingIcmpType",
        "port_range_min",
        "ICMP code (port-range-max) 0 is provided but ICMP type (port-range-min) is missing.",
        protocol="icmp",
        port_range_max=0,
    )
    bad(
        "SecurityGroupMissingIcmpType",
        "port_range_min",
        ethertype="IPv6",
        protocol="icmp",
        port_range_max=4,
    )


# ----------------------------------------------------------------------------- remotes


def test_remote_ip_prefix_normalization() -> None:
    r = rule(remote_ip_prefix="10.0.0.5/24")
    assert r.remote_ip_prefix == "10.0.0.5/24" and r.normalized_cidr == "10.0.0.0/24"
    r = rule(remote_ip_prefix="192.168.1.10")
    assert r.remote_ip_prefix == "192.168.1.10/32" and r.normalized_cidr == "192.168.1.10/32"
    r = rule(ethertype="IPv6", remote_ip_prefix="2001:DB8::1/48")
    assert r.remote_ip_prefix == "2001:db8::1/48" and r.normalized_cidr == "2001:db8::/48"
    assert rule(ethertype="IPv6", remote_ip_prefix="::1").remote_ip_prefix == "::1/128"
    assert rule(remote_ip_prefix="0.0.0.0/0").normalized_cidr == "0.0.0.0/0"


@pytest.mark.parametrize("prefix", ["10.0.0.0/33", "10.0.0/8", "nope", "10.0.0.0/", "010.0.0.0/8"])
def test_remote_ip_prefix_invalid(prefix: str) -> None:
    bad(
        "InvalidCIDR",
        "remote_ip_prefix",
        f"Invalid CIDR {prefix} given as IP prefix.",
        remote_ip_prefix=prefix,
    )


def test_remote_ip_prefix_version_conflict() -> None:
    bad(
        "SecurityGroupRuleParameterConflict",
        "remote_ip_prefix",
        "Conflicting value ethertype IPv4 for CIDR 2001:db8::/64",
        remote_ip_prefix="2001:db8::/64",
    )
    bad(
        "SecurityGroupRuleParameterConflict",
        "remote_ip_prefix",
        "Conflicting value ethertype IPv6 for CIDR 10.0.0.0/8",
        ethertype="IPv6",
        remote_ip_prefix="10.0.0.0/8",
    )


def test_remote_group_and_prefix_exclusive() -> None:
    assert rule(remote_group_id="sg-1").remote_group_id == "sg-1"
    bad(
        "SecurityGroupRemoteGroupAndRemoteIpPrefix",
        "remote_group_id",
        "Only remote_ip_prefix or remote_group_id may be provided.",
        remote_group_id="sg-1",
        remote_ip_prefix="10.0.0.0/8",
    )


# ----------------------------------------------------------------------------- duplicates


def same(a: NormalizedRule, b: NormalizedRule) -> bool:
    equal = rule_key(a) == rule_key(b)
    assert equal == (rule_digest(a) == rule_digest(b))
    return equal


def test_duplicates() -> None:
    base = rule(protocol="tcp", port_range_min=22, port_range_max=22)
    assert same(base, rule(protocol="TCP", port_range_min=22, port_range_max=22))
    assert same(base, rule(protocol="6", port_range_min=22, port_range_max=22))
    assert same(
        base,
        rule(protocol="tcp", port_range_min=22, port_range_max=22, remote_ip_prefix="0.0.0.0/0"),
    )
    assert not same(base, rule(protocol="tcp", port_range_min=22, port_range_max=23))
    assert not same(base, rule(protocol="udp", port_range_min=22, port_range_max=22))
    assert not same(
        base, rule(protocol="tcp", port_range_min=22, port_range_max=22, direction="egress")
    )
    assert not same(
        base, rule(protocol="tcp", port_range_min=22, port_range_max=22, remote_group_id="g")
    )
    assert not same(
        base,
        rule(protocol="tcp", port_range_min=22, port_range_max=22, remote_ip_prefix="10.0.0.0/8"),
    )
    v6 = rule(ethertype="IPv6", protocol="tcp", port_range_min=22, port_range_max=22)
    assert not same(base, v6)
    assert same(
        v6,
        rule(
            ethertype="IPv6",
            protocol="tcp",
            port_range_min=22,
            port_range_max=22,
            remote_ip_prefix="::/0",
        ),
    )
    # any-protocol rule vs explicit protocol 0: not duplicates in Neutron
    assert same(rule(), rule(protocol="any"))
    assert not same(rule(), rule(protocol="0"))
    # Neutron maps number 0 to the name "ip", so "ip" == "0"
    assert same(rule(protocol="ip"), rule(protocol="0"))
    # ICMPv6 spellings collapse
    a = rule(ethertype="IPv6", protocol="icmp", port_range_min=128)
    assert same(a, rule(ethertype="IPv6", protocol="58", port_range_min=128))
    assert same(a, rule(ethertype="IPv6", protocol="icmpv6", port_range_min=128))
    # ICMP type-only vs type+code differ
    assert not same(
        rule(protocol="icmp", port_range_min=8),
        rule(protocol="icmp", port_range_min=8, port_range_max=0),
    )
    # unknown protocol numbers compare by number
    assert same(rule(protocol="200"), rule(protocol=200))
    # Neutron compares remote_ip_prefix as stored (host bits kept): these are distinct rules
    assert not same(rule(remote_ip_prefix="10.0.0.5/24"), rule(remote_ip_prefix="10.0.0.0/24"))
    assert same(rule(remote_ip_prefix="10.0.0.5"), rule(remote_ip_prefix="10.0.0.5/32"))


def test_digest_is_short_and_stable() -> None:
    d = rule_digest(rule(protocol="tcp", port_range_min=80, port_range_max=80))
    assert len(d) == 32 and int(d, 16) >= 0
    assert d == rule_digest(rule(protocol="6", port_range_min=80, port_range_max=80))
    # pinned so that stored uniqueness keys survive refactors
    assert rule_key(rule(protocol="tcp", port_range_min=80, port_range_max=80)) == (
        "ingress",
        "IPv4",
        "80",
        "80",
        "tcp/6",
        "+",
        "+",
    )


# ----------------------------------------------------------------------------- defaults


def test_default_rules() -> None:
    rules = sgrules.default_rules("sg-1")
    assert rules == [
        NormalizedRule("ingress", "IPv4", None, None, None, None, "sg-1", None),
        NormalizedRule("egress", "IPv4", None, None, None, None, None, None),
        NormalizedRule("ingress", "IPv6", None, None, None, None, "sg-1", None),
        NormalizedRule("egress", "IPv6", None, None, None, None, None, None),
    ]
    # each is what normalize_rule would produce, and they are pairwise distinct
    for r in rules:
        assert r == rule(
            direction=r.direction, ethertype=r.ethertype, remote_group_id=r.remote_group_id
        )
    assert len({rule_key(r) for r in rules}) == 4
    plain = sgrules.default_rules("sg-2", is_default=False)
    assert [(r.direction, r.ethertype) for r in plain] == [("egress", "IPv4"), ("egress", "IPv6")]
    # adding "allow all egress" again to a new group is a duplicate
    assert rule_key(rule(direction="egress", remote_ip_prefix="0.0.0.0/0")) == rule_key(plain[0])
