"""The DHCP host service: per network, a namespace with the network's DHCP port and a
supervised dnsmasq serving static leases only (Neutron's DHCP agent, re-implemented).

``sync(networks, remove_stale=...)`` converges (read back, pure diff, idempotent
apply). ``start(supervise_interval=...)`` also runs a supervision loop that restarts a
dnsmasq that died, between syncs; every sync checks the processes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from drivers import nsdev
from drivers.base import Plan, apply_in_order, converge
from drivers.dhcp import config, planner, process
from drivers.dhcp.actual import DhcpActual, DhcpHostActual
from drivers.dhcp.changes import DhcpChange
from drivers.dhcp.model import DhcpNetworkSpec
from drivers.dhcp.naming import TAP_PREFIX, dhcp_device, namespace_name, network_id_of
from drivers.model import specs_by_id
from drivers.netlink import dump_links, netns_exists, open_iproute

log = logging.getLogger(__name__)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


class DhcpDriver:
    """netns_prefix: this agent's part of every namespace name; node_netns: where the
    networks' bridges live (None: current); state_dir: per-network files (must be
    world-traversable: dnsmasq rereads them as user nobody)."""

    name = "dhcp"

    def __init__(self, netns_prefix: str, node_netns: str | None, state_dir: str) -> None:
        self.netns_prefix = netns_prefix
        self.node_netns = node_netns
        self.state_dir = os.path.abspath(state_dir)
        self._node_ipr: Any = None
        self._iprs = nsdev.NamespaceSockets()
        self._lock = asyncio.Lock()
        self._desired: dict[str, DhcpNetworkSpec] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0  # dnsmasq restarts made by the supervision loop

    # -- resources ----------------------------------------------------------------------

    async def start(self, *, supervise_interval: float | None = None) -> None:
        os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
        if self._node_ipr is None:
            self._node_ipr = open_iproute(self.node_netns)
        if supervise_interval is not None and self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(supervise_interval))

    async def close(self) -> None:
        """Release sockets; dnsmasq processes keep running (a restarted service adopts
        them by PID file)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for ns in list(self._iprs):
            await self.forget(ns)
        if self._node_ipr is not None:
            self._node_ipr.close()
            self._node_ipr = None

    @property
    def node_ipr_open(self) -> bool:
        return self._node_ipr is not None

    @property
    def node_ipr(self) -> Any:
        if self._node_ipr is None:
            raise RuntimeError("DhcpDriver: call start() first")
        return self._node_ipr

    async def ipr(self, ns: str) -> Any:
        return self._iprs.get(ns)

    async def forget(self, ns: str) -> None:
        self._iprs.close(ns)

    def namespace(self, network_id: str) -> str:
        return namespace_name(self.netns_prefix, network_id)

    def paths(self, network_id: str) -> config.Paths:
        return config.paths_for(self.state_dir, network_id)

    def pid(self, network_id: str) -> int | None:
        """The PID of the network's dnsmasq if it runs (by PID file, command line checked)."""
        paths = self.paths(network_id)
        pid = process.read_pid(paths.file(config.PIDFILE))
        if pid is None:
            return None
        argv = process.cmdline(pid)
        if argv is None or f"--pid-file={paths.file(config.PIDFILE)}" not in argv:
            return None
        return pid

    # -- converge -----------------------------------------------------------------------

    def _known_networks(self) -> set[str]:
        ids = set()
        for ns in nsdev.list_namespaces(self.netns_prefix):
            net_id = network_id_of(self.netns_prefix, ns)
            if net_id is not None:
                ids.add(net_id)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.state_dir):
                # Only directories this service made (a marker file naming the network).
                marker = _read_text(os.path.join(self.state_dir, name, config.MARKER))
                if marker is not None and marker.strip() == name:
                    ids.add(name)
        return ids

    def _read_state(self, net_id: str) -> dict[str, Any]:
        """The network's files and process (small local reads)."""
        paths = self.paths(net_id)
        pid = self.pid(net_id)
        return {
            "network_id": net_id,
            "namespace": self.namespace(net_id),
            "hosts": _read_text(paths.file(config.HOSTS)),
            "opts": _read_text(paths.file(config.OPTS)),
            "loaded": (_read_text(paths.file(config.LOADED)) or "").strip() or None,
            "pid": pid,
            "cmdline": process.cmdline(pid) if pid is not None else None,
            "has_state_dir": os.path.isdir(paths.directory),
        }

    async def _read_network(self, net_id: str) -> DhcpActual:
        ns = self.namespace(net_id)
        common = self._read_state(net_id)
        if not netns_exists(ns):
            return DhcpActual(**common)
        ipr = await self.ipr(ns)
        links = await dump_links(ipr)
        by_index = await nsdev.read_addresses(ipr)
        return DhcpActual(
            namespace_exists=True,
            links={lk.name: lk for lk in links},
            addresses={lk.name: by_index.get(lk.index, frozenset()) for lk in links},
            **common,
        )

    async def read_actual(self) -> DhcpHostActual:
        networks = {}
        for net_id in sorted(self._known_networks()):
            try:
                networks[net_id] = await self._read_network(net_id)
            except FileNotFoundError:
                continue
        links = await dump_links(self.node_ipr)
        return DhcpHostActual(
            networks=networks,
            taps=nsdev.read_taps(links, TAP_PREFIX),
            bridges=frozenset(lk.name for lk in links if lk.kind == "bridge"),
        )

    def diff(
        self,
        desired: Mapping[str, DhcpNetworkSpec] | Iterable[DhcpNetworkSpec],
        actual: DhcpHostActual,
    ) -> Plan:
        return planner.diff(self.netns_prefix, self.state_dir, _by_id(desired), actual)

    async def apply(self, plan: Plan) -> None:
        await apply_in_order(plan, self, DhcpChange, "a DHCP", log)

    async def sync(
        self,
        desired: Mapping[str, DhcpNetworkSpec] | Iterable[DhcpNetworkSpec],
        *,
        remove_stale: bool,
    ) -> Plan:
        """Converge; returns the plan applied (empty: nothing to do). The desired state
        is remembered for the supervision loop."""
        networks = _by_id(desired)
        async with self._lock:
            self._desired = networks
            return await converge(self, networks, remove_stale=remove_stale, logger=log)

    def dead_networks(self) -> list[str]:
        """Desired networks whose dnsmasq is not running with the desired command line."""
        out = []
        for net_id, spec in (self._desired or {}).items():
            if not spec.served_subnets:
                continue
            pid = self.pid(net_id)
            device = dhcp_device(spec.dhcp_port.port_id)
            want = config.dnsmasq_argv(spec, self.paths(net_id), device)
            if pid is None or process.cmdline(pid) != want:
                out.append(net_id)
        return out

    async def _supervise(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._desired is None or self._lock.locked() or not self.dead_networks():
                continue
            log.warning("dnsmasq not running for %s: restarting", self.dead_networks())
            try:
                await self.sync(self._desired, remove_stale=False)
                self.restarts += 1
            except Exception as exc:
                log.warning("supervision sync failed: %r", exc)

    async def stop_all(self) -> None:
        """Stop every dnsmasq this service runs (by PID) and remove its namespaces."""
        await self.sync({}, remove_stale=True)


def _by_id(
    desired: Mapping[str, DhcpNetworkSpec] | Iterable[DhcpNetworkSpec],
) -> dict[str, DhcpNetworkSpec]:
    return specs_by_id(desired, lambda spec: spec.network_id, "network")
