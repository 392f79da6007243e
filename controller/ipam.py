"""Pure IPAM: subnet validation (Neutron's rules), default pools, address picking.

No I/O. Addresses are ints internally; strings are produced only at the edges. Strings come out
in the canonical form Neutron stores (netaddr's: lowercase, RFC 5952 compressed IPv6).

Neutron behaviours reproduced here (details in each function's docstring):

* CIDRs may carry host bits ("10.0.0.5/24") and are normalised to the network ("10.0.0.0/24");
  IPv4 text must be canonical (no leading zeros, decimal prefix length), "/" is mandatory.
* Default gateway = network + 1; a gateway outside the CIDR is accepted; an IPv4 gateway equal to
  the network or last (broadcast) address is rejected; IPv6 allows the network address.
* Default pools: IPv4 <= /30 network+1 .. broadcast-1, /31 both addresses, /32 the address;
  IPv6 network+1 .. last (the subnet-router anycast address is never pooled); minus the gateway.
* Requested fixed IPs may lie outside the pools but must be inside the CIDR and (IPv4) not the
  network/broadcast address.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.errors import AlreadyExists, InvalidArgument

MAX_DNS_NAMESERVERS = 5
MAX_SUBNET_HOST_ROUTES = 20

DHCPV6_STATEFUL = "dhcpv6-stateful"
DHCPV6_STATELESS = "dhcpv6-stateless"
IPV6_SLAAC = "slaac"
IPV6_MODES = (DHCPV6_STATEFUL, DHCPV6_STATELESS, IPV6_SLAAC)
AUTO_ADDRESS_MODES = frozenset({DHCPV6_STATELESS, IPV6_SLAAC})

_BITS = {4: 32, 6: 128}
_ALL = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_inet_ntoa = socket.inet_ntoa

# (first, last) of special blocks used by the DHCP checks.
_V4_MULTICAST = (0xE0000000, 0xEFFFFFFF)  # 224.0.0.0/4
_V4_LOOPBACK = (0x7F000000, 0x7FFFFFFF)  # 127.0.0.0/8
_V6_MULTICAST = (0xFF << 120, _ALL[6])  # ff00::/8


# --------------------------------------------------------------------------- conversions


def parse_ip(text: str) -> tuple[int, int]:
    """Return ``(value, ip_version)`` of an IP address string; ``ValueError`` if it is not one.

    Strict: IPv4 must be dotted-quad without leading zeros; no whitespace, no IPv6 scope id.
    """
    try:
        if ":" in text:
            return int.from_bytes(_inet_pton(_AF_INET6, text), "big"), 6
        return int.from_bytes(_inet_pton(_AF_INET, text), "big"), 4
    except (OSError, TypeError, ValueError):
        raise ValueError(f"{text!r} is not a valid IP address") from None


def ip_to_int(text: str) -> int:
    """Integer value of an IP address string (``ValueError`` if invalid)."""
    return parse_ip(text)[0]


def int_to_ip(value: int, version: int) -> str:
    """Canonical string of an integer address of the given IP version."""
    try:
        if version == 4:
            return _inet_ntoa(value.to_bytes(4, "big"))
        if version == 6:
            return _inet_ntop(_AF_INET6, value.to_bytes(16, "big"))
    except OverflowError:
        raise ValueError(f"{value} is not an IPv{version} address") from None
    raise ValueError(f"unknown IP version {version!r}")


def _hostmask(prefixlen: int, version: int) -> int:
    return (1 << (_BITS[version] - prefixlen)) - 1


def parse_cidr(text: str) -> tuple[int, int, int]:
    """Lenient parse of a stored/normalised CIDR: ``(network, prefixlen, version)``.

    Host bits are masked off. ``ValueError`` if it is not a CIDR.
    """
    addr, sep, plen_text = text.rpartition("/")
    if not sep or not plen_text.isascii() or not plen_text.isdigit():
        raise ValueError(f"{text!r} is not a CIDR")
    value, version = parse_ip(addr)
    plen = int(plen_text)
    if plen > _BITS[version]:
        raise ValueError(f"{text!r} is not a CIDR")
    return value & ~_hostmask(plen, version), plen, version


def _pool_text(start: int, end: int, version: int) -> str:
    return f"{int_to_ip(start, version)}-{int_to_ip(end, version)}"


# --------------------------------------------------------------------------- strict parsing


def _ip_or_raise(text: object, field: str) -> tuple[int, int]:
    if isinstance(text, str):
        try:
            return parse_ip(text)
        except ValueError:
            pass
    raise InvalidArgument(f"'{text}' is not a valid IP address", field=field)


def _cidr_or_raise(text: object, field: str) -> tuple[int, int, int]:
    """neutron_lib ``validate_subnet``: ``(address incl. host bits, prefixlen, version)``."""
    bad = InvalidArgument(f"'{text}' is not a valid IP subnet", field=field)
    if not isinstance(text, str) or not text:
        raise bad
    addr, sep, plen_text = text.rpartition("/")
    if not sep:
        try:
            value, version = parse_ip(text)
        except ValueError:
            raise bad from None
        raise InvalidArgument(
            f"'{text}' isn't a recognized IP subnet cidr,"
            f" '{int_to_ip(value, version)}/{_BITS[version]}' is recommended",
            field=field,
        )
    try:
        value, version = parse_ip(addr)
    except ValueError:
        raise bad from None
    if not plen_text.isascii() or not plen_text.isdigit() or int(plen_text) > _BITS[version]:
        raise bad
    plen = int(plen_text)
    if version == 4 and str(plen) != plen_text:
        network = value & ~_hostmask(plen, version)
        raise InvalidArgument(
            f"'{text}' isn't a recognized IP subnet cidr,"
            f" '{int_to_ip(network, version)}/{plen}' is recommended",
            field=field,
        )
    return value, plen, version


def _check_version(ip_version: int, version: int, name: str, text: str, field: str) -> None:
    if version != ip_version:
        raise InvalidArgument(
            f"{name} '{text}' does not match the ip_version '{ip_version}'", field=field
        )


# --------------------------------------------------------------------------- subnet plan


@dataclass(frozen=True, slots=True)
class SubnetPlan:
    """A validated subnet, ready to store and to allocate from."""

    cidr: str  # normalised "network/prefixlen"
    ip_version: int
    prefixlen: int
    network: int  # first address of the CIDR
    last: int  # last address of the CIDR (IPv4 broadcast)
    gateway_ip: str | None  # None = no gateway
    gateway: int | None
    pools: list[tuple[str, str]]  # sorted, non-overlapping (start, end)
    pool_ranges: list[tuple[int, int]]  # same as ints
    pool_size: int
    dns_nameservers: list[str]
    host_routes: list[tuple[str, str]]  # (destination, nexthop)
    enable_dhcp: bool
    ipv6_ra_mode: str | None
    ipv6_address_mode: str | None

    @property
    def is_auto_address(self) -> bool:
        """SLAAC / DHCPv6-stateless subnet: ports get EUI-64 addresses, not pool addresses."""
        return is_auto_address_subnet(self.ipv6_ra_mode, self.ipv6_address_mode)

    def contains(self, ip: int) -> bool:
        return self.network <= ip <= self.last

    def allocator(self) -> PoolAllocator:
        return PoolAllocator(self.pool_ranges)


def is_auto_address_subnet(ipv6_ra_mode: str | None, ipv6_address_mode: str | None) -> bool:
    return ipv6_address_mode in AUTO_ADDRESS_MODES or ipv6_ra_mode in AUTO_ADDRESS_MODES


def _make_plan(
    *,
    version: int,
    prefixlen: int,
    network: int,
    gateway: int | None,
    ranges: list[tuple[int, int]],
    dns: list[str],
    routes: list[tuple[str, str]],
    enable_dhcp: bool,
    ra_mode: str | None,
    address_mode: str | None,
) -> SubnetPlan:
    ranges = sorted(ranges)
    return SubnetPlan(
        cidr=f"{int_to_ip(network, version)}/{prefixlen}",
        ip_version=version,
        prefixlen=prefixlen,
        network=network,
        last=network | _hostmask(prefixlen, version),
        gateway_ip=None if gateway is None else int_to_ip(gateway, version),
        gateway=gateway,
        pools=[(int_to_ip(s, version), int_to_ip(e, version)) for s, e in ranges],
        pool_ranges=ranges,
        pool_size=sum(e - s + 1 for s, e in ranges),
        dns_nameservers=dns,
        host_routes=routes,
        enable_dhcp=enable_dhcp,
        ipv6_ra_mode=ra_mode,
        ipv6_address_mode=address_mode,
    )


def plan_from_stored(
    *,
    cidr: str,
    gateway_ip: str | None,
    allocation_pools: Sequence[Sequence[str]],
    dns_nameservers: Sequence[str] = (),
    host_routes: Sequence[Sequence[str]] = (),
    enable_dhcp: bool = True,
    ipv6_ra_mode: str | None = None,
    ipv6_address_mode: str | None = None,
) -> SubnetPlan:
    """Rebuild a plan from an already-validated stored subnet, without re-validating policy.

    ``gateway_ip`` None or "" = no gateway; ``allocation_pools`` are taken as stored (empty = no
    pools). Raises ``ValueError`` on malformed data.
    """
    network, plen, version = parse_cidr(cidr)
    gateway = parse_ip(gateway_ip)[0] if gateway_ip else None
    ranges = [(parse_ip(s)[0], parse_ip(e)[0]) for s, e in allocation_pools]
    return _make_plan(
        version=version,
        prefixlen=plen,
        network=network,
        gateway=gateway,
        ranges=ranges,
        dns=list(dns_nameservers),
        routes=[(d, n) for d, n in host_routes],
        enable_dhcp=enable_dhcp,
        ra_mode=ipv6_ra_mode or None,
        address_mode=ipv6_address_mode or None,
    )


def default_pools(
    network: int, prefixlen: int, version: int, gateway: int | None
) -> list[tuple[int, int]]:
    """Neutron's ``generate_pools``: the CIDR's usable range minus the gateway, as int ranges."""
    last = network | _hostmask(prefixlen, version)
    if network == last:  # /32, /128: the single address, gateway not considered
        return [(network, last)]
    if version == 4:
        first, end = (network + 1, last - 1) if prefixlen <= 30 else (network, last)
    else:
        first, end = network + 1, last  # network address = subnet-router anycast
    if gateway is None or not first <= gateway <= end:
        return [(first, end)]
    return [(s, e) for s, e in ((first, gateway - 1), (gateway + 1, end)) if s <= e]


# --------------------------------------------------------------------------- validation pieces


def _check_dhcp_cidr(version: int, prefixlen: int, network: int, last: int, field: str) -> None:
    """Neutron refuses to enable DHCP on tiny, multicast, loopback or 0.0.0.0-based subnets."""
    if (version == 4 and prefixlen > 30) or (version == 6 and prefixlen > 126):
        raise InvalidArgument(
            "Subnet has a prefix length that is incompatible with DHCP service enabled",
            field=field,
        )
    multicast = _V4_MULTICAST if version == 4 else _V6_MULTICAST
    if multicast[0] <= network and last <= multicast[1]:
        raise InvalidArgument(
            "Multicast IP subnet is not supported if enable_dhcp is True", field=field
        )
    if version == 4 and _V4_LOOPBACK[0] <= network and last <= _V4_LOOPBACK[1]:
        raise InvalidArgument(
            "Loopback IP subnet is not supported if enable_dhcp is True", field=field
        )
    if version == 4 and network == 0:
        raise InvalidArgument(
            "First IP '0.0.0.0' of network is not supported if enable_dhcp is True.", field=field
        )


def _gateway_invalid_in_subnet(version: int, network: int, last: int, gateway: int) -> bool:
    return version == 4 and gateway in (network, last)


def _validate_gateway(text: str, version: int, network: int, last: int, field: str) -> int:
    gateway, gw_version = _ip_or_raise(text, field)
    _check_version(version, gw_version, "gateway_ip", text, field)
    if network <= gateway <= last and _gateway_invalid_in_subnet(version, network, last, gateway):
        raise InvalidArgument("Gateway is not valid on subnet", field=field)
    return gateway


def _validate_dns(
    servers: Sequence[str], version: int, field: str, subnet_id: str, limit: int
) -> list[str]:
    if isinstance(servers, str):
        raise InvalidArgument(f"Invalid data format for nameserver: '{servers}'", field=field)
    out: list[str] = []
    values: list[tuple[int, int]] = []
    for i, server in enumerate(servers):
        f = f"{field}[{i}]"
        if not isinstance(server, str):
            raise InvalidArgument(f"'{server}' is not a valid nameserver.", field=f)
        try:
            value, v = parse_ip(server)
        except ValueError:
            raise InvalidArgument(
                f"'{server}' is not a valid nameserver. '{server}' is not a valid IP address",
                field=f,
            ) from None
        if (value, v) in values:  # compared by value: "2001:DB8::1" == "2001:db8::1"
            raise InvalidArgument(f"Duplicate nameserver '{server}'", field=f)
        values.append((value, v))
    if len(servers) > limit:
        raise InvalidArgument(
            f"Unable to complete operation for {subnet_id}."
            f" The number of DNS nameservers exceeds the limit {limit}.",
            reason="DNSNameServersExhausted",
            field=field,
        )
    for i, (server, (value, v)) in enumerate(zip(servers, values, strict=True)):
        _check_version(version, v, "dns_nameserver", server, f"{field}[{i}]")
        out.append(int_to_ip(value, v))
    return out


def _validate_routes(
    routes: Sequence[Sequence[str]], version: int, field: str, subnet_id: str, limit: int
) -> list[tuple[str, str]]:
    if isinstance(routes, str):
        raise InvalidArgument(f"Invalid data format for hostroute: '{routes}'", field=field)
    parsed: list[tuple[int, int, int, int, int]] = []  # dest, plen, dest_v, nexthop, nh_v
    keys: set[tuple[int, int, int, int]] = set()
    for i, route in enumerate(routes):
        f = f"{field}[{i}]"
        if isinstance(route, str) or len(route) != 2:
            raise InvalidArgument(f"Invalid data format for hostroute: '{route}'", field=f)
        destination, nexthop = route
        dest, plen, dest_v = _cidr_or_raise(destination, f"{f}.destination")
        nh, nh_v = _ip_or_raise(nexthop, f"{f}.nexthop")
        key = (dest_v, dest, plen, nh)
        if key in keys:
            raise InvalidArgument(
                f"Duplicate hostroute '{{'destination': '{destination}', 'nexthop': '{nexthop}'}}'",
                field=f,
            )
        keys.add(key)
        parsed.append((dest, plen, dest_v, nh, nh_v))
    if len(routes) > limit:
        raise InvalidArgument(
            f"Unable to complete operation for {subnet_id}."
            f" The number of host routes exceeds the limit {limit}.",
            reason="HostRoutesExhausted",
            field=field,
        )
    out: list[tuple[str, str]] = []
    for i, ((destination, nexthop), (dest, plen, dest_v, nh, nh_v)) in enumerate(
        zip(routes, parsed, strict=True)
    ):
        f = f"{field}[{i}]"
        _check_version(version, nh_v, "nexthop", nexthop, f"{f}.nexthop")
        _check_version(version, dest_v, "destination", destination, f"{f}.destination")
        # Neutron keeps the destination as given (host bits included), canonically formatted.
        out.append((f"{int_to_ip(dest, dest_v)}/{plen}", int_to_ip(nh, nh_v)))
    return out


def _validate_pools(
    pools: Sequence[Sequence[str]],
    version: int,
    network: int,
    last: int,
    cidr: str,
    field: str,
) -> list[tuple[int, int]]:
    """Neutron's pools_to_ip_range + validate_allocation_pools. Returns ranges in input order."""
    if isinstance(pools, str):
        raise InvalidArgument(f"Invalid data format for IP pool: '{pools}'", field=field)
    parsed: list[tuple[int, int, int, int]] = []
    for i, pool in enumerate(pools):
        f = f"{field}[{i}]"
        if isinstance(pool, str) or len(pool) != 2:
            raise InvalidArgument(f"Invalid data format for IP pool: '{pool}'", field=f)
        s, sv = _ip_or_raise(pool[0], f"{f}.start")
        e, ev = _ip_or_raise(pool[1], f"{f}.end")
        parsed.append((s, sv, e, ev))
    first_ok = network + 1
    last_ok = last - (1 if version == 4 else 0)
    ranges: list[tuple[int, int]] = []
    for i, (pool, (s, sv, e, ev)) in enumerate(zip(pools, parsed, strict=True)):
        f = f"{field}[{i}]"
        text = f"{pool[0]}-{pool[1]}"
        if sv != ev or s > e or sv != version:
            raise InvalidArgument(
                f"The allocation pool {text} is not valid.", reason="InvalidAllocationPool", field=f
            )
        if s < first_ok or e > last_ok:
            raise InvalidArgument(
                f"The allocation pool {text} spans beyond the subnet cidr {cidr}.",
                reason="OutOfBoundsAllocationPool",
                field=f,
            )
        ranges.append((s, e))
    order = sorted(range(len(ranges)), key=lambda k: ranges[k])
    for a, b in itertools.pairwise(order):
        if ranges[b][0] <= ranges[a][1]:
            lo, hi = min(a, b), max(a, b)
            raise InvalidArgument(
                "Found overlapping allocation pools:"
                f" {_pool_text(*ranges[lo], version)} {_pool_text(*ranges[hi], version)}"
                f" for subnet {cidr}.",
                reason="OverlappingAllocationPools",
                field=f"{field}[{hi}]",
            )
    return ranges


def _check_gateway_out_of_pools(
    gateway: int, ranges: Sequence[tuple[int, int]], version: int, field: str
) -> None:
    for i, (s, e) in enumerate(ranges):
        if s <= gateway <= e:
            raise InvalidArgument(
                f"Gateway ip {int_to_ip(gateway, version)} conflicts with allocation pool"
                f" {_pool_text(s, e, version)}.",
                reason="GatewayConflictWithAllocationPools",
                field=f"{field}[{i}]",
            )


def _normalize_mode(value: str | None, field: str) -> str | None:
    if not value:
        return None
    if value not in IPV6_MODES:
        raise InvalidArgument(f"{value} is not in {list(IPV6_MODES)}", field=field)
    return value


def _validate_ipv6_modes(
    version: int,
    prefixlen: int,
    cidr: str,
    ra_mode: str | None,
    address_mode: str | None,
    enable_dhcp: bool,
    f: str,
) -> None:
    if version == 4:
        if ra_mode:
            raise InvalidArgument(
                "ipv6_ra_mode is not valid when ip_version is 4", field=f"{f}.ipv6_ra_mode"
            )
        if address_mode:
            raise InvalidArgument(
                "ipv6_address_mode is not valid when ip_version is 4",
                field=f"{f}.ipv6_address_mode",
            )
        return
    if (ra_mode or address_mode) and not enable_dhcp:
        raise InvalidArgument(
            "ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False",
            field=f"{f}.enable_dhcp",
        )
    if ra_mode and address_mode and ra_mode != address_mode:
        raise InvalidArgument(
            f"ipv6_ra_mode set to '{ra_mode}' with ipv6_address_mode set to '{address_mode}'"
            " is not valid. If both attributes are set, they must be the same value",
            field=f"{f}.ipv6_address_mode",
        )
    if is_auto_address_subnet(ra_mode, address_mode) and prefixlen != 64:
        raise InvalidArgument(
            f"Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address"
            " format, which requires the prefix to be /64",
            field=f"{f}.cidr",
        )


# --------------------------------------------------------------------------- public validators


def validate_subnet(
    *,
    cidr: str,
    ip_version: int | None,
    gateway_ip: str | None,
    allocation_pools: Sequence[Sequence[str]],
    dns_nameservers: Sequence[str],
    host_routes: Sequence[Sequence[str]],
    enable_dhcp: bool,
    ipv6_ra_mode: str | None,
    ipv6_address_mode: str | None,
    field_prefix: str = "subnet",
    max_dns_nameservers: int = MAX_DNS_NAMESERVERS,
    max_host_routes: int = MAX_SUBNET_HOST_ROUTES,
) -> SubnetPlan:
    """Validate a subnet create request the way Neutron does; return the normalised plan.

    ``ip_version`` None (or 0) = derive from the CIDR. ``gateway_ip`` None = default
    (network + 1), "" = no gateway. ``allocation_pools`` empty = default pools. Empty strings for
    the IPv6 modes mean unset. Raises ``InvalidArgument`` with Neutron's exception name as reason
    and a field violation under ``field_prefix``.
    """
    f = field_prefix
    if (
        ip_version is not None
        and ip_version != 0
        and (isinstance(ip_version, bool) or ip_version not in (4, 6))
    ):
        raise InvalidArgument(f"{ip_version} is not in [4, 6]", field=f"{f}.ip_version")
    value, prefixlen, version = _cidr_or_raise(cidr, f"{f}.cidr")
    if ip_version and ip_version != version:
        raise InvalidArgument(
            f"cidr '{cidr}' does not match the ip_version '{ip_version}'", field=f"{f}.cidr"
        )
    if prefixlen == 0:
        raise InvalidArgument("0 is not allowed as CIDR prefix length", field=f"{f}.cidr")
    network = value & ~_hostmask(prefixlen, version)
    last = network | _hostmask(prefixlen, version)
    cidr_text = f"{int_to_ip(network, version)}/{prefixlen}"
    if enable_dhcp:
        _check_dhcp_cidr(version, prefixlen, network, last, f"{f}.cidr")

    gateway: int | None = None
    if gateway_ip:
        gateway = _validate_gateway(gateway_ip, version, network, last, f"{f}.gateway_ip")
    dns = _validate_dns(
        dns_nameservers, version, f"{f}.dns_nameservers", "new subnet", max_dns_nameservers
    )
    routes = _validate_routes(
        host_routes, version, f"{f}.host_routes", "new subnet", max_host_routes
    )
    ra_mode = _normalize_mode(ipv6_ra_mode, f"{f}.ipv6_ra_mode")
    address_mode = _normalize_mode(ipv6_address_mode, f"{f}.ipv6_address_mode")
    _validate_ipv6_modes(version, prefixlen, cidr_text, ra_mode, address_mode, enable_dhcp, f)

    default_gateway = gateway_ip is None
    if default_gateway and network < _ALL[version]:
        gateway = network + 1

    if allocation_pools:
        ranges = _validate_pools(
            allocation_pools, version, network, last, cidr_text, f"{f}.allocation_pools"
        )
        if gateway is not None:
            _check_gateway_out_of_pools(gateway, ranges, version, f"{f}.allocation_pools")
    else:
        ranges = default_pools(network, prefixlen, version, gateway)

    if (
        default_gateway
        and gateway is not None
        and network <= gateway <= last
        and _gateway_invalid_in_subnet(version, network, last, gateway)
    ):
        # e.g. a /31: the default gateway network+1 is the "broadcast" address.
        raise InvalidArgument(
            f"Gateway IP {int_to_ip(gateway, version)} cannot be allocated in CIDR {cidr_text}",
            reason="IpamValueInvalid",
            field=f"{f}.gateway_ip",
        )

    return _make_plan(
        version=version,
        prefixlen=prefixlen,
        network=network,
        gateway=gateway,
        ranges=ranges,
        dns=dns,
        routes=routes,
        enable_dhcp=enable_dhcp,
        ra_mode=ra_mode,
        address_mode=address_mode,
    )


def validate_subnet_update(
    old: SubnetPlan,
    *,
    gateway_ip: str | None = None,
    allocation_pools: Sequence[Sequence[str]] | None = None,
    dns_nameservers: Sequence[str] | None = None,
    host_routes: Sequence[Sequence[str]] | None = None,
    enable_dhcp: bool | None = None,
    field_prefix: str = "subnet",
    subnet_id: str = "subnet",
    max_dns_nameservers: int = MAX_DNS_NAMESERVERS,
    max_host_routes: int = MAX_SUBNET_HOST_ROUTES,
) -> SubnetPlan:
    """Validate an update of ``old`` the way Neutron's update_subnet does.

    None = unchanged for every argument. ``gateway_ip`` "" = remove the gateway.
    ``allocation_pools`` [] = no pools at all (Neutron); pools are never regenerated, so a new
    gateway inside the (old or new) pools is GatewayConflictWithAllocationPools.
    cidr, ip_version and the IPv6 modes are immutable. The caller still has to check
    GatewayIpInUse (the old gateway held by a router port) — that needs state.
    """
    f = field_prefix
    version, network, last = old.ip_version, old.network, old.last
    new_dhcp = old.enable_dhcp if enable_dhcp is None else enable_dhcp
    if enable_dhcp and not old.enable_dhcp:
        _check_dhcp_cidr(version, old.prefixlen, network, last, f"{f}.cidr")
    if enable_dhcp is False and (old.ipv6_ra_mode or old.ipv6_address_mode):
        raise InvalidArgument(
            "Cannot disable enable_dhcp with ipv6 attributes set", field=f"{f}.enable_dhcp"
        )

    gateway = old.gateway
    if gateway_ip is not None:
        gateway = (
            _validate_gateway(gateway_ip, version, network, last, f"{f}.gateway_ip")
            if gateway_ip
            else None
        )
    dns = (
        old.dns_nameservers
        if dns_nameservers is None
        else _validate_dns(
            dns_nameservers, version, f"{f}.dns_nameservers", subnet_id, max_dns_nameservers
        )
    )
    routes = (
        old.host_routes
        if host_routes is None
        else _validate_routes(host_routes, version, f"{f}.host_routes", subnet_id, max_host_routes)
    )
    ranges = old.pool_ranges
    if allocation_pools is not None:
        ranges = _validate_pools(
            allocation_pools, version, network, last, old.cidr, f"{f}.allocation_pools"
        )
    if gateway is not None and (gateway != old.gateway or allocation_pools is not None):
        _check_gateway_out_of_pools(gateway, ranges, version, f"{f}.allocation_pools")

    return _make_plan(
        version=version,
        prefixlen=old.prefixlen,
        network=network,
        gateway=gateway,
        ranges=list(ranges),
        dns=list(dns),
        routes=list(routes),
        enable_dhcp=new_dhcp,
        ra_mode=old.ipv6_ra_mode,
        address_mode=old.ipv6_address_mode,
    )


def check_no_overlap(
    cidr: str,
    others: Sequence[tuple[str, str]],
    *,
    network_id: str = "",
    field: str = "subnet.cidr",
) -> None:
    """Reject ``cidr`` if it overlaps any of ``others`` ((subnet_id, cidr)) on the same network.

    Neutron's message deliberately does not name the other subnet.
    """
    network, plen, version = parse_cidr(cidr)
    last = network | _hostmask(plen, version)
    for _subnet_id, other in others:
        o_net, o_plen, o_version = parse_cidr(other)
        if o_version != version:
            continue
        if o_net <= last and network <= (o_net | _hostmask(o_plen, o_version)):
            raise InvalidArgument(
                f"Requested subnet with cidr: {cidr} for network: {network_id}"
                " overlaps with another subnet",
                field=field,
            )


# --------------------------------------------------------------------------- fixed IPs


def check_requested_ip(
    plan: SubnetPlan,
    ip: str,
    *,
    allow_gateway: bool = True,
    router_port: bool = False,
    subnet_id: str = "",
    field: str = "port.fixed_ips.ip_address",
) -> int:
    """Validate a requested fixed IP on ``plan``'s subnet; return it as an int.

    Neutron rules: inside the CIDR (pools don't matter), IPv4 not the network/broadcast address,
    IPv6 network (subnet-router anycast) address only for router ports, no explicit address on a
    SLAAC/DHCPv6-stateless subnet except for router ports. Neutron lets any port take the
    gateway address; pass ``allow_gateway=False`` to reserve it (IpAddressInUse).
    Does not check whether the address is already allocated.
    """
    value, version = _ip_or_raise(ip, field)
    network, last = plan.network, plan.last
    if (
        version != plan.ip_version
        or not network <= value <= last
        or (version == 4 and value in (network, last))
        or (version == 6 and value == network and not router_port)
    ):
        raise InvalidArgument(
            f"IP address {ip} is not a valid IP for the specified subnet.",
            reason="InvalidIpForSubnet",
            field=field,
        )
    if plan.is_auto_address and not router_port:
        raise InvalidArgument(
            f"IPv6 address {ip} cannot be directly assigned to a port on subnet {subnet_id}"
            " as the subnet is configured for automatic addresses",
            reason="AllocationOnAutoAddressSubnet",
            field=field,
        )
    if not allow_gateway and value == plan.gateway:
        raise AlreadyExists(f"The IP address {ip} is in use.", reason="IpAddressInUse", field=field)
    return value


class PoolAllocator:
    """Picks free addresses from a set of int ranges without materialising them.

    ``pick`` probes a few random addresses, then scans linearly from a random offset (wrapping),
    so concurrent controllers rarely collide and a full pool is reported exactly (None).
    """

    __slots__ = ("_ends", "_offsets", "_ranges", "_starts", "size")

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self._ranges = sorted((s, e) for s, e in ranges if s <= e)
        self._starts = [s for s, _ in self._ranges]
        self._ends = [e for _, e in self._ranges]
        self._offsets: list[int] = []
        total = 0
        for s, e in self._ranges:
            self._offsets.append(total)
            total += e - s + 1
        self.size = total

    @classmethod
    def from_plan(cls, plan: SubnetPlan) -> PoolAllocator:
        return cls(plan.pool_ranges)

    def __len__(self) -> int:
        return self.size

    def contains(self, ip: int) -> bool:
        i = bisect.bisect_right(self._starts, ip) - 1
        return i >= 0 and ip <= self._ends[i]

    def nth(self, index: int) -> int:
        """The ``index``-th address of the pools (0 <= index < size)."""
        i = bisect.bisect_right(self._offsets, index) - 1
        return self._starts[i] + index - self._offsets[i]

    def pick(
        self,
        is_used: Callable[[int], bool],
        rng: random.Random | None = None,
        *,
        probes: int = 8,
    ) -> int | None:
        size = self.size
        if not size:
            return None
        r = rng if rng is not None else _RNG
        for _ in range(min(probes, size)):
            ip = self.nth(r.randrange(size))
            if not is_used(ip):
                return ip
        return self._scan(is_used, r.randrange(size))

    def first_free(self, is_used: Callable[[int], bool]) -> int | None:
        """Lowest free address (Neutron gives DHCP ports the start of the pool)."""
        return self._scan(is_used, 0) if self.size else None

    def _scan(self, is_used: Callable[[int], bool], offset: int) -> int | None:
        i = bisect.bisect_right(self._offsets, offset) - 1
        cur = self._starts[i] + offset - self._offsets[i]
        remaining = self.size
        n = len(self._ranges)
        while remaining:
            end = min(self._ends[i], cur + remaining - 1)
            for ip in range(cur, end + 1):
                if not is_used(ip):
                    return ip
            remaining -= end - cur + 1
            i = (i + 1) % n
            cur = self._starts[i]
        return None


_RNG = random.Random()


# --------------------------------------------------------------------------- SLAAC

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def eui64_int(network: int, prefixlen: int, mac: str) -> int:
    """Modified EUI-64 address (RFC 4291 App. A) of ``mac`` in an IPv6 prefix, as an int."""
    if not _MAC_RE.match(mac or ""):
        raise InvalidArgument(f"'{mac}' is not a valid MAC address", field="mac_address")
    if prefixlen > 64:
        raise InvalidArgument(
            f"EUI-64 addresses need a prefix of /64 or shorter, not /{prefixlen}",
            reason="AddressCalculationFailure",
        )
    raw = int(mac.replace(":", "").replace("-", ""), 16)
    iid = ((raw >> 24) << 40) | (0xFFFE << 24) | (raw & 0xFFFFFF)
    return network + (iid ^ (1 << 57))


def eui64_address(prefix_cidr: str, mac: str) -> str:
    """SLAAC / DHCPv6-stateless address Neutron assigns a port: prefix + modified EUI-64(mac)."""
    try:
        network, prefixlen, version = parse_cidr(prefix_cidr)
    except ValueError:
        raise InvalidArgument(f"'{prefix_cidr}' is not a valid IP subnet") from None
    if version != 6:
        raise InvalidArgument(
            f"EUI-64 addresses need an IPv6 prefix, not {prefix_cidr}",
            reason="AddressCalculationFailure",
        )
    return int_to_ip(eui64_int(network, prefixlen, mac), 6)
