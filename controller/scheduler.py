"""L3 and DHCP scheduling, by one leader among the controllers.

Leader election: the key ``r/leader/scheduler`` is created (compare create_revision
== 0) attached to the candidate's etcd lease, which the holder keeps alive. Every
controller sees the key through its cache; when it disappears (holder stopped:
lease revoked; holder died: lease expired after ``leader_lease_ttl``) the others
campaign again. Only the holder schedules, and every scheduling transaction also
compares the leader key's mod_revision, so a deposed leader's writes fail.

Scheduling (Neutron's l3/dhcp agent schedulers, "least routers/networks"):
- each router gets a ``router_binding`` to one live agent offering ``l3``; its
  interface and gateway ports are bound to that agent's host;
- each network with a DHCP-enabled IPv4 subnet gets ``dhcp_agents_per_network``
  ``dhcp_binding`` slots on distinct live agents offering ``dhcp``, each with a
  ``network:dhcp`` port (an address on every DHCP-enabled subnet, no security
  groups, port security off) bound to the slot's host;
- a binding whose agent is no longer alive moves to another live agent (the DHCP port
  keeps its addresses and moves with it); bindings of deleted routers / networks
  without DHCP go away, with their DHCP ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from typing import Any

from controller.config import Config
from controller.errors import BaryonError
from controller.etcd.client import EtcdError, LeaseKeeper, cmp_create, op_put
from controller.indexes import ROUTER_GATEWAY, ROUTER_INTERFACE
from controller.model import (
    Agent,
    AgentLiveness,
    DhcpBinding,
    Leader,
    Network,
    Port,
    Resource,
    Router,
    RouterBinding,
    Subnet,
    encode,
)
from controller.services.base import bump
from controller.services.binding import port_fields
from controller.services.ports import PortService
from controller.store import Store, Txn

log = logging.getLogger(__name__)

LEADER_ID = "scheduler"
DHCP_OWNER = "network:dhcp"
# Changes to these kinds may change what is scheduled where.
RELEVANT = frozenset(
    {
        "agent",
        "agent_alive",
        "router",
        "network",
        "subnet",
        "port",
        "router_binding",
        "dhcp_binding",
        "leader",
    }
)
PERIOD = 5.0


def dhcp_subnets(store_cache: Any, network_id: str) -> list[Subnet]:
    """The network's DHCP-enabled IPv4 subnets, oldest first."""
    subnets = [
        s
        for s in store_cache.related(Subnet, "net_subnets", network_id)
        if s.enable_dhcp and s.ip_version == 4
    ]
    return sorted(subnets, key=lambda s: (s.created_at, s.id))


def dhcp_device_id(host: str, network_id: str) -> str:
    """Neutron's DHCP port device_id: dhcp<uuid5 of the host>-<network id>."""
    return f"dhcp{uuid.uuid5(uuid.NAMESPACE_DNS, host)}-{network_id}"


class Scheduler:
    def __init__(self, store: Store, cfg: Config, ports: PortService) -> None:
        self.store = store
        self.cfg = cfg
        self.ports = ports
        self.id = uuid.uuid4().hex
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease: int | None = None
        self._keeper: LeaseKeeper | None = None
        self.leader_since: float | None = None
        self._stopping = False

    @property
    def cache(self) -> Any:
        return self.store.cache

    @property
    def is_leader(self) -> bool:
        leader = self.cache.get(Leader, LEADER_ID)
        return (
            self._keeper is not None
            and not self._keeper.lost
            and leader is not None
            and leader.holder == self.id
        )

    # -- lifecycle
    async def start(self) -> None:
        """Campaign once (so a lone controller leads from the start), then run."""
        self.store.listeners.append(self._on_change)
        try:
            await self._campaign()
        except (BaryonError, EtcdError) as err:
            log.warning("scheduler: campaign failed: %s", err)
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._on_change in self.store.listeners:
            self.store.listeners.remove(self._on_change)
        self._stopping = True
        if self._task is not None:
            # (A cancellation can surface from a gRPC call as an error the loop survives:
            # the flag ends it then; never wait for it unboundedly.)
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
        await self._resign()

    async def _resign(self) -> None:
        keeper, lease = self._keeper, self._lease
        self._keeper = self._lease = None
        if keeper is not None:
            with contextlib.suppress(Exception):
                await keeper.stop()
        if lease is not None:
            # Revoking deletes the leader key at once: another controller takes over.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.etcd.lease_revoke(lease), 2.0)

    def _on_change(self, revision: int, changes: list[tuple[str, str, Resource | None]]) -> None:
        if not changes:
            self._dirty.set()  # the cache was reloaded
        for kind, _, obj in changes:
            if kind not in RELEVANT:
                continue
            # Ports matter when they are service ports (or gone: they may have been).
            if isinstance(obj, Port) and not obj.device_owner.startswith("network:"):
                continue
            self._dirty.set()
            return

    async def _run(self) -> None:
        while not self._stopping:
            self._dirty.clear()
            try:
                await self._campaign()
                if self.is_leader:
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except (BaryonError, EtcdError) as err:
                log.warning("scheduling: %s", err)
                await asyncio.sleep(0.5)
                self._dirty.set()
            except Exception:
                log.exception("scheduling failed")
                await asyncio.sleep(0.5)
                self._dirty.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), PERIOD)

    # -- leader election
    def _lost(self, _lease: int) -> None:
        log.warning("scheduler %s: leader lease lost", self.id)
        self._keeper = None
        self._lease = None
        self.leader_since = None
        self._dirty.set()

    async def _campaign(self) -> None:
        if self.cache.get(Leader, LEADER_ID) is not None:
            return
        etcd = self.store.etcd
        if self._keeper is None or self._keeper.lost or self._lease is None:
            ttl = max(1, int(self.cfg.leader_lease_ttl))
            self._lease, ttl = await etcd.lease_grant(ttl)
            self._keeper = etcd.keep_lease_alive(self._lease, ttl, on_lost=self._lost)
        key = self.store.rkey(Leader.KIND, LEADER_ID)
        now = time.time()
        record = Leader(id=LEADER_ID, project_id="", holder=self.id, created_at=now, updated_at=now)
        res = await etcd.txn(
            [cmp_create(key, "=", 0)],
            [op_put(key, encode(record), lease=self._lease), op_put(self.store.rev_key, b"")],
            [],
        )
        if res.succeeded:
            await self.store.wait_for(res.revision)
            self.leader_since = time.monotonic()
            log.info("scheduler %s is the leader", self.id)
        else:
            await self.store.sync()

    def _guard(self, txn: Txn) -> bool:
        """Only the leader writes; its writes fail if the leader key changed."""
        leader = self.cache.get(Leader, LEADER_ID)
        if leader is None or leader.holder != self.id:
            return False
        txn.depends_on(leader)
        return True

    # -- scheduling
    def live_agents(self, service: str) -> list[Agent]:
        out = [
            a
            for a in self.cache.all(Agent)
            if service in a.services and self.cache.get(AgentLiveness, a.id) is not None
        ]
        return sorted(out, key=lambda a: (a.host, a.id))

    def _alive(self, agent_id: str, service: str) -> bool:
        agent = self.cache.get(Agent, agent_id)
        return (
            agent is not None
            and service in agent.services
            and self.cache.get(AgentLiveness, agent_id) is not None
        )

    async def reconcile(self) -> None:
        """Bring every router and DHCP network in line (one transaction each; a no-op
        build writes nothing)."""
        router_ids = {r.id for r in self.cache.all(Router)} | {
            b.id for b in self.cache.all(RouterBinding)
        }
        for router_id in sorted(router_ids):
            if self._stopping or not self.is_leader:
                return
            await self.store.commit(functools.partial(self._router, router_id=router_id))
        net_ids = {n.id for n in self.cache.all(Network)} | {
            b.network_id for b in self.cache.all(DhcpBinding)
        }
        for net_id in sorted(net_ids):
            if self._stopping or not self.is_leader:
                return
            await self.store.commit(functools.partial(self._network, net_id=net_id))

    def _depends_alive(self, txn: Txn, agent_id: str) -> None:
        alive = self.cache.get(AgentLiveness, agent_id)
        if alive is not None:
            txn.depends_on(alive)

    def _router(self, txn: Txn, router_id: str) -> None:
        router = self.cache.get(Router, router_id)
        binding = self.cache.get(RouterBinding, router_id)
        if router is None:
            if binding is not None and self._guard(txn):
                txn.delete(binding)
            return
        host = binding.host if binding is not None else ""
        if binding is None or not self._alive(binding.agent_id, "l3"):
            agents = self.live_agents("l3")
            if not agents:
                return  # keep the binding: nowhere to go
            load = Counter(b.agent_id for b in self.cache.all(RouterBinding))
            agent = min(agents, key=lambda a: (load[a.id], a.host, a.id))
            if not self._guard(txn):
                return
            self._depends_alive(txn, agent.id)
            now = time.time()
            new = RouterBinding(
                id=router_id,
                project_id="",
                router_id=router_id,
                agent_id=agent.id,
                host=agent.host,
                created_at=now,
                updated_at=now,
            )
            if binding is None:
                txn.create(new)
            else:
                txn.update(binding, bump(binding, {"agent_id": agent.id, "host": agent.host}))
            log.info(
                "router %s scheduled to %s (was %s)", router_id, agent.host, host or "unscheduled"
            )
            host = agent.host
        for port in self.cache.related(Port, "device", router_id):
            if port.device_owner not in (ROUTER_INTERFACE, ROUTER_GATEWAY):
                continue
            self._bind_port(txn, port, host)

    def _bind_port(self, txn: Txn, port: Port, host: str, **extra: Any) -> None:
        net = self.cache.get(Network, port.network_id)
        if net is None:
            return
        fields = port_fields(self.cache, net, host)
        if (
            port.binding_host_id == host
            and port.binding_vif_type == fields["binding_vif_type"]
            and all(getattr(port, k) == v for k, v in extra.items())
        ):
            return
        if not self._guard(txn):
            return
        changes = {"binding_host_id": host, "status": "DOWN", **fields, **extra}
        txn.update(port, bump(port, changes))

    def _network(self, txn: Txn, net_id: str) -> None:
        net = self.cache.get(Network, net_id)
        bindings = sorted(self.cache.related(DhcpBinding, "net_dhcp", net_id), key=lambda b: b.slot)
        subnets = dhcp_subnets(self.cache, net_id) if net is not None else []
        wanted = max(0, int(self.cfg.dhcp_agents_per_network)) if subnets else 0
        if net is None or not subnets:
            if not bindings or not self._guard(txn):
                return
            for b in bindings:
                txn.delete(b)
                port = self.cache.get(Port, b.port_id)
                if port is not None:
                    txn.delete(port)
            return
        serving = {b.agent_id for b in bindings if self._alive(b.agent_id, "dhcp")}
        lazy: dict[str, Any] = {}

        def pick() -> Agent | None:
            # The agents and their load are only looked at when something is to be
            # placed (a reconcile visits every network).
            if not lazy:
                lazy["free"] = [a for a in self.live_agents("dhcp") if a.id not in serving]
                lazy["load"] = Counter(b.agent_id for b in self.cache.all(DhcpBinding))
            free: list[Agent] = lazy["free"]
            load: Counter[str] = lazy["load"]
            if not free:
                return None
            agent = min(free, key=lambda a: (load[a.id], a.host, a.id))
            free.remove(agent)
            load[agent.id] += 1
            return agent

        used_slots = {b.slot for b in bindings}
        for b in bindings:
            if b.slot >= wanted:
                if self._guard(txn):
                    txn.delete(b)
                    port = self.cache.get(Port, b.port_id)
                    if port is not None:
                        txn.delete(port)
                continue
            agent_id, host = b.agent_id, b.host
            if not self._alive(b.agent_id, "dhcp"):
                agent = pick()
                if agent is not None and self._guard(txn):
                    self._depends_alive(txn, agent.id)
                    agent_id, host = agent.id, agent.host
                    log.info("DHCP of network %s moves from %s to %s", net_id, b.host, host)
            port = self.cache.get(Port, b.port_id)
            port_id = b.port_id
            if port is None:
                if not self._guard(txn):
                    return
                port = self._new_dhcp_port(txn, net, subnets, host)
                txn.create(port)
                port_id = port.id
            else:
                self._update_dhcp_port(txn, net, subnets, port, host)
            if (agent_id, host, port_id) != (b.agent_id, b.host, b.port_id):
                if self._guard(txn):
                    changes = {"agent_id": agent_id, "host": host, "port_id": port_id}
                    txn.update(b, bump(b, changes))
        for slot in range(wanted):
            if slot in used_slots:
                continue
            agent = pick()
            if agent is None or not self._guard(txn):
                break
            self._depends_alive(txn, agent.id)
            port = self._new_dhcp_port(txn, net, subnets, agent.host)
            txn.create(port)
            now = time.time()
            txn.create(
                DhcpBinding(
                    id=f"{net_id}.{slot}",
                    project_id="",
                    network_id=net_id,
                    slot=slot,
                    agent_id=agent.id,
                    host=agent.host,
                    port_id=port.id,
                    created_at=now,
                    updated_at=now,
                    revision_number=1,
                )
            )
            log.info("DHCP of network %s scheduled to %s", net_id, agent.host)

    def _new_dhcp_port(self, txn: Txn, net: Network, subnets: list[Subnet], host: str) -> Port:
        mac = self.ports._mac(txn, net, "")
        all_subnets = self.cache.related(Subnet, "net_subnets", net.id)
        ips = self.ports._requested_ips(
            txn, net, all_subnets, [(s.id, "") for s in subnets], DHCP_OWNER, mac, []
        )
        for s in subnets:
            txn.depends_on(s)
        txn.depends_on(net)
        now = time.time()
        return Port(
            id=str(uuid.uuid4()),
            project_id=net.project_id,
            revision_number=1,
            created_at=now,
            updated_at=now,
            network_id=net.id,
            mac_address=mac,
            fixed_ips=ips,
            device_id=dhcp_device_id(host, net.id),
            device_owner=DHCP_OWNER,
            security_groups=[],
            port_security_enabled=False,
            binding_host_id=host,
            **port_fields(self.cache, net, host),
        )

    def _update_dhcp_port(
        self, txn: Txn, net: Network, subnets: list[Subnet], port: Port, host: str
    ) -> None:
        have = {s for s, _ in port.fixed_ips}
        missing = [s for s in subnets if s.id not in have]
        extra: dict[str, Any] = {"device_id": dhcp_device_id(host, net.id)}
        if missing and self._guard(txn):
            all_subnets = self.cache.related(Subnet, "net_subnets", net.id)
            requested = list(port.fixed_ips) + [(s.id, "") for s in missing]
            ips = self.ports._requested_ips(
                txn, net, all_subnets, requested, DHCP_OWNER, port.mac_address, port.fixed_ips
            )
            for s in missing:
                txn.depends_on(s)
            extra["fixed_ips"] = ips
        self._bind_port(txn, port, host, **extra)
