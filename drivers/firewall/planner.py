"""Pure planning: (desired host state, bridges, loaded ruleset) -> one nft transaction.

The plan is the smallest set of operations that turns the loaded ruleset into the
desired one: set elements added/deleted one by one (a remote-group membership change
is exactly one element), a chain replaced (``flush`` + re-add, atomic inside the
transaction) only when its digest differs, map elements for ports that come and go.
A missing or outdated skeleton is the only case rendered in full, and that too is a
single transaction (``delete table`` + rebuild): packets never see an open window.

Besides nft operations a plan lists conntrack deletions (``FlushSpec``): the flows a
removed rule, a removed remote-group member or a port leaving a group may have
allowed. They run after the transaction commits. When the previous desired state is
unknown (after a restart) a changed chain flushes every flow of the ports it serves in
that direction: correctness over precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TypeVar

from controller.sgrules import protocol_number
from drivers.firewall.actual import EMPTY, Ruleset
from drivers.firewall.render import (
    BRIDGE,
    DST_SHIFT,
    INET,
    MAX_PORT_INDEX,
    MAX_ZONE,
    PORT_PROTOCOLS,
    TABLE,
    Chain,
    add_elements_line,
    add_set_line,
    as_network,
    delete_chain_lines,
    delete_elements_line,
    egress_port_chain,
    element_text,
    from_port_chain,
    full_replace_lines,
    group_chain_body,
    ident,
    ingress_port_chain,
    port_addresses,
    port_chain,
    quoted,
    remote_set,
    set_elements,
    set_version,
    to_port_chain,
    verdict_text,
)
from drivers.model import FrozenDict, HostState, PortSpec, RuleSpec, SecurityGroupSpec

K = TypeVar("K")
V = TypeVar("V")

# -- plan objects ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NftOp:
    """A few nft commands doing one thing; ``objects``: nft objects it touches (set or
    map elements, chains, rules, sets)."""

    kind: str
    target: str
    lines: tuple[str, ...]
    objects: int

    def __str__(self) -> str:
        return f"{self.kind} {self.target} ({self.objects} object(s))"


@dataclass(frozen=True, slots=True)
class FlushSpec:
    """Delete the conntrack entries of `zone` whose original direction goes from/to
    `local` (a port's address) as `direction` says: "ingress" = towards the port,
    "egress" = from it; narrowed to `peer`, `protocol` and `dport` when given.
    local=None: any address of the zone (then `direction` only orients `peer`)."""

    zone: int
    version: int
    local: str | None
    direction: str
    peer: str | None = None
    protocol: int | None = None
    dport: int | None = None

    def sort_key(self) -> tuple[object, ...]:
        return (
            self.zone,
            self.version,
            self.local or "",
            self.direction,
            self.peer or "",
            self.protocol or -1,
            self.dport or -1,
        )


@dataclass(frozen=True)
class FirewallPlan:
    ops: tuple[NftOp, ...] = ()
    flushes: tuple[FlushSpec, ...] = ()
    full: bool = False
    problems: Mapping[str, str] = field(default_factory=dict)  # port id -> why skipped
    result: Ruleset = EMPTY  # what is loaded once the transaction has committed
    network_zones: Mapping[str, int] = field(default_factory=dict)  # network id -> ct zone

    def __bool__(self) -> bool:
        return bool(self.ops or self.flushes)

    @property
    def lines(self) -> list[str]:
        return [line for op in self.ops for line in op.lines]

    def script(self) -> str:
        return "\n".join(self.lines) + "\n" if self.ops else ""

    @property
    def objects_touched(self) -> int:
        return sum(op.objects for op in self.ops)

    def describe(self) -> list[str]:
        return [str(op) for op in self.ops] + [f"conntrack -D {f}" for f in self.flushes]


# -- the desired ruleset ---------------------------------------------------------------


@dataclass(frozen=True)
class DesiredRuleset:
    bridges: frozenset[str]
    zones: Mapping[str, int]
    egress_ports: Mapping[int, str | None]
    ingress_ports: Mapping[int, str | None]
    port_from: Mapping[str, str | None]
    port_to: Mapping[str, str | None]
    chains: Mapping[tuple[str, str], Chain]
    sets: Mapping[str, frozenset[str]]
    indexes: Mapping[str, int]  # port id -> index (ports with port security)
    port_zone: Mapping[str, int]  # port id -> zone
    network_zones: Mapping[str, int]
    problems: Mapping[str, str]


def port_is_stateful(port: PortSpec, groups: Mapping[str, SecurityGroupSpec]) -> bool:
    """Stateless only when every group the port uses is stateless."""
    specs = [groups[g] for g in port.security_group_ids if g in groups]
    return not specs or any(g.stateful for g in specs)


def port_rules(
    port: PortSpec, groups: Mapping[str, SecurityGroupSpec], direction: str
) -> frozenset[RuleSpec]:
    return frozenset(
        r
        for g in port.security_group_ids
        if g in groups
        for r in groups[g].rules
        if r.direction == direction
    )


def _allocate(used: Iterable[int], count: int, limit: int) -> list[int]:
    taken = set(used)
    out: list[int] = []
    candidate = 1
    while len(out) < count:
        if candidate > limit:
            raise RuntimeError(f"out of identifiers (limit {limit})")
        if candidate not in taken:
            out.append(candidate)
        candidate += 1
    return out


def desired_ruleset(
    desired: HostState,
    bridges: Mapping[str, str],
    actual: Ruleset,
    port_bridges: Mapping[str, str] | None = None,
) -> DesiredRuleset:
    """What should be loaded; keeps the port indexes and zones already allocated.

    bridges: network id -> its bridge; port_bridges: port id -> a bridge of the port's
    own (hybrid plugging, e.g. a per-port Linux bridge in front of OVS), which wins.
    All the bridges of one network share that network's conntrack zone.
    """
    problems: dict[str, str] = {}
    ports: list[PortSpec] = []
    port_bridge: dict[str, str] = {}
    for port in sorted(desired.ports.values(), key=lambda p: p.id):
        br = (port_bridges or {}).get(port.id) or bridges.get(port.network_id)
        if br is None:
            problems[port.id] = f"no bridge for network {port.network_id}"
            continue
        port_bridge[port.id] = br
        ports.append(port)
    net_bridges: dict[str, set[str]] = {n: {b} for n, b in bridges.items()}
    for port in ports:
        net_bridges.setdefault(port.network_id, set()).add(port_bridge[port.id])
    wanted_bridges = frozenset(b for brs in net_bridges.values() for b in brs)

    # Zones: one per network, kept across syncs and restarts (read back from the map).
    network_zones: dict[str, int] = {}
    taken: set[int] = set()
    for net in sorted(net_bridges):
        loaded_zones = sorted(
            z
            for b in net_bridges[net]
            if (z := actual.zones.get(b)) is not None and 1 <= z <= MAX_ZONE and z not in taken
        )
        if loaded_zones:
            network_zones[net] = loaded_zones[0]
            taken.add(loaded_zones[0])
    missing = sorted(set(net_bridges) - set(network_zones))
    fresh_zones = _allocate(set(actual.zones.values()) | taken, len(missing), MAX_ZONE)
    network_zones.update(zip(missing, fresh_zones, strict=True))
    zones: dict[str, int] = {}
    for net in sorted(net_bridges):
        for br in net_bridges[net]:
            zones.setdefault(br, network_zones[net])

    # Port indexes (mark values), kept likewise; new ones avoid every index still loaded.
    secured = [p for p in ports if p.port_security_enabled]
    loaded = {target: idx for idx, target in actual.egress_ports.items() if target}
    indexes: dict[str, int] = {}
    for port in secured:
        idx = loaded.get(port_chain("pe", port.id))
        if idx is not None and 1 <= idx <= MAX_PORT_INDEX and idx not in indexes.values():
            indexes[port.id] = idx
    new_ports = [p for p in secured if p.id not in indexes]
    fresh = _allocate(
        set(actual.egress_ports) | set(indexes.values()), len(new_ports), MAX_PORT_INDEX
    )
    for port, idx in zip(new_ports, fresh, strict=True):
        indexes[port.id] = idx

    groups = desired.security_groups
    chains: dict[tuple[str, str], Chain] = {}
    egress_ports: dict[int, str | None] = {}
    ingress_ports: dict[int, str | None] = {}
    port_from: dict[str, str | None] = {}
    port_to: dict[str, str | None] = {}
    port_zone: dict[str, int] = {}
    used_groups: set[str] = set()
    for port in ports:
        tap = port.device_name
        port_zone[port.id] = network_zones[port.network_id]
        if not port.port_security_enabled:
            port_from[tap] = None
            port_to[tap] = None
            continue
        idx = indexes[port.id]
        group_ids = tuple(dict.fromkeys(port.security_group_ids))
        used_groups.update(group_ids)
        stateful = port_is_stateful(port, groups)
        for chain in (
            from_port_chain(port, idx),
            to_port_chain(port.id, idx),
            egress_port_chain(port.id, group_ids, stateful),
            ingress_port_chain(port.id, group_ids, stateful),
        ):
            chains[(chain.family, chain.name)] = chain
        port_from[tap] = port_chain("pf", port.id)
        port_to[tap] = port_chain("pt", port.id)
        egress_ports[idx] = port_chain("pe", port.id)
        ingress_ports[idx << DST_SHIFT] = port_chain("pi", port.id)

    sets: dict[str, frozenset[str]] = {}
    for gid in sorted(used_groups):
        rules = groups[gid].rules if gid in groups else ()
        for direction in ("egress", "ingress"):
            chain = group_chain_body(gid, direction, rules)
            chains[(chain.family, chain.name)] = chain
        for rule in rules:
            if rule.remote_group_id:
                name = remote_set(rule.remote_group_id, rule.ethertype)
                members = desired.sg_members.get(rule.remote_group_id, frozenset())
                sets[name] = set_elements(members, set_version(name))
    return DesiredRuleset(
        bridges=wanted_bridges,
        zones=zones,
        egress_ports=egress_ports,
        ingress_ports=ingress_ports,
        port_from=port_from,
        port_to=port_to,
        chains=chains,
        sets=sets,
        indexes=indexes,
        port_zone=port_zone,
        network_zones=network_zones,
        problems=problems,
    )


# -- diffing ---------------------------------------------------------------------------


def _map_ops(
    family: str,
    name: str,
    want: Mapping[str, str | None],
    have: Mapping[str, str | None],
    remove_stale: bool,
) -> tuple[list[NftOp], list[NftOp]]:
    """(adds/changes, stale deletions) for a verdict map; keys already in nft syntax."""
    adds: list[NftOp] = []
    dels: list[NftOp] = []
    changed = sorted(k for k in want if k in have and have[k] != want[k])
    if changed:
        line = delete_elements_line(family, name, changed)
        adds.append(NftOp("map-delete", name, (line,), len(changed)))
    todo = sorted(changed + [k for k in want if k not in have])
    if todo:
        line = add_elements_line(family, name, [f"{k} : {verdict_text(want[k])}" for k in todo])
        adds.append(NftOp("map-add", name, (line,), len(todo)))
    stale = sorted(k for k in have if k not in want)
    if stale and remove_stale:
        line = delete_elements_line(family, name, stale)
        dels.append(NftOp("map-delete", name, (line,), len(stale)))
    return adds, dels


def _int_keys(m: Mapping[int, str | None]) -> dict[str, str | None]:
    return {str(k): v for k, v in m.items()}


def _str_keys(m: Mapping[str, str | None]) -> dict[str, str | None]:
    return {quoted(k): v for k, v in m.items()}


def _plain_set_ops(
    family: str, name: str, want: frozenset[str], have: frozenset[str], remove_stale: bool
) -> tuple[list[NftOp], list[NftOp]]:
    adds: list[NftOp] = []
    dels: list[NftOp] = []
    if want - have:
        items = [quoted(b) for b in sorted(want - have)]
        adds.append(NftOp("set-add", name, (add_elements_line(family, name, items),), len(items)))
    if remove_stale and have - want:
        items = [quoted(b) for b in sorted(have - want)]
        dels.append(
            NftOp("set-delete", name, (delete_elements_line(family, name, items),), len(items))
        )
    return adds, dels


def diff(
    desired: HostState,
    bridges: Mapping[str, str],
    actual: Ruleset,
    *,
    previous: HostState | None = None,
    previous_zones: Mapping[str, int] | None = None,
    port_bridges: Mapping[str, str] | None = None,
    remove_stale: bool = True,
) -> FirewallPlan:
    """The transaction (and conntrack deletions) converging `actual` to `desired`.

    previous: the desired state last applied by this process (None after a restart);
    it makes conntrack deletions precise (previous_zones: that plan's network zones).
    port_bridges: port id -> a bridge of its own (hybrid plugging), see desired_ruleset.
    remove_stale=False keeps what the desired state does not mention (ports, groups,
    bridges) - for an agent that just restarted.
    """
    full = not actual.skeleton
    base = EMPTY if full else actual
    want = desired_ruleset(desired, bridges, actual, port_bridges)
    ops: list[NftOp] = []
    tail: list[NftOp] = []

    # 1. Remote-group sets: new sets, then element changes (one element per member).
    for name in sorted(want.sets):
        elements = want.sets[name]
        if name not in base.sets:
            lines = [add_set_line(name)]
            if elements:
                lines.append(add_elements_line(INET, name, sorted(elements)))
            ops.append(NftOp("set-create", name, tuple(lines), 1 + len(elements)))
            continue
        have = base.sets[name]
        if elements - have:
            added = sorted(elements - have)
            ops.append(NftOp("set-add", name, (add_elements_line(INET, name, added),), len(added)))
        if have - elements:
            gone = sorted(have - elements)
            ops.append(
                NftOp("set-delete", name, (delete_elements_line(INET, name, gone),), len(gone))
            )

    # 2. Chains: group chains first (port chains jump to them), then port chains.
    def chain_order(key: tuple[str, str]) -> tuple[int, str, str]:
        return (0 if key[1].startswith(("ge_", "gi_")) else 1, key[0], key[1])

    for key in sorted(want.chains, key=chain_order):
        chain = want.chains[key]
        if base.chains.get(key) != chain.digest:
            verb = "chain-replace" if key in base.chains else "chain-create"
            ops.append(
                NftOp(
                    verb, f"{key[0]} {key[1]}", tuple(chain.replace_lines()), 1 + len(chain.rules)
                )
            )

    # 3. Maps and the bridges sets.
    a, d = _plain_set_ops(INET, "bridges", want.bridges, base.bridges, remove_stale)
    ops += a
    tail += d
    zone_want = {k: str(v) for k, v in want.zones.items()}
    zone_have = {k: str(v) for k, v in base.zones.items()}
    changed_zones = sorted(k for k in zone_want if k in zone_have and zone_have[k] != zone_want[k])
    new_zones = sorted(k for k in zone_want if k not in zone_have)
    if changed_zones:
        ops.append(
            NftOp(
                "map-delete",
                "zones",
                (delete_elements_line(INET, "zones", [quoted(k) for k in changed_zones]),),
                len(changed_zones),
            )
        )
    if changed_zones or new_zones:
        items = [f"{quoted(k)} : {zone_want[k]}" for k in sorted(changed_zones + new_zones)]
        ops.append(
            NftOp("map-add", "zones", (add_elements_line(INET, "zones", items),), len(items))
        )
    stale_zones = sorted(k for k in zone_have if k not in zone_want)
    if stale_zones and remove_stale:
        tail.append(
            NftOp(
                "map-delete",
                "zones",
                (delete_elements_line(INET, "zones", [quoted(k) for k in stale_zones]),),
                len(stale_zones),
            )
        )
    for family, name, w, h in (
        (INET, "egress_ports", _int_keys(want.egress_ports), _int_keys(base.egress_ports)),
        (INET, "ingress_ports", _int_keys(want.ingress_ports), _int_keys(base.ingress_ports)),
        (BRIDGE, "port_from", _str_keys(want.port_from), _str_keys(base.port_from)),
        (BRIDGE, "port_to", _str_keys(want.port_to), _str_keys(base.port_to)),
    ):
        a, d = _map_ops(family, name, w, h, remove_stale)
        ops += a
        tail += d

    # 4. Stale chains (port chains before the group chains they jump to), then sets.
    if remove_stale:
        stale_chains = sorted((k for k in base.chains if k not in want.chains), key=chain_order)
        for key in sorted(stale_chains, key=lambda k: -chain_order(k)[0]):
            tail.append(
                NftOp("chain-delete", f"{key[0]} {key[1]}", tuple(delete_chain_lines(*key)), 1)
            )
        for name in sorted(set(base.sets) - set(want.sets)):
            tail.append(NftOp("set-destroy", name, (f"delete set {INET} {TABLE} {name}",), 1))

    ops += tail
    if full:
        body = [line for op in ops for line in op.lines]
        objects = sum(op.objects for op in ops)
        ops = [NftOp("full-replace", TABLE, tuple(full_replace_lines(body)), objects)]
    flushes = conntrack_flushes(desired, want, actual, previous, previous_zones or {})
    return FirewallPlan(
        tuple(ops),
        tuple(flushes),
        full,
        dict(want.problems),
        _result(want, base, remove_stale),
        dict(want.network_zones),
    )


def _result(want: DesiredRuleset, base: Ruleset, remove_stale: bool) -> Ruleset:
    """The Ruleset a successful transaction leaves (so the next diff needs no re-read)."""

    def merged(w: Mapping[K, V], h: Mapping[K, V]) -> FrozenDict[K, V]:
        out: dict[K, V] = {} if remove_stale else dict(h)
        out.update(w)
        return FrozenDict(out)

    chains = {k: c.digest for k, c in want.chains.items()}
    return Ruleset(
        skeleton=True,
        bridges=want.bridges if remove_stale else want.bridges | base.bridges,
        zones=merged(want.zones, base.zones),
        egress_ports=merged(want.egress_ports, base.egress_ports),
        ingress_ports=merged(want.ingress_ports, base.ingress_ports),
        port_from=merged(want.port_from, base.port_from),
        port_to=merged(want.port_to, base.port_to),
        chains=merged(chains, base.chains),
        sets=merged(want.sets, base.sets),
    )


# -- conntrack -------------------------------------------------------------------------

# More deletions than this with the same filter (but different port addresses) become
# one deletion without the port address: fewer conntrack runs, a little more flushed.
COLLAPSE_AT = 4


@lru_cache(maxsize=8192)
def _addresses(port: PortSpec) -> dict[int, tuple[str, ...]]:
    a = port_addresses(port)
    return {4: a.addresses(4), 6: a.addresses(6)}


@lru_cache(maxsize=8192)
def _remote_sets(group: SecurityGroupSpec) -> frozenset[tuple[str, str]]:
    """(remote-group set, direction) pairs the group's rules use."""
    return frozenset(
        (remote_set(r.remote_group_id, r.ethertype), r.direction)
        for r in group.rules
        if r.remote_group_id
    )


def _rule_flush(zone: int, local: str, rule: RuleSpec) -> FlushSpec:
    proto = protocol_number(rule.protocol)
    dport = None
    if proto in PORT_PROTOCOLS and rule.port_range_min is not None:
        if rule.port_range_min == (rule.port_range_max or rule.port_range_min):
            dport = rule.port_range_min
    peer = None
    if rule.remote_ip_prefix:
        net = as_network(rule.remote_ip_prefix)
        peer = element_text(net) if net.prefixlen else None
    version = 4 if rule.ethertype == "IPv4" else 6
    return FlushSpec(zone, version, local, rule.direction, peer, proto or None, dport)


def collapse(flushes: Iterable[FlushSpec]) -> list[FlushSpec]:
    by_filter: dict[tuple[object, ...], list[FlushSpec]] = {}
    for f in flushes:
        key = (f.zone, f.version, f.direction, f.peer, f.protocol, f.dport)
        by_filter.setdefault(key, []).append(f)
    out: list[FlushSpec] = []
    for items in by_filter.values():
        if len(items) > COLLAPSE_AT:
            out.append(replace(items[0], local=None))
        else:
            out.extend(items)
    return sorted(set(out), key=FlushSpec.sort_key)


def conntrack_flushes(
    desired: HostState,
    want: DesiredRuleset,
    actual: Ruleset,
    previous: HostState | None,
    previous_zones: Mapping[str, int],
) -> list[FlushSpec]:
    out: set[FlushSpec] = set()
    groups = desired.security_groups
    old_groups = previous.security_groups if previous is not None else {}
    shrunk = {
        name: actual.sets[name] - elements
        for name, elements in want.sets.items()
        if name in actual.sets and not actual.sets[name] <= elements
    }
    changed_groups: set[tuple[str, str]] = set()
    for (family, name), chain in want.chains.items():
        if family == INET and name.startswith(("ge_", "gi_")):
            loaded = actual.chains.get((family, name))
            if loaded is not None and loaded != chain.digest:
                changed_groups.add((name[:2], name[3:]))

    def everything(port: PortSpec, zone: int, directions: Iterable[str]) -> None:
        for version, addrs in _addresses(port).items():
            for local in addrs:
                for d in directions:
                    out.add(FlushSpec(zone, version, local, d))

    for pid, zone in want.port_zone.items():
        port = desired.ports[pid]
        if not port.port_security_enabled:
            continue
        old = previous.ports.get(pid) if previous is not None else None
        # Loaded with "accept" (no port security) until now?
        was_open = port.device_name in actual.port_from and (
            actual.port_from[port.device_name] is None
        )
        if was_open or (old is not None and not old.port_security_enabled):
            everything(port, zone, ("ingress", "egress"))  # port security just turned on
            continue
        for direction, kind in (("egress", "pe"), ("ingress", "pi")):
            chain = want.chains[(INET, port_chain(kind, pid))]
            loaded = actual.chains.get((INET, chain.name))
            prefix = "gi" if direction == "ingress" else "ge"
            group_changed = bool(changed_groups) and any(
                (prefix, ident(g)) in changed_groups for g in port.security_group_ids
            )
            if loaded is None and not group_changed:
                continue  # a new port: nothing of its can be established yet
            if loaded == chain.digest and not group_changed:
                continue
            if old is None or previous is None:
                everything(port, zone, (direction,))
                continue
            if port_is_stateful(old, old_groups) != port_is_stateful(port, groups):
                everything(port, zone, (direction,))
                continue
            removed = port_rules(old, old_groups, direction) - port_rules(port, groups, direction)
            old_addrs = _addresses(old)
            for rule in removed:
                version = 4 if rule.ethertype == "IPv4" else 6
                for local in old_addrs[version]:
                    out.add(_rule_flush(zone, local, rule))
        # Members that left a remote group this port's rules refer to.
        if shrunk:
            for gid in port.security_group_ids:
                if gid not in groups:
                    continue
                for name, direction in _remote_sets(groups[gid]):
                    gone = shrunk.get(name)
                    if not gone:
                        continue
                    version = set_version(name)
                    for peer in gone:
                        for local in _addresses(port)[version]:
                            out.add(FlushSpec(zone, version, local, direction, peer))
    # Ports that went away (known only with the previous state): their addresses.
    if previous is not None:
        for pid, old in previous.ports.items():
            if pid in desired.ports or not old.port_security_enabled:
                continue
            bridge_zone = previous_zones.get(old.network_id)
            if bridge_zone is None:
                bridge_zone = want.network_zones.get(old.network_id)
            if bridge_zone is not None:
                everything(old, bridge_zone, ("ingress", "egress"))
    return collapse(out)
