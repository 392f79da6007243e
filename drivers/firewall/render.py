"""Pure rendering of the security group ruleset as nft text.

Layout (both tables are named ``baryon``; see docs in drivers/firewall/__init__.py):

bridge table (sees the real ports; no conntrack here on this kernel; every bridge of
the namespace, so that a port wired before the firewall knows it is dropped):
    prerouting (prio -300): frames entering a bridge. ``meta mark`` is reset,
        then ``iifname vmap @port_from`` sends a port's frames to its anti-spoofing
        chain ``pf_<port>`` (which writes the port's index into mark bits 0-14) or
        accepts them (port security disabled); an unknown ``tap*`` is dropped.
    forward (prio -300, before br_netfilter's forward hook): ``oifname vmap @port_to``
        jumps to ``pt_<port>``, which writes the destination port's index into mark bits
        16-30; an unknown ``tap*`` is dropped.
    postrouting: fail-closed guard: an IP frame from or to a port with port security
        that the inet forward hook never saw (bit 31 unset: br_netfilter off on that
        bridge) is dropped.
inet table (fed by br_netfilter; stateful):
    zone (prerouting, raw): ``ct zone set iifname map @zones``: one zone per bridge
        (= per network), so overlapping CIDRs never share conntrack entries.
    Only traffic of the bridges in the ``bridges`` set is looked at; a port whose
    bridge is missing there is never marked as seen, so the bridge postrouting guard
    drops its IP traffic (fail closed).
    egress (forward, prio -10): sets bit 31, then ``mark & 0x7fff vmap @egress_ports``
        -> ``pe_<port>`` (the source port's egress rules).
    ingress (forward, prio 0): ``mark & 0x7fff0000 vmap @ingress_ports`` ->
        ``pi_<port>`` (the destination port's ingress rules).
    An ``accept`` only ends its own base chain, so a frame between two ports here
    passes the sender's egress chain, then the receiver's ingress chain.
    Port chains jump to one chain per (group, direction): ``ge_<group>``/``gi_<group>``.
    Remote groups are named sets ``rg4_<group>``/``rg6_<group>`` updated element by
    element.

Every non-base chain's last rule carries ``comment "baryon:<digest>"``: the digest of
the chain's rules, which is how a restarted driver knows which chains are current
without parsing rules back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from controller.sgrules import protocol_number
from drivers.model import PortSpec, RuleSpec, port_device_name

log = logging.getLogger(__name__)

TABLE = "baryon"
INET = "inet"
BRIDGE = "bridge"
SKELETON_VERSION = "1"
MARKER = "baryon:"
SKELETON_MARKER = f"{MARKER}skeleton-{SKELETON_VERSION}"

SRC_MASK = 0x7FFF
DST_SHIFT = 16
DST_MASK = SRC_MASK << DST_SHIFT
SEEN_BIT = 0x80000000
MAX_PORT_INDEX = SRC_MASK
MAX_ZONE = 0xFFFF

PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # tcp udp dccp sctp udplite
# ICMPv6 that must flow whatever the rules: MLD, router/neighbour discovery.
ICMPV6_EGRESS_ALWAYS = (130, 131, 132, 133, 135, 136, 143)
ICMPV6_INGRESS_ALWAYS = (130, 131, 132, 134, 135, 136, 143)

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


# -- names -----------------------------------------------------------------------------


def ident(raw: str) -> str:
    """An id as it appears in nft object names (ids that are not plain get hashed)."""
    if _NAME_RE.match(raw):
        return raw
    return "x" + hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def port_chain(kind: str, port_id: str) -> str:
    """kind: "pf" (bridge, from port), "pt" (bridge, to port), "pe"/"pi" (inet)."""
    return f"{kind}_{ident(port_id)}"


def group_chain(direction: str, group_id: str) -> str:
    return ("gi_" if direction == "ingress" else "ge_") + ident(group_id)


def remote_set(group_id: str, ethertype: str) -> str:
    return ("rg4_" if ethertype == "IPv4" else "rg6_") + ident(group_id)


def set_version(name: str) -> int:
    return 4 if name.startswith("rg4_") else 6


# -- chains ----------------------------------------------------------------------------


def digest_of(rules: Iterable[str]) -> str:
    return hashlib.blake2b("\n".join(rules).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Chain:
    """A regular chain: its rules, the last of which will carry the digest comment."""

    family: str
    name: str
    rules: tuple[str, ...]
    digest: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", digest_of(self.rules))

    def rule_lines(self) -> list[str]:
        out = [f"add rule {self.family} {TABLE} {self.name} {r}" for r in self.rules[:-1]]
        out.append(
            f"add rule {self.family} {TABLE} {self.name} {self.rules[-1]}"
            f' comment "{MARKER}{self.digest}"'
        )
        return out

    def replace_lines(self) -> list[str]:
        """Create-or-replace, atomic inside the transaction it is part of."""
        head = f"{self.family} {TABLE} {self.name}"
        return [f"add chain {head}", f"flush chain {head}", *self.rule_lines()]


def delete_chain_lines(family: str, name: str) -> list[str]:
    head = f"{family} {TABLE} {name}"
    return [f"flush chain {head}", f"delete chain {head}"]


# -- addresses -------------------------------------------------------------------------

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def as_network(value: str) -> IPNet:
    return ipaddress.ip_network(value.strip(), strict=False)


def element_text(net: IPNet) -> str:
    """How nft lists an interval-set element: a bare address for a host."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


@lru_cache(maxsize=1 << 17)
def _member(value: str) -> IPNet | None:
    try:
        return as_network(value)
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def set_elements(values: frozenset[str], version: int) -> frozenset[str]:
    """Members of one family, as non-overlapping elements (one that lies inside another
    member is redundant and would be rejected by an interval set)."""
    nets = {n for n in map(_member, values) if n is not None and n.version == version}
    prefixes = sorted({n.prefixlen for n in nets if n.prefixlen < n.max_prefixlen})
    if not prefixes:  # plain addresses: nothing can cover anything
        return frozenset(element_text(n) for n in nets)
    kept = {
        n
        for n in nets
        if not any(p < n.prefixlen and n.supernet(new_prefix=p) in nets for p in prefixes)
    }
    return frozenset(element_text(n) for n in kept)


def _parse_net(value: str) -> IPNet | None:
    return _member(value)


def link_local(mac: str) -> str:
    """The EUI-64 IPv6 link-local address of a MAC."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    groups = [(eui[i] << 8) | eui[i + 1] for i in range(0, 8, 2)]
    return str(
        ipaddress.IPv6Address((0xFE80 << 112) | int("".join(f"{g:04x}" for g in groups), 16))
    )


@dataclass(frozen=True, slots=True)
class PortAddresses:
    """(MAC, address or CIDR) pairs a port may send from, per IP version."""

    v4: tuple[tuple[str, str], ...]
    v6: tuple[tuple[str, str], ...]
    macs: tuple[str, ...]

    def addresses(self, version: int) -> tuple[str, ...]:
        pairs = self.v4 if version == 4 else self.v6
        return tuple(sorted({a for _, a in pairs}))


@lru_cache(maxsize=8192)
def port_addresses(port: PortSpec) -> PortAddresses:
    pairs: set[tuple[str, IPNet]] = set()
    for ip in port.fixed_ips:
        net = _parse_net(ip.split("/")[0])
        if net is not None:
            pairs.add((port.mac, net))
    for addr, mac in port.allowed_address_pairs:
        net = _parse_net(addr)
        if net is not None:
            pairs.add((mac, net))
    macs = sorted({port.mac} | {m for m, _ in pairs})
    v4 = sorted((m, element_text(n)) for m, n in pairs if n.version == 4)
    v6 = sorted((m, element_text(n)) for m, n in pairs if n.version == 6)
    return PortAddresses(tuple(v4), tuple(v6), tuple(macs))


def _anon(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


# -- per-port chains -------------------------------------------------------------------


@lru_cache(maxsize=8192)
def from_port_chain(port: PortSpec, index: int) -> Chain:
    """Bridge family: anti-spoofing of what the port sends; marks it with its index."""
    a = port_addresses(port)
    macs = _anon(a.macs)
    rules = [f"meta mark set {index}", f"ether saddr != {macs} drop"]
    if a.v4:
        arp = _anon(f"{m} . {m} . {ip}" for m, ip in a.v4)
        rules.append(f"ether type arp ether saddr . arp saddr ether . arp saddr ip {arp} accept")
    # ARP probes (duplicate address detection) come from 0.0.0.0.
    rules.append(f"ether type arp arp saddr ip 0.0.0.0 arp saddr ether {macs} accept")
    rules.append("ether type arp drop")
    # No DHCP server on a port; a DHCP client before it has an address is fine.
    rules.append("ether type ip udp sport 67 udp dport 68 drop")
    rules.append(
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept"
    )
    if a.v4:
        pairs = _anon(f"{m} . {ip}" for m, ip in a.v4)
        rules.append(f"ether type ip ether saddr . ip saddr {pairs} accept")
    rules.append("ether type ip drop")
    # IPv6: no router advertisements, redirects or DHCPv6 server from a port.
    rules.append("ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } drop")
    rules.append("ether type ip6 udp sport 547 udp dport 546 drop")
    rules.append(
        "ether type ip6 ip6 saddr :: icmpv6 type { nd-router-solicit, nd-neighbor-solicit,"
        " mld-listener-report, mld2-listener-report } accept"
    )
    v6_pairs = {(m, link_local(m)) for m in a.macs} | set(a.v6)
    pairs6 = _anon(f"{m} . {ip}" for m, ip in sorted(v6_pairs))
    rules.append(f"ether type ip6 ether saddr . ip6 saddr {pairs6} accept")
    rules.append("drop")
    return Chain(BRIDGE, port_chain("pf", port.id), tuple(rules))


@lru_cache(maxsize=8192)
def to_port_chain(port_id: str, index: int) -> Chain:
    """Bridge family: frames leaving the bridge to the port carry its index (bits 16-30)."""
    value = index << DST_SHIFT
    # (Bits 16-31 are clear here: prerouting set the mark to at most SRC_MASK.)
    rules = (f"meta mark set meta mark and {SRC_MASK:#x} or {value:#x} accept",)
    return Chain(BRIDGE, port_chain("pt", port_id), rules)


def _icmpv6_types(types: Sequence[int]) -> str:
    return _anon(str(t) for t in types)


@lru_cache(maxsize=8192)
def egress_port_chain(port_id: str, group_ids: tuple[str, ...], stateful: bool) -> Chain:
    """Inet: what the port sends (after anti-spoofing): its groups' egress rules."""
    rules: list[str] = []
    if stateful:
        rules += ["ct state established,related accept", "ct state invalid drop"]
    rules += [
        "udp sport 68 udp dport 67 accept",
        "udp sport 546 udp dport 547 accept",
        f"icmpv6 type {_icmpv6_types(ICMPV6_EGRESS_ALWAYS)} accept",
    ]
    rules += [f"jump {group_chain('egress', g)}" for g in group_ids]
    rules.append("drop")
    return Chain(INET, port_chain("pe", port_id), tuple(rules))


@lru_cache(maxsize=8192)
def ingress_port_chain(port_id: str, group_ids: tuple[str, ...], stateful: bool) -> Chain:
    """Inet: what the port receives: default deny, its groups' ingress rules."""
    rules: list[str] = []
    if stateful:
        rules.append("ct state established,related accept")
    rules.append(f"icmpv6 type {_icmpv6_types(ICMPV6_INGRESS_ALWAYS)} accept")
    if stateful:
        rules.append("ct state invalid drop")
    rules += ["udp sport 67 udp dport 68 accept", "udp sport 547 udp dport 546 accept"]
    rules += [f"jump {group_chain('ingress', g)}" for g in group_ids]
    rules.append("drop")
    return Chain(INET, port_chain("pi", port_id), tuple(rules))


# -- group chains ----------------------------------------------------------------------


def rule_text(rule: RuleSpec) -> str:
    """One security group rule as an nft rule (verdict accept)."""
    v4 = rule.ethertype == "IPv4"
    parts = ["meta nfproto " + ("ipv4" if v4 else "ipv6")]
    ipkw = "ip" if v4 else "ip6"
    side = "saddr" if rule.direction == "ingress" else "daddr"
    if rule.remote_ip_prefix:
        net = as_network(rule.remote_ip_prefix)
        if net.prefixlen > 0:
            parts.append(f"{ipkw} {side} {net}")
    elif rule.remote_group_id:
        parts.append(f"{ipkw} {side} @{remote_set(rule.remote_group_id, rule.ethertype)}")
    proto = protocol_number(rule.protocol)
    lo, hi = rule.port_range_min, rule.port_range_max
    if proto is not None and proto != 0:  # 0 ("ip", "hopopt"): any, as Neutron does
        icmp = "icmp" if v4 and proto == 1 else "icmpv6" if not v4 and proto == 58 else None
        if icmp is not None and lo is not None:
            parts.append(f"{icmp} type {lo}")
            if hi is not None:
                parts.append(f"{icmp} code {hi}")
        elif proto in PORT_PROTOCOLS and (lo is not None or hi is not None):
            first = lo if lo is not None else hi
            last = hi if hi is not None else lo
            assert first is not None and last is not None
            ports = str(first) if first == last else f"{first}-{last}"
            parts.append(f"meta l4proto {proto} th dport {ports}")
        else:
            parts.append(f"meta l4proto {proto}")
    parts.append("accept")
    return " ".join(parts)


@lru_cache(maxsize=8192)
def group_chain_body(group_id: str, direction: str, rules: tuple[RuleSpec, ...]) -> Chain:
    lines: list[str] = []
    for rule in rules:
        if rule.direction != direction:
            continue
        try:
            lines.append(rule_text(rule))
        except ValueError:  # a malformed prefix/protocol: the rule allows nothing
            log.warning("group %s: skipping invalid rule %s", group_id, rule)
    # Identical rules render once (duplicates are rejected upstream, but be safe).
    unique = list(dict.fromkeys(lines))
    unique.append("return")
    return Chain(INET, group_chain(direction, group_id), tuple(unique))


# -- map / set elements ----------------------------------------------------------------


def verdict_text(target: str | None) -> str:
    """A vmap value: None accepts, otherwise a jump to the named chain."""
    return "accept" if target is None else f"jump {target}"


def add_elements_line(family: str, name: str, elements: Iterable[str]) -> str:
    return f"add element {family} {TABLE} {name} {_anon(elements)}"


def delete_elements_line(family: str, name: str, keys: Iterable[str]) -> str:
    return f"delete element {family} {TABLE} {name} {_anon(keys)}"


def quoted(name: str) -> str:
    return f'"{name}"'


def add_set_line(name: str) -> str:
    kind = "ipv4_addr" if set_version(name) == 4 else "ipv6_addr"
    return f"add set {INET} {TABLE} {name} {{ type {kind}; flags interval; }}"


# -- the fixed part --------------------------------------------------------------------


def skeleton_lines() -> list[str]:
    """Both tables with their base chains, maps and sets, empty. Only ever loaded right
    after ``delete table`` of the same table in one transaction (a full replace)."""
    m = SKELETON_MARKER
    tap = quoted(port_device_name("") + "*")
    return [
        f"add table {INET} {TABLE}",
        f"add set {INET} {TABLE} bridges {{ type ifname; }}",
        f"add map {INET} {TABLE} zones {{ typeof iifname : ct zone; }}",
        f"add map {INET} {TABLE} egress_ports {{ typeof meta mark : verdict; }}",
        f"add map {INET} {TABLE} ingress_ports {{ typeof meta mark : verdict; }}",
        f"add chain {INET} {TABLE} zone"
        " { type filter hook prerouting priority raw; policy accept; }",
        f"add chain {INET} {TABLE} egress"
        " { type filter hook forward priority -10; policy accept; }",
        f"add chain {INET} {TABLE} ingress"
        " { type filter hook forward priority 0; policy accept; }",
        f'add rule {INET} {TABLE} zone ct zone set iifname map @zones comment "{m}"',
        f"add rule {INET} {TABLE} egress iifname != @bridges accept",
        f"add rule {INET} {TABLE} egress meta mark set meta mark or {SEEN_BIT:#x}",
        f"add rule {INET} {TABLE} egress meta mark and {SRC_MASK:#x} vmap @egress_ports"
        f' comment "{m}"',
        f"add rule {INET} {TABLE} ingress oifname != @bridges accept",
        f"add rule {INET} {TABLE} ingress meta mark and {DST_MASK:#x} vmap @ingress_ports"
        f' comment "{m}"',
        f"add table {BRIDGE} {TABLE}",
        f"add map {BRIDGE} {TABLE} port_from {{ type ifname : verdict; }}",
        f"add map {BRIDGE} {TABLE} port_to {{ type ifname : verdict; }}",
        f"add chain {BRIDGE} {TABLE} prerouting"
        " { type filter hook prerouting priority -300; policy accept; }",
        f"add chain {BRIDGE} {TABLE} forward"
        " { type filter hook forward priority -300; policy accept; }",
        f"add chain {BRIDGE} {TABLE} postrouting"
        " { type filter hook postrouting priority 0; policy accept; }",
        f"add rule {BRIDGE} {TABLE} prerouting meta mark set 0",
        f"add rule {BRIDGE} {TABLE} prerouting iifname vmap @port_from",
        f'add rule {BRIDGE} {TABLE} prerouting iifname {tap} drop comment "{m}"',
        f"add rule {BRIDGE} {TABLE} forward oifname vmap @port_to",
        f'add rule {BRIDGE} {TABLE} forward oifname {tap} drop comment "{m}"',
        f"add rule {BRIDGE} {TABLE} postrouting meta protocol {{ ip, ip6 }}"
        f" meta mark and {SEEN_BIT:#x} == 0 meta mark and {SRC_MASK | DST_MASK:#x} != 0 drop"
        f' comment "{m}"',
    ]


BASE_CHAINS: Mapping[str, frozenset[str]] = {
    INET: frozenset({"zone", "egress", "ingress"}),
    BRIDGE: frozenset({"prerouting", "forward", "postrouting"}),
}


def full_replace_lines(body: Iterable[str]) -> list[str]:
    """Drop and rebuild both tables in one transaction: no packet ever sees them absent."""
    return [
        f"add table {INET} {TABLE}",
        f"delete table {INET} {TABLE}",
        f"add table {BRIDGE} {TABLE}",
        f"delete table {BRIDGE} {TABLE}",
        *skeleton_lines(),
        *body,
    ]
