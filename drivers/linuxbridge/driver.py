"""The Linux bridge mechanism driver: one bridge per network, VXLAN with l2population
FDB entries for overlays, a physical NIC (flat) or its VLAN sub-interface (vlan) for
provider networks; ports are veth/tap devices enslaved to their network's bridge."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from drivers.base import ApplyError, Change, DriverBase, MechanismDriver, Plan, apply_in_order
from drivers.linuxbridge import planner
from drivers.linuxbridge.actual import ActualState, read_actual_state, read_named_state
from drivers.linuxbridge.changes import HostHandle, LinuxBridgeChange, WirePort, wire_ports
from drivers.linuxbridge.config import VXLAN_DEFAULT_PORT, LinuxBridgeConfig
from drivers.model import HostState, PortStatus
from drivers.netlink import PROBE_BOGUS_IFINDEX, RtnlDumper, probe_link_kind

log = logging.getLogger(__name__)


class LinuxBridgeDriver(DriverBase[ActualState]):
    name = "linuxbridge"
    vif_type = "bridge"

    def __init__(
        self,
        *,
        netns: str | None = None,
        physical_interface_mappings: Mapping[str, str] | None = None,
        tunnel_ip: str | None = None,
        vxlan_port: int = VXLAN_DEFAULT_PORT,
    ) -> None:
        super().__init__()
        self.config = LinuxBridgeConfig(
            netns=netns,
            physical_interface_mappings=dict(physical_interface_mappings or {}),
            tunnel_ip=tunnel_ip,
            vxlan_port=vxlan_port,
        )
        # Read-backs (2+ per sync) decode only what ActualState needs, off a raw socket.
        self._dumper: RtnlDumper | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the netlink socket of the managed namespace and probe the kernel."""
        self._open_ipr(self.config.netns)
        if self._dumper is None:
            self._dumper = RtnlDumper(self.config.netns)
        await self._probe()

    async def close(self) -> None:
        if self._dumper is not None:
            self._dumper.close()
            self._dumper = None
        self._close_ipr()

    async def _probe(self) -> None:
        ipr = self._require_ipr()
        cfg = self.config
        supported = {"local"}
        unsupported: dict[str, str] = {
            "gre": "the Linux bridge driver has no GRE support (and this kernel no GRE)"
        }
        has_vlan = await probe_link_kind(ipr, "vlan", link=PROBE_BOGUS_IFINDEX, vlan_id=1)
        has_vxlan = await probe_link_kind(
            ipr, "vxlan", vxlan_id=1, vxlan_link=PROBE_BOGUS_IFINDEX, vxlan_port=cfg.vxlan_port
        )
        if cfg.physical_interface_mappings:
            supported.add("flat")
        else:
            unsupported["flat"] = "no physical_interface_mappings"
        if not has_vlan:
            unsupported["vlan"] = "the kernel cannot create vlan links (no 8021q)"
        elif not cfg.physical_interface_mappings:
            unsupported["vlan"] = "no physical_interface_mappings"
        else:
            supported.add("vlan")
        if not has_vxlan:
            unsupported["vxlan"] = "the kernel cannot create vxlan links"
        elif cfg.tunnel_ip is None:
            unsupported["vxlan"] = "no tunnel_ip configured"
        else:
            supported.add("vxlan")
        self._supported = frozenset(supported)
        self._unsupported = unsupported
        log.info(
            "linuxbridge in netns %s: supports %s; not %s",
            cfg.netns or "(current)",
            sorted(supported),
            unsupported,
        )

    # -- the converge loop ---------------------------------------------------------------

    async def read_actual(self) -> ActualState:
        return await read_actual_state(self._require_ipr(), self.config.netns, self._dumper)

    def diff(self, desired: HostState, actual: ActualState) -> Plan:
        return planner.diff(desired, actual, self.config, self.supported_network_types())

    async def apply(self, plan: Plan) -> None:
        """Apply every change in order; failures are collected and raised together.
        The port wirings of a plan (contiguous: after bridges and uplinks, before stale
        removals) go as one batch (changes.wire_ports)."""
        assert self._dumper is not None, "call start() first"
        host = HostHandle(self._require_ipr(), self.config.netns, self._dumper)
        changes = list(plan)
        ports = [c for c in changes if isinstance(c, WirePort)]
        first = changes.index(ports[0]) if ports else 0
        if len(ports) < 2 or changes[first : first + len(ports)] != ports:
            await apply_in_order(plan, host, LinuxBridgeChange, "a Linux bridge", log)
            return
        failures: list[tuple[Change, BaseException]] = []

        async def in_order(part: list[Change]) -> None:
            try:
                await apply_in_order(
                    Plan(tuple(part)), host, LinuxBridgeChange, "a Linux bridge", log
                )
            except ApplyError as exc:
                failures.extend(exc.failures)

        await in_order(changes[:first])
        for change, exc in await wire_ports(host, ports):
            log.warning("change failed: %s: %r", change, exc)
            failures.append((change, exc))
        await in_order(changes[first + len(ports) :])
        if failures:
            raise ApplyError(failures)

    async def sync_ports(
        self, desired: HostState, port_ids: Collection[str]
    ) -> list[PortStatus] | None:
        """Wire just these ports when their bridges and uplinks are in place: read back
        their devices, the bridges and the uplinks by name (not the whole namespace),
        and apply only port changes. Anything else (a port gone, a network to build,
        an uplink or FDB to fix) is left to a full sync: None."""
        if self._dumper is None or not all(p in desired.ports for p in port_ids):
            return None
        ports = {p: desired.ports[p] for p in port_ids}
        nets = {spec.network_id for spec in ports.values()}
        if not nets <= desired.networks.keys():
            return None
        scoped = HostState(networks={n: desired.networks[n] for n in nets}, ports=ports)
        names = planner.device_names(scoped, self.config)
        async with self._sync_lock:
            actual = await read_named_state(self._dumper, names)
            plan = self.diff(scoped, actual)
            if any(not isinstance(c, WirePort) for c in plan):
                return None
            if plan:
                log.debug("applying %d port change(s): %s", len(plan), plan.describe())
                try:
                    await self.apply(plan)
                except ApplyError as exc:
                    exc.statuses = self.statuses(
                        scoped, await read_named_state(self._dumper, names)
                    )
                    raise
                actual = await read_named_state(self._dumper, names)
            return self.statuses(scoped, actual)

    def statuses(self, desired: HostState, actual: ActualState) -> list[PortStatus]:
        return planner.statuses(desired, actual, self.config, self.supported_network_types())


if TYPE_CHECKING:
    _implements: type[MechanismDriver[ActualState]] = LinuxBridgeDriver
