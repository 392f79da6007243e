"""Pure security-group rule logic: Neutron's validation/normalisation, duplicate keys, defaults.

Neutron behaviours reproduced here:

* protocol: a name from neutron-lib's IP_PROTOCOL_MAP (case-insensitive, stored lower-case) or a
  number 0..255 (stored as its decimal string); the name is kept, not converted to a number.
  "" / None / "any" = all protocols (stored as None).
* With ethertype IPv6, "icmp" and the legacy "icmpv6" become "ipv6-icmp" and "1" becomes "58";
  IPv6-only protocols (ipv6-icmp, ipv6-frag, ... or their numbers) with IPv4 are rejected.
* Ports only for dccp/sctp/tcp/udp/udplite (both bounds required, 1..65535, min <= max); for
  icmp/ipv6-icmp port_range_min/max are type/code 0..255 and a code needs a type.
* remote_ip_prefix keeps its host bits (as Neutron's remote_ip_prefix does), a bare address gets
  /32 or /128; ``normalized_cidr`` is the network form.
* Duplicates (SecurityGroupRuleExists) are decided on direction, ethertype, ports, protocol
  (name and number equivalent: "tcp" == "6"), remote_group_id and remote_ip_prefix, where
  0.0.0.0/0, ::/0 and no prefix are the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from controller.errors import InvalidArgument
from controller.ipam import int_to_ip, parse_ip

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
IPV4 = "IPv4"
IPV6 = "IPv6"
ETHERTYPES = (IPV4, IPV6)

# neutron-lib IP_PROTOCOL_MAP, same order (the number -> name map keeps the last name per number).
IP_PROTOCOL_MAP: dict[str, int] = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ip": 0,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "icmpv6": 58,  # legacy alias of ipv6-icmp
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}
IP_PROTOCOL_NAME_ALIASES = {"icmpv6": "ipv6-icmp"}
IP_PROTOCOL_NUM_TO_NAME = {str(v): k for k, v in IP_PROTOCOL_MAP.items() if k != "icmpv6"}

PORT_PROTOCOL_NAMES = ("dccp", "sctp", "tcp", "udp", "udplite")
PORT_PROTOCOL_NUMBERS = frozenset(IP_PROTOCOL_MAP[p] for p in PORT_PROTOCOL_NAMES)
ICMP_NUMBERS = frozenset({1, 58})
_IPV6_ICMP_LEGACY = ("icmp", "icmpv6")
_IPV6_ONLY_PROTOCOLS = frozenset(
    ["ipv6-encap", "ipv6-frag", "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts", "ipv6-route"]
    + [str(n) for n in (41, 44, 58, 59, 60, 43)]
)
_ANY_PREFIXES = frozenset({"0.0.0.0/0", "::/0"})
_NONE = "+"  # Neutron's placeholder for "unset" in rule keys


@dataclass(frozen=True, slots=True)
class NormalizedRule:
    direction: str  # "ingress" | "egress"
    ethertype: str  # "IPv4" | "IPv6"
    protocol: str | None  # lower-case name or decimal number string; None = any
    port_range_min: int | None
    port_range_max: int | None
    remote_ip_prefix: str | None  # "addr/len", host bits as given
    remote_group_id: str | None
    normalized_cidr: str | None  # remote_ip_prefix with host bits cleared

    @property
    def protocol_number(self) -> int | None:
        return protocol_number(self.protocol)


def protocol_number(protocol: str | None) -> int | None:
    """IP protocol number of a stored protocol value (None for "any")."""
    if protocol is None:
        return None
    protocol = IP_PROTOCOL_NAME_ALIASES.get(protocol, protocol)
    number = IP_PROTOCOL_MAP.get(protocol)
    return number if number is not None else int(protocol)


def _supported_protocols_text() -> str:
    return str([None, *IP_PROTOCOL_MAP])


def _convert_protocol(value: str | int | None, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()):
        number = int(value)
        if 0 <= number <= 255:
            return str(number)
    elif isinstance(value, str):
        name = value.lower()
        if name == "any":
            return None
        if name in IP_PROTOCOL_MAP:
            return name
    raise InvalidArgument(
        f"Security group rule protocol {value} not supported. Only protocol values"
        f" {_supported_protocols_text()} and their integer representation (0 to 255)"
        " are supported.",
        reason="SecurityGroupRuleInvalidProtocol",
        field=field,
    )


def _convert_port(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise InvalidArgument(
        f"Invalid value for port {value}", reason="SecurityGroupInvalidPortValue", field=field
    )


def _convert_prefix(value: str | None, field: str) -> tuple[str, str, int] | None:
    """(prefix as given, network form, version) or None."""
    if not value:
        return None
    try:
        addr, sep, plen_text = value.rpartition("/")
        if not sep:
            addr = value
        ip, version = parse_ip(addr)
        bits = 32 if version == 4 else 128
        plen = bits
        if sep:
            if not plen_text.isascii() or not plen_text.isdigit() or int(plen_text) > bits:
                raise ValueError(value)
            plen = int(plen_text)
    except (ValueError, AttributeError):
        raise InvalidArgument(
            f"Invalid CIDR {value} given as IP prefix.", reason="InvalidCIDR", field=field
        ) from None
    network = ip & ~((1 << (bits - plen)) - 1)
    return (
        f"{int_to_ip(ip, version)}/{plen}",
        f"{int_to_ip(network, version)}/{plen}",
        version,
    )


def normalize_rule(
    direction: str | None,
    ethertype: str | None,
    protocol: str | int | None,
    port_range_min: int | None,
    port_range_max: int | None,
    remote_ip_prefix: str | None,
    remote_group_id: str | None,
    field_prefix: str = "security_group_rule",
) -> NormalizedRule:
    """Validate a security group rule exactly as Neutron does and return its stored form.

    Empty strings mean "unset" for ethertype (-> IPv4), protocol, remote_ip_prefix and
    remote_group_id. Does not check that remote_group_id exists.
    """
    f = field_prefix
    # API-layer conversions / validators.
    if not direction:
        raise InvalidArgument(
            "Failed to parse request. Required attribute 'direction' not specified",
            field=f"{f}.direction",
        )
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"'{direction}' is not in {list(DIRECTIONS)}", field=f"{f}.direction")
    proto = _convert_protocol(protocol, f"{f}.protocol")
    pmin = _convert_port(port_range_min, f"{f}.port_range_min")
    pmax = _convert_port(port_range_max, f"{f}.port_range_max")
    if not ethertype:
        ether = IPV4
    else:
        matches = [e for e in ETHERTYPES if e.lower() == str(ethertype).lower()]
        if not matches:
            raise InvalidArgument(
                f"'{ethertype}' is not in {list(ETHERTYPES)}", field=f"{f}.ethertype"
            )
        ether = matches[0]
    prefix = _convert_prefix(remote_ip_prefix, f"{f}.remote_ip_prefix")
    group = remote_group_id or None

    # Plugin-level validation (SecurityGroupDbMixin._validate_security_group_rule).
    if ether == IPV6:
        if proto in _IPV6_ICMP_LEGACY:
            proto = "ipv6-icmp"
        elif proto == "1":
            proto = "58"
    _validate_port_range(proto, pmin, pmax, f)
    if prefix is not None and prefix[2] != (4 if ether == IPV4 else 6):
        raise InvalidArgument(
            f"Conflicting value ethertype {ether} for CIDR {remote_ip_prefix}",
            reason="SecurityGroupRuleParameterConflict",
            field=f"{f}.remote_ip_prefix",
        )
    if ether == IPV4 and proto in _IPV6_ONLY_PROTOCOLS:
        raise InvalidArgument(
            f"Invalid ethertype {ether} for protocol {proto}.",
            reason="SecurityGroupEthertypeConflictWithProtocol",
            field=f"{f}.ethertype",
        )
    if prefix is not None and group is not None:
        raise InvalidArgument(
            "Only remote_ip_prefix or remote_group_id may be provided.",
            reason="SecurityGroupRemoteGroupAndRemoteIpPrefix",
            field=f"{f}.remote_group_id",
        )
    return NormalizedRule(
        direction=direction,
        ethertype=ether,
        protocol=proto,
        port_range_min=pmin,
        port_range_max=pmax,
        remote_ip_prefix=prefix[0] if prefix else None,
        remote_group_id=group,
        normalized_cidr=prefix[1] if prefix else None,
    )


def _validate_port_range(proto: str | None, pmin: int | None, pmax: int | None, f: str) -> None:
    if pmin is None and pmax is None:
        return
    if proto is None:
        raise InvalidArgument(
            "Must also specify protocol if port range is given.",
            reason="SecurityGroupProtocolRequiredWithPorts",
            field=f"{f}.protocol",
        )
    number = protocol_number(proto)
    if number in PORT_PROTOCOL_NUMBERS:
        if pmin == 0 or pmax == 0:
            raise InvalidArgument(
                "Invalid value for port 0",
                reason="SecurityGroupInvalidPortValue",
                field=f"{f}.port_range_min" if pmin == 0 else f"{f}.port_range_max",
            )
        if pmin is not None and pmax is not None and pmin <= pmax:
            return
        raise InvalidArgument(
            "For TCP/UDP protocols, port_range_min must be <= port_range_max",
            reason="SecurityGroupInvalidPortRange",
            field=f"{f}.port_range_min" if pmin is None else f"{f}.port_range_max",
        )
    if number in ICMP_NUMBERS:
        for attr, kind, value in (
            ("port_range_min", "type", pmin),
            ("port_range_max", "code", pmax),
        ):
            if value is not None and not 0 <= value <= 255:
                raise InvalidArgument(
                    f"Invalid value for ICMP {kind} ({attr}) {value}. It must be 0 to 255.",
                    reason="SecurityGroupInvalidIcmpValue",
                    field=f"{f}.{attr}",
                )
        if pmin is None and pmax is not None:
            raise InvalidArgument(
                f"ICMP code (port-range-max) {pmax} is provided but ICMP type"
                " (port-range-min) is missing.",
                reason="SecurityGroupMissingIcmpType",
                field=f"{f}.port_range_min",
            )
        return
    raise InvalidArgument(
        f"Invalid protocol {number} for port range, only supported for"
        f" {', '.join(p.upper() for p in PORT_PROTOCOL_NAMES)} protocols.",
        reason="SecurityGroupInvalidProtocolForPort",
        field=f"{f}.protocol",
    )


def _protocol_key(protocol: str | None, ethertype: str) -> str:
    """Neutron's _get_ip_proto_name_and_num, flattened: "tcp/6", "200/200"."""
    if protocol is None:
        return _NONE
    if ethertype == IPV6:
        if protocol in _IPV6_ICMP_LEGACY:
            protocol = "ipv6-icmp"
        elif protocol == "1":
            protocol = "58"
    if protocol in IP_PROTOCOL_MAP:
        return f"{protocol}/{IP_PROTOCOL_MAP[protocol]}"
    if protocol in IP_PROTOCOL_NUM_TO_NAME:
        return f"{IP_PROTOCOL_NUM_TO_NAME[protocol]}/{protocol}"
    return f"{protocol}/{protocol}"


def rule_key(rule: NormalizedRule) -> tuple[str, ...]:
    """Equal exactly for rules Neutron treats as duplicates within one security group."""
    prefix = rule.remote_ip_prefix
    return (
        rule.direction,
        rule.ethertype,
        _NONE if rule.port_range_max is None else str(rule.port_range_max),
        _NONE if rule.port_range_min is None else str(rule.port_range_min),
        _protocol_key(rule.protocol, rule.ethertype),
        rule.remote_group_id or _NONE,
        _NONE if prefix is None or prefix in _ANY_PREFIXES else prefix,
    )


def rule_digest(rule: NormalizedRule) -> str:
    """Short stable digest of ``rule_key`` (32 hex chars), for a per-group uniqueness index."""
    data = "\x1f".join(rule_key(rule)).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def default_rules(group_id: str, *, is_default: bool = True) -> list[NormalizedRule]:
    """Rules Neutron creates with a group, in its order.

    Every new group gets egress-any for IPv4 and IPv6; the project's "default" group also gets
    ingress from members of the same group for both ethertypes.
    """
    rules: list[NormalizedRule] = []
    for ether in ETHERTYPES:
        if is_default:
            rules.append(NormalizedRule(INGRESS, ether, None, None, None, None, group_id, None))
        rules.append(NormalizedRule(EGRESS, ether, None, None, None, None, None, None))
    return rules
