"""The Open vSwitch mechanism driver (Neutron's ML2 openvswitch agent, re-implemented
over ovsdbapp and ovs-ofctl, for the userspace/netdev datapath).

Bridge layout: Neutron's, deliberately
---------------------------------------
- ``br-int`` (integration bridge, fail_mode secure, action NORMAL): every port device
  is an access port tagged with its network's *local* VLAN (allocated per host, kept
  in Port.other_config like Neutron so it survives a restart); admin-down ports get
  the dead VLAN 4095 plus a drop flow on their in_port. Each port that is up also gets
  a delivery flow: its MAC arriving from br-tun / a physical bridge goes straight to
  it, so a port that moved here is reachable at once even though NORMAL still has its
  MAC learned behind the tunnel (it would be, with ~1 s of loss, once it speaks).
- ``br-tun`` (tunnel bridge, flows only): patched to br-int; one tunnel port per
  (type, remote VTEP) with ``options:key=flow`` ("vxlan-c0000202", "gre-c0000202").
  Table 1 maps local VLAN -> VNI/GRE key and floods to the network's remote VTEPs, with
  l2population unicast flows (dl_dst -> the VTEP holding that MAC); tables 3 (VXLAN)
  and 4 (GRE) map key -> local VLAN back into br-int. No learning: remote MACs come
  from l2pop, unknown unicast is flooded to the network's VTEPs.
- physical bridges (``bridge_mappings``, the operator's, holding the NIC): patched to
  br-int (``int-<br>``/``phy-<br>``). br-int translates provider VLAN (or untagged,
  flat) -> local VLAN on the way in, the physical bridge local -> provider VLAN (or
  strips it) on the way out; anything untranslated from the patch is dropped. Only
  flows with Baryon's cookie are ever touched there; the bridge keeps its own NORMAL.

Why not a simpler single bridge with tunnel ports on br-int: a tunnel port has to be
a trunk (it carries several networks), so NORMAL would emit frames *tagged* with the
host-local VLAN into the tunnel, and the VNI could only be chosen per source port.
With a separate br-int, all of L2 (learning, flooding, isolation by tag, admin state)
stays in OVS's NORMAL action, and only the edges carry flows, each a small pure
function of one network. It also matches what Neutron operators know (same names,
same other_config keys) and what the mixed Linux bridge/OVS test needs (untagged VXLAN
on UDP 4789 with flow-based VNI).

Hybrid plug (``hybrid_plug=True``, for the nftables firewall): a port with port
security gets Neutron's hybrid plug, tap -> Linux bridge ``qbr<port[:11]>`` -> veth
``qvb<port[:11]>``/``qvo<port[:11]>`` -> br-int, and qvo (not the tap) is the access
port carrying the tag, iface-id and attached-mac. The per-port bridge is where
drivers.firewall filters (br_netfilter); ``port_bridges(desired)`` hands it the qbr of
each such port. IPv6 is off on qbr/qvb/qvo, TX checksum offload off on qvb (it sends
into the userspace datapath). The devices carry the ifalias ``baryon-hybrid:<port>``,
are read back from netlink like everything else, created before the OVSDB transaction
and deleted after it (a gone port's only with remove_stale). A port is ACTIVE only
when tap and qvb sit in an up qbr and qvo is applied in br-int. Ports without port
security keep the direct tap plug; turning port security on or off re-plugs the port
(a converging change, not a stale removal).

Flows are grouped by cookie (one per network, tunnel port and port, and a base
group per bridge), read back with ``dump-flows`` and replaced group by group in
one atomic ``ovs-ofctl --bundle`` per bridge, so a converged host yields an empty plan
and a restart with a partial view (remove_stale=False) keeps every group it does not
know about. A network's flows are one group: a VTEP that leaves a network that is
still wanted here stops being flooded to at once; only whole tunnel ports, networks
and ports no longer wanted here are stale removals.

Host prerequisite (an operator's job; tests/support/ovs.py add_physical_bridge does
it for tests): the tunnel IP lives on the internal port of an OVS netdev bridge that
holds the underlay NIC, since userspace tunnels only route out through OVS; start()
checks it and reports vxlan/gre unsupported (with the reason) otherwise.

Userspace datapath behaviours worth knowing: the first packet towards a remote VTEP
whose MAC OVS has not resolved yet is dropped (OVS sends its own ARP), and TCP from a
veth needs TX checksum offload off on the sending side (also on a Linux bridge peer's
underlay veth: OVS drops tunnel packets whose outer UDP checksum was left to the NIC).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from drivers.base import ApplyError, Change, DriverBase, MechanismDriver, Plan
from drivers.model import HostState, PortStatus
from drivers.netlink import dump_links
from drivers.ovs import planner
from drivers.ovs.actual import ActualState, OvsdbSnapshot
from drivers.ovs.changes import (
    DeleteDevice,
    DeleteFlows,
    DeleteHybridPlug,
    EnsureHybridPlug,
    OvsdbChange,
    SetFlows,
)
from drivers.ovs.config import VXLAN_DEFAULT_PORT, OvsConfig
from drivers.ovs.flows import Flow, OfctlError, apply_bundle, dump_flows, render_bundle
from drivers.ovs.ovsdb import Ovsdb

log = logging.getLogger(__name__)


class OvsDriver(DriverBase[ActualState]):
    name = "openvswitch"
    vif_type = "ovs"

    def __init__(
        self,
        *,
        netns: str | None = None,
        ovsdb: str,
        bridge_mappings: Mapping[str, str] | None = None,
        tunnel_ip: str | None = None,
        datapath_type: str = "netdev",
        integration_bridge: str = "br-int",
        tunnel_bridge: str = "br-tun",
        vxlan_port: int = VXLAN_DEFAULT_PORT,
        ovs_rundir: str | None = None,
        timeout: float = 10.0,
        hybrid_plug: bool = False,
    ) -> None:
        super().__init__()
        self.config = OvsConfig(
            ovsdb=ovsdb,
            netns=netns,
            bridge_mappings=dict(bridge_mappings or {}),
            tunnel_ip=tunnel_ip,
            datapath_type=datapath_type,
            integration_bridge=integration_bridge,
            tunnel_bridge=tunnel_bridge,
            vxlan_port=vxlan_port,
            ovs_rundir=ovs_rundir,
            timeout=timeout,
            hybrid_plug=hybrid_plug,
        )
        self._ovsdb = Ovsdb(ovsdb, timeout)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to OVSDB (initial dump of the replica) and probe what the host has."""
        self._open_ipr(self.config.netns)
        # Blocking (ovsdbapp connects and waits for the initial dump): in a thread.
        await asyncio.to_thread(self._ovsdb.connect)
        await self._probe()

    async def close(self) -> None:
        await asyncio.to_thread(self._ovsdb.disconnect)
        self._close_ipr()

    async def _probe(self) -> None:
        cfg = self.config
        snap = await self._snapshot()
        supported = {"local"}
        unsupported: dict[str, str] = {}
        if cfg.datapath_type not in snap.datapath_types:
            unsupported["local"] = f"ovs-vswitchd has no {cfg.datapath_type} datapath"
            supported.discard("local")
        if cfg.bridge_mappings:
            supported |= {"flat", "vlan"}
        else:
            unsupported["flat"] = unsupported["vlan"] = "no bridge_mappings"
        tunnel_problem = await self._tunnel_ip_problem(snap)
        for kind in ("vxlan", "gre"):
            if kind not in snap.iface_types:
                unsupported[kind] = f"ovs-vswitchd has no {kind} interface type"
            elif tunnel_problem is not None:
                unsupported[kind] = tunnel_problem
            else:
                supported.add(kind)
        if "local" not in supported:
            supported.clear()
        self._supported = frozenset(supported)
        self._unsupported = unsupported
        log.info(
            "openvswitch in netns %s (%s): supports %s; not %s",
            cfg.netns or "(current)",
            cfg.ovsdb,
            sorted(supported),
            unsupported,
        )

    async def _tunnel_ip_problem(self, snap: OvsdbSnapshot) -> str | None:
        """Why tunnels cannot work here, or None: the tunnel IP must be configured and
        sit on the internal port of an OVS bridge (userspace tunnels route via OVS)."""
        tunnel_ip = self.config.tunnel_ip
        if tunnel_ip is None:
            return "no tunnel_ip configured"
        holder: str | None = None
        async for msg in await self._require_ipr().addr("dump"):
            if msg.get("address") == tunnel_ip:
                index = msg["index"]
                links = await self._require_ipr().link("get", index=index)
                for link in links:
                    holder = link.get("ifname")
        if holder is None:
            return f"tunnel_ip {tunnel_ip} is not configured in the node namespace"
        port = snap.ports.get(holder)
        if port is None or port.iface_type != "internal" or port.name != port.bridge:
            return (
                f"tunnel_ip {tunnel_ip} is on {holder}, not on an OVS bridge's internal port"
                " (userspace tunnels only route out through an OVS bridge)"
            )
        return None

    # -- the converge loop ---------------------------------------------------------------

    async def _snapshot(self) -> OvsdbSnapshot:
        # Blocking: takes the ovsdbapp connection lock, held while its thread runs a
        # transaction. In a worker thread on purpose.
        return await asyncio.to_thread(self._ovsdb.snapshot)

    async def read_actual(self) -> ActualState:
        cfg = self.config
        bridges = [cfg.integration_bridge, *sorted(set(cfg.bridge_mappings.values()))]
        if cfg.tunnel_ip is not None:
            bridges.append(cfg.tunnel_bridge)
        # OVSDB, netlink and one dump-flows per bridge, all at once (a dump of a bridge
        # that does not exist yet fails and is dropped).
        snap, links, dumps = await asyncio.gather(
            self._snapshot(),
            dump_links(self._require_ipr()),
            asyncio.gather(*(self._dump(b) for b in bridges)),
        )
        flows = {b: d for b, d in zip(bridges, dumps, strict=True) if b in snap.bridges}
        return ActualState(
            bridges=snap.bridges,
            ports=snap.ports,
            flows=flows,
            links={link.name: link for link in links},
        )

    async def _dump(self, bridge: str) -> dict[int, frozenset[Flow]]:
        try:
            return await dump_flows(self.config.mgmt_target(bridge))
        except OfctlError as exc:
            # No such bridge (yet), or not opened by ovs-vswitchd: no flows of ours.
            log.debug("dump-flows %s: %s", bridge, exc)
            return {}

    def diff(self, desired: HostState, actual: ActualState) -> Plan:
        return planner.diff(desired, actual, self.config, self.supported_network_types())

    def port_bridges(self, desired: HostState) -> dict[str, str]:
        """port id -> its hybrid-plug bridge (qbr<port>), for NftFirewall.sync's
        ``port_bridges``: the ports with port security when hybrid_plug is on."""
        return planner.port_bridges(desired, self.config)

    async def apply(self, plan: Plan) -> None:
        """Hybrid-plug devices first (OVS must find qvo), OVSDB changes in one
        transaction, then each bridge's flow changes in one bundle, then device
        deletions; failures are collected and raised together."""
        ovsdb_ops: list[OvsdbChange] = []
        flow_changes: dict[str, list[SetFlows | DeleteFlows]] = {}
        devices: list[DeleteDevice | DeleteHybridPlug] = []
        hybrid: list[EnsureHybridPlug] = []
        for change in plan:
            if isinstance(change, SetFlows | DeleteFlows):
                flow_changes.setdefault(change.bridge, []).append(change)
            elif isinstance(change, DeleteDevice | DeleteHybridPlug):
                devices.append(change)
            elif isinstance(change, EnsureHybridPlug):
                hybrid.append(change)
            elif isinstance(change, OvsdbChange):
                ovsdb_ops.append(change)
            else:
                raise TypeError(f"not an Open vSwitch change: {change!r}")
        failures: list[tuple[Change, BaseException]] = []
        for ensure in hybrid:
            try:
                await ensure.apply(self._require_ipr(), self.config.netns)
            except Exception as exc:
                log.warning("%s failed: %r", ensure, exc)
                failures.append((ensure, exc))
        if ovsdb_ops:
            try:
                # Blocking: commits and waits until ovs-vswitchd applied it. On purpose
                # in a worker thread (asyncio.to_thread) so the loop keeps running.
                await asyncio.to_thread(self._ovsdb.transact, ovsdb_ops)
            except Exception as exc:
                log.warning("OVSDB transaction of %d change(s) failed: %r", len(ovsdb_ops), exc)
                failures.extend((c, exc) for c in ovsdb_ops)
        results = await asyncio.gather(
            *(self._apply_flows(b, cs) for b, cs in flow_changes.items()),
            return_exceptions=True,
        )
        for changes, result in zip(flow_changes.values(), results, strict=True):
            if isinstance(result, BaseException):
                log.warning("flow changes failed: %r", result)
                failures.extend((c, result) for c in changes)
        for device in devices:
            try:
                await device.apply(self._require_ipr())
            except Exception as exc:
                failures.append((device, exc))
        if failures:
            raise ApplyError(failures)

    async def _apply_flows(self, bridge: str, changes: Sequence[SetFlows | DeleteFlows]) -> None:
        replace = {c.cookie: c.flows for c in changes if isinstance(c, SetFlows)}
        delete = [c.cookie for c in changes if isinstance(c, DeleteFlows)]
        await apply_bundle(self.config.mgmt_target(bridge), render_bundle(replace, delete))

    def statuses(self, desired: HostState, actual: ActualState) -> list[PortStatus]:
        return planner.statuses(desired, actual, self.config, self.supported_network_types())


if TYPE_CHECKING:
    _implements: type[MechanismDriver[ActualState]] = OvsDriver
