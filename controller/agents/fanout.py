"""Fan-out of the store's one watch to every connected agent stream.

The store calls ``Fanout.on_change`` synchronously for every batch of changes. For
each batch the fan-out works out which networks, ports and hosts it touches (status
only changes touch nothing), recomputes the view of every connected host that may be
affected, and queues the difference from what that stream was last sent. Queues are
bounded: a stream whose queue is full is marked for resync (its queue is emptied and
its writer sends Resync then a fresh Snapshot), so one slow agent never holds up the
others or the store.

A bounded ring remembers which networks and ports every recent revision touched, so
an agent reconnecting with ``last_revision`` R gets a catch-up Delta when the ring
covers everything after R, and a Snapshot otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

from baryon.v1 import agent_pb2
from controller.agents import hoststate
from controller.agents.hoststate import TUNNEL_TYPES, View, VtepKey
from controller.model import Agent, Network, Port, Resource, SecurityGroup, SecurityGroupRule
from controller.services.binding import BOUND_VIF_TYPES, is_alive
from controller.store import Store

log = logging.getLogger(__name__)

# Sentinel in a stream's queue: the stream overflowed; send Resync + Snapshot.
RESYNC = None
# A message, or one serialized once for many streams.
QueueItem = agent_pb2.ControllerMessage | bytes | None
PortRef = tuple[str, str, str]  # (port id, host, network id)
# Changes to these may change the routers / DHCP networks of service hosts.
SERVICE_KINDS = frozenset({"router", "floatingip", "subnet", "router_binding", "dhcp_binding"})


@dataclass(frozen=True, slots=True)
class _PortInfo:
    """What of a port matters to hosts (a change to anything else touches nothing)."""

    network_id: str
    host: str
    bound: bool
    groups: tuple[str, ...]
    # What remote-group member sets take from the port: its fixed IPs and the
    # (address, mac) of its allowed address pairs.
    members: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
    spec: tuple[object, ...]


def _port_info(port: Port) -> _PortInfo:
    return _PortInfo(
        port.network_id,
        port.binding_host_id,
        port.binding_vif_type in BOUND_VIF_TYPES,
        tuple(port.security_groups),
        (tuple(port.fixed_ips), tuple(port.allowed_address_pairs)),
        (
            port.mac_address,
            port.admin_state_up,
            port.port_security_enabled,
            tuple(port.fixed_ips),
            tuple(port.allowed_address_pairs),
        ),
    )


def _net_info(net: Network) -> tuple[object, ...]:
    return (hoststate.network_pb(net).SerializeToString(), net.admin_state_up)


@dataclass(slots=True)
class Impact:
    """What one batch of changes may alter in the hosts' views (see Fanout._push)."""

    everything: bool = False  # recompute every stream
    host_ports: dict[str, set[str]] = field(default_factory=dict)  # host -> ports changed
    full_nets: set[str] = field(default_factory=set)  # recompute hosts with these networks
    services: bool = False  # recompute the hosts running L3 / DHCP
    vteps: set[tuple[str, str]] = field(default_factory=set)  # (network, host) l2pop entries
    sg_groups: set[str] = field(default_factory=set)  # groups whose rules may have changed
    member_groups: set[str] = field(default_factory=set)  # groups whose members may have

    def __bool__(self) -> bool:
        return bool(
            self.everything
            or self.host_ports
            or self.full_nets
            or self.services
            or self.vteps
            or self.sg_groups
            or self.member_groups
        )


@dataclass(eq=False)
class Stream:
    host: str
    queue: asyncio.Queue[QueueItem]
    sent: View = field(default_factory=View)
    overflowed: bool = False
    resyncs: int = 0
    # The host runs L3 / DHCP services: its routers and DHCP networks depend on much
    # more than its own ports, so any change that may touch them recomputes its view.
    services: bool = False


class Fanout:
    def __init__(self, store: Store, *, queue_size: int = 256, ring_size: int = 4096) -> None:
        self.store = store
        self.queue_size = queue_size
        self.ring_size = ring_size
        self.streams: set[Stream] = set()
        # (revision, networks touched, (port id, host, network id) of ports touched)
        self.ring: deque[tuple[int, frozenset[str], frozenset[PortRef]]] = deque()
        self.floor = 0
        self._ports: dict[str, _PortInfo] = {}
        self._nets: dict[str, tuple[object, ...]] = {}
        self._tunnels: dict[str, str] = {}
        self._rule_groups: dict[str, str] = {}  # rule id -> its group
        self._agent_host: dict[str, str] = {}  # agent id -> host
        self._host_agents: dict[str, set[str]] = {}  # host -> agent ids
        # group id -> address -> how many of the group's ports have it
        self._group_addresses: dict[str, dict[str, int]] = {}
        # (network id, host) -> MAC -> how many bound ports there have it
        self._host_macs: dict[tuple[str, str], dict[str, int]] = {}
        # Counters (OVN-style): host views recomputed, and streams served a shared delta.
        self.recomputes = 0
        self.shared_deltas = 0
        self.patches = 0  # streams whose own ports were patched in, no recompute

    def start(self) -> None:
        self._reset(self.store.cache.revision)
        self.store.listeners.append(self.on_change)

    def stop(self) -> None:
        if self.on_change in self.store.listeners:
            self.store.listeners.remove(self.on_change)

    def _reset(self, revision: int) -> None:
        cache = self.store.cache
        self._ports = {p.id: _port_info(p) for p in cache.all(Port)}
        self._group_addresses = {}
        self._host_macs = {}
        for info in self._ports.values():
            self._count_members(info, 1)
            self._count_macs(info, 1)
        self._nets = {n.id: _net_info(n) for n in cache.all(Network)}
        self._tunnels = {}
        self._agent_host = {}
        self._host_agents = {}
        self._update_tunnels({a.id for a in cache.all(Agent)})
        self._rule_groups = {r.id: r.security_group_id for r in cache.all(SecurityGroupRule)}
        self.ring.clear()
        self.floor = revision

    # -- streams
    def attach(self, host: str, last_revision: int, services: bool = False) -> tuple[Stream, str]:
        """Register a stream for `host`; its queue starts with a Snapshot or catch-up
        Delta (returned kind: "snapshot" or "delta"). Synchronous: no change can slip
        in between computing the first message and registering the stream."""
        cache = self.store.cache
        view = hoststate.compute(cache, host, self._tunnels)
        stream = Stream(host, asyncio.Queue(self.queue_size), services=services)
        revision = cache.revision
        if 0 < last_revision and self.floor <= last_revision <= revision:
            nets: set[str] = set()
            host_ports: set[str] = set()
            host_nets: set[str] = set()
            for rev, n, refs in self.ring:
                if rev > last_revision:
                    nets |= n
                    for port_id, port_host, net_id in refs:
                        if port_host == host:
                            host_ports.add(port_id)
                            host_nets.add(net_id)
            msg = agent_pb2.ControllerMessage(
                delta=hoststate.catch_up(view, revision, nets, host_ports, host_nets)
            )
            kind = "delta"
        else:
            msg = self.snapshot_message(view, revision)
            kind = "snapshot"
        stream.sent = view
        stream.queue.put_nowait(msg)
        self.streams.add(stream)
        return stream, kind

    def detach(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def snapshot_message(self, view: View, revision: int) -> agent_pb2.ControllerMessage:
        return agent_pb2.ControllerMessage(
            snapshot=agent_pb2.Snapshot(revision=revision, state=view.to_proto())
        )

    def resync(self, stream: Stream) -> list[agent_pb2.ControllerMessage]:
        """For the writer of an overflowed stream: Resync + Snapshot, state reset."""
        view = hoststate.compute(self.store.cache, stream.host, self._tunnels)
        stream.sent = view
        stream.overflowed = False
        stream.resyncs += 1
        reason = f"more than {self.queue_size} updates queued for this agent"
        return [
            agent_pb2.ControllerMessage(resync=agent_pb2.Resync(reason=reason)),
            self.snapshot_message(view, self.store.cache.revision),
        ]

    # -- the store listener
    def on_change(self, revision: int, changes: list[tuple[str, str, Resource | None]]) -> None:
        try:
            self._on_change(revision, changes)
        except Exception:
            log.exception("agent fan-out failed at revision %d", revision)

    def _on_change(self, revision: int, changes: list[tuple[str, str, Resource | None]]) -> None:
        if not changes:
            # The store reloaded its cache (compaction): changes may have been lost.
            self._reset(revision)
            self._push(revision, Impact(everything=True))
            return
        imp = Impact()
        nets: set[str] = set()  # for the ring: networks whose ports catch-ups resend
        ports: set[PortRef] = set()
        agents_changed: set[str] = set()
        for kind, id_, obj in changes:
            if kind in SERVICE_KINDS:
                imp.services = True
            if kind == "port":
                old = self._ports.get(id_)
                new = _port_info(obj) if isinstance(obj, Port) else None
                if old == new:
                    continue
                if new is None:
                    self._ports.pop(id_, None)
                else:
                    self._ports[id_] = new
                if old is not None:
                    self._count_members(old, -1)
                    self._count_macs(old, -1)
                if new is not None:
                    self._count_members(new, 1)
                    self._count_macs(new, 1)
                imp.services = True  # DHCP hosts and router interfaces follow ports
                if (
                    old is None
                    or new is None
                    or old.members != new.members
                    or old.groups != new.groups
                ):
                    for info in (old, new):
                        if info is not None:
                            imp.member_groups.update(info.groups)
                for info in (old, new):
                    if info is not None:
                        nets.add(info.network_id)
                        if info.host:
                            imp.host_ports.setdefault(info.host, set()).add(id_)
                            ports.add((id_, info.host, info.network_id))
                            if info.bound:
                                imp.vteps.add((info.network_id, info.host))
            elif kind == "network":
                old_n = self._nets.get(id_)
                new_n = _net_info(obj) if isinstance(obj, Network) else None
                if old_n == new_n:
                    continue
                if new_n is None:
                    self._nets.pop(id_, None)
                else:
                    self._nets[id_] = new_n
                nets.add(id_)
                imp.full_nets.add(id_)
                imp.services = True
            elif kind == "security_group":
                imp.sg_groups.add(id_)
            elif kind == "security_group_rule":
                old_g = self._rule_groups.pop(id_, None)
                if old_g is not None:
                    imp.sg_groups.add(old_g)
                if isinstance(obj, SecurityGroupRule):
                    self._rule_groups[id_] = obj.security_group_id
                    imp.sg_groups.add(obj.security_group_id)
            elif kind in ("agent", "agent_alive"):
                agents_changed.add(id_)
        for h in self._update_tunnels(agents_changed):
            moved = {i.network_id for i in self._ports.values() if i.host == h}
            nets.update(moved)
            imp.full_nets.update(moved)
            imp.services = True
        if nets or ports:
            # (Security groups need no ring entry: catch-up deltas carry them whole.)
            self.ring.append((revision, frozenset(nets), frozenset(ports)))
            while len(self.ring) > self.ring_size:
                self.floor = self.ring.popleft()[0]
        if imp:
            self._push(revision, imp)

    def _count_macs(self, info: _PortInfo, sign: int) -> None:
        """The same for the MACs of bound ports per (network, host): l2population."""
        if not (info.host and info.bound):
            return
        _count(self._host_macs, (info.network_id, info.host), [str(info.spec[0])], sign)

    def _count_members(self, info: _PortInfo, sign: int) -> None:
        """Add (sign 1) or remove (-1) a port's addresses to its groups' member counts:
        what hoststate.group_members computes, kept up to date change by change."""
        fixed_ips, pairs = info.members
        addresses = [ip for _, ip in fixed_ips] + [ip for ip, _ in pairs]
        for group_id in info.groups:
            _count(self._group_addresses, group_id, addresses, sign)

    def _index_agent(self, agent_id: str, host: str | None) -> None:
        old = self._agent_host.pop(agent_id, None)
        if old is not None:
            ids = self._host_agents.get(old)
            if ids is not None:
                ids.discard(agent_id)
                if not ids:
                    del self._host_agents[old]
        if host is not None:
            self._agent_host[agent_id] = host
            self._host_agents.setdefault(host, set()).add(agent_id)

    def _update_tunnels(self, agent_ids: set[str]) -> set[str]:
        """Refresh the tunnel IPs of the hosts of these agents; the hosts whose changed."""
        cache = self.store.cache
        hosts: set[str] = set()
        for agent_id in agent_ids:
            old = self._agent_host.get(agent_id)
            if old is not None:
                hosts.add(old)
            agent = cache.get(Agent, agent_id)
            self._index_agent(agent_id, agent.host if agent is not None else None)
            if agent is not None:
                hosts.add(agent.host)
        moved: set[str] = set()
        for host in hosts:
            ip = None
            for agent_id in sorted(self._host_agents.get(host, ())):
                agent = cache.get(Agent, agent_id)
                if agent is not None and agent.tunnel_ip and is_alive(cache, agent):
                    ip = agent.tunnel_ip
                    break
            if self._tunnels.get(host) != ip:
                moved.add(host)
                if ip is None:
                    self._tunnels.pop(host, None)
                else:
                    self._tunnels[host] = ip
        return moved

    def _push(self, revision: int, imp: Impact) -> None:
        """Send every affected stream its delta.

        Streams of the hosts a change is about (and every stream, after a reload) get
        their view recomputed and diffed. Every other stream only sees other hosts'
        changes through shared tables (remote VTEPs, security group rules, remote group
        members): those entries are computed once per batch, and streams that need the
        same entries get one message serialized once. A change that would alter which
        entries a host needs (a rule now naming another remote group) falls back to a
        recompute of that host.
        """
        cache = self.store.cache
        memo: dict[tuple[str, str], object] = {}  # parts every host sees alike
        vteps = self._vtep_entries(imp)
        rules: dict[str, agent_pb2.HostSecurityGroup | None] = {}
        for group_id in imp.sg_groups:
            sg = cache.get(SecurityGroup, group_id)
            rules[group_id] = None if sg is None else hoststate.security_group_pb(cache, sg)
        members: dict[str, frozenset[str]] = {}
        messages: dict[tuple[object, ...], bytes] = {}
        verdicts: dict[int, tuple[agent_pb2.HostSecurityGroup, str]] = {}
        for stream in list(self.streams):
            if stream.overflowed:
                continue
            sent = stream.sent
            if (
                imp.everything
                or (imp.services and stream.services)
                or not sent.networks.keys().isdisjoint(imp.full_nets)
            ):
                self.recomputes += 1
                self._recompute(stream, revision, memo)
                continue
            own: list[agent_pb2.HostPort] = []
            own_gone: list[str] = []
            changed = imp.host_ports.get(stream.host)
            if changed is not None:
                patch = self._own_ports_patch(stream, changed)
                if patch is None:
                    self.recomputes += 1
                    self._recompute(stream, revision, memo)
                    continue
                own, own_gone = patch
            up_vteps = []
            del_vteps = []
            for key, (host, macs) in vteps.items():
                if host == stream.host or key[0] not in sent.networks:
                    continue
                had = sent.vteps.get(key)
                if not macs:
                    if had is not None:
                        del_vteps.append(key)
                elif had != macs:
                    up_vteps.append(key)
            up_groups = []
            fallback = False
            for group_id, pb in rules.items():
                had_pb = sent.sgs.get(group_id)
                if had_pb is None:
                    continue
                # Most streams hold the same message object: judge each object once
                # (the memo keeps it referenced, so its id is not reused meanwhile).
                judged = verdicts.get(id(had_pb))
                if judged is None:
                    if pb is None or _remote_groups(pb) != _remote_groups(had_pb):
                        verdict = _FALLBACK
                    else:
                        verdict = _SAME if had_pb == pb else _UPSERT
                    judged = verdicts[id(had_pb)] = (had_pb, verdict)
                if judged[1] is _FALLBACK:
                    fallback = True
                    break
                if judged[1] is _UPSERT:
                    up_groups.append(group_id)
            if fallback:
                self.recomputes += 1
                self._recompute(stream, revision, memo)
                continue
            up_members = []
            for group_id in imp.member_groups:
                had_members = sent.members.get(group_id)
                if had_members is None:
                    continue
                now = members.get(group_id)
                if now is None:
                    counts = self._group_addresses.get(group_id)
                    now = members[group_id] = frozenset(counts) if counts else frozenset()
                if now != had_members:
                    up_members.append(group_id)
            mine = bool(own or own_gone)
            if not (mine or up_vteps or del_vteps or up_groups or up_members):
                continue
            shape = (tuple(up_vteps), tuple(del_vteps), tuple(up_groups), tuple(up_members))
            data = None if mine else messages.get(shape)
            if data is None:
                delta = agent_pb2.Delta(revision=revision, upsert_ports=own, delete_ports=own_gone)
                for vk in up_vteps:
                    delta.upsert_remote_vteps.append(hoststate.vtep_pb(vk, vteps[vk][1]))
                for vk in del_vteps:
                    delta.delete_remote_vteps.append(
                        agent_pb2.RemoteVtepKey(network_id=vk[0], tunnel_ip=vk[1])
                    )
                for group_id in up_groups:
                    pb = rules[group_id]
                    assert pb is not None
                    delta.upsert_security_groups.append(pb)
                for group_id in up_members:
                    delta.upsert_security_group_members.append(
                        hoststate.members_pb(group_id, members[group_id])
                    )
                data = agent_pb2.ControllerMessage(delta=delta).SerializeToString()
                if not mine:
                    messages[shape] = data
            for port_pb in own:
                sent.ports[port_pb.id] = port_pb
            for port_id in own_gone:
                del sent.ports[port_id]
            for vk in up_vteps:
                sent.vteps[vk] = vteps[vk][1]
            for vk in del_vteps:
                del sent.vteps[vk]
            for group_id in up_groups:
                pb = rules[group_id]
                assert pb is not None
                sent.sgs[group_id] = pb
            for group_id in up_members:
                sent.members[group_id] = members[group_id]
            if mine:
                self.patches += 1
            else:
                self.shared_deltas += 1
            self._enqueue(stream, data)

    def _own_ports_patch(
        self, stream: Stream, port_ids: set[str]
    ) -> tuple[list[agent_pb2.HostPort], list[str]] | None:
        """(port messages to upsert, port ids to delete) on `stream` for these changed
        ports of its host, when nothing else of its view changes with them: the
        networks and security groups they need are there, and stay needed by other
        ports. None when the view must be recomputed (its first or last port on a
        network, the last port of a group, a port's groups changing)."""
        cache = self.store.cache
        sent = stream.sent
        out: list[agent_pb2.HostPort] = []
        gone: list[str] = []
        for port_id in sorted(port_ids):
            port = cache.get(Port, port_id)
            had = sent.ports.get(port_id)
            if port is None or not hoststate.is_bound_to(port, stream.host):
                if had is not None:
                    if not _still_needed(sent, had, gone):
                        return None
                    gone.append(port_id)
                continue
            net = cache.get(Network, port.network_id)
            if net is None or net.id not in sent.networks:
                return None
            pb = hoststate.port_pb(port, net)
            if pb.port_security_enabled and not all(g in sent.sgs for g in pb.security_groups):
                return None
            if had is not None and (
                had.port_security_enabled != pb.port_security_enabled
                or had.security_groups != pb.security_groups
            ):
                return None
            if had != pb:
                out.append(pb)
        return out, gone

    def _vtep_entries(self, imp: Impact) -> dict[VtepKey, tuple[str, frozenset[str]]]:
        """(network, tunnel IP) -> (host, MACs of its bound ports) for the l2population
        entries the changed ports may have altered. A tunnel IP shared by several hosts
        is left to recomputes (each host leaves its own ports out of the union)."""
        cache = self.store.cache
        out: dict[VtepKey, tuple[str, frozenset[str]]] = {}
        by_ip: dict[str, int] | None = None
        for net_id, host in sorted(imp.vteps):
            ip = self._tunnels.get(host)
            net = cache.get(Network, net_id)
            if ip is None or net is None or net.provider_network_type not in TUNNEL_TYPES:
                continue
            if by_ip is None:
                by_ip = {}
                for t in self._tunnels.values():
                    by_ip[t] = by_ip.get(t, 0) + 1
            if by_ip[ip] > 1:
                imp.full_nets.add(net_id)
                continue
            macs = frozenset(self._host_macs.get((net_id, host), ()))
            out[(net_id, ip)] = (host, macs)
        return out

    def _recompute(
        self, stream: Stream, revision: int, memo: dict[tuple[str, str], object]
    ) -> None:
        view = hoststate.compute(self.store.cache, stream.host, self._tunnels, memo)
        delta = hoststate.diff(stream.sent, view, revision)
        stream.sent = view
        if delta is not None:
            self._enqueue(stream, agent_pb2.ControllerMessage(delta=delta))

    def _enqueue(self, stream: Stream, item: agent_pb2.ControllerMessage | bytes) -> None:
        try:
            stream.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("agent on %s is too far behind; it will be resynced", stream.host)
            stream.overflowed = True
            while not stream.queue.empty():
                stream.queue.get_nowait()
            stream.queue.put_nowait(RESYNC)


_SAME, _UPSERT, _FALLBACK = "same", "upsert", "fallback"
K = TypeVar("K")


def _count(table: dict[K, dict[str, int]], key: K, values: list[str], sign: int) -> None:
    """Add (sign 1) or remove (-1) one occurrence of each value under table[key];
    values and keys that drop to zero go."""
    counts = table.setdefault(key, {})
    for value in values:
        n = counts.get(value, 0) + sign
        if n > 0:
            counts[value] = n
        else:
            counts.pop(value, None)
    if not counts:
        del table[key]


def _still_needed(view: View, leaving: agent_pb2.HostPort, gone: list[str]) -> bool:
    """Whether the other ports of the view (but those in `gone`) still need the
    network and the security groups of a port that leaves it."""
    groups = set(leaving.security_groups) if leaving.port_security_enabled else set()
    net = False
    for port_id, pb in view.ports.items():
        if port_id == leaving.id or port_id in gone:
            continue
        if pb.network_id == leaving.network_id:
            net = True
        if groups and pb.port_security_enabled:
            groups.difference_update(pb.security_groups)
        if net and not groups:
            return True
    return False


def _remote_groups(pb: agent_pb2.HostSecurityGroup) -> frozenset[str]:
    return frozenset(r.remote_group_id for r in pb.rules if r.remote_group_id)
