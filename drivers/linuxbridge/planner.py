"""Pure functions of (desired, actual): the plan that converges a host, and port statuses.

Plan order: bridges, then what joins them to the outside (VXLAN device and its FDB,
VLAN sub-interface or physical NIC), then ports; stale removals (flagged
``removes_stale``) come last: unwired ports, then VXLAN/VLAN devices, then bridges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from drivers.base import Change, Plan
from drivers.linuxbridge.actual import ActualState
from drivers.linuxbridge.changes import (
    AddFloodEntry,
    AttachUplink,
    DeleteFdbEntry,
    DeleteLink,
    EnsureBridge,
    EnsureVlan,
    EnsureVxlan,
    SetMacEntry,
    UnwirePort,
    WirePort,
)
from drivers.linuxbridge.config import LinuxBridgeConfig
from drivers.linuxbridge.naming import (
    BRIDGE_PREFIX,
    TAP_PREFIX,
    VXLAN_PREFIX,
    bridge_name,
    vlan_name,
    vxlan_name,
)
from drivers.model import (
    HostState,
    NetworkSpec,
    PortStatus,
    is_owned_device,
    remote_vteps_of,
    unicast_targets,
)
from drivers.netlink import ZERO_MAC, FdbEntry, Link, VxlanAttrs

MAX_VNI = 2**24 - 1


@dataclass(frozen=True, slots=True)
class Wiring:
    """How one network with ports on this host is laid out here."""

    network: NetworkSpec
    bridge: str
    uplink: str | None  # VXLAN device, VLAN sub-interface or physical NIC in the bridge


@dataclass(frozen=True, slots=True)
class Layout:
    wirings: Mapping[str, Wiring]  # network id -> wiring
    problems: Mapping[str, str]  # network id -> why its ports cannot be wired


def _uplink_for(
    net: NetworkSpec, actual: ActualState, config: LinuxBridgeConfig, supported: frozenset[str]
) -> tuple[str | None, str | None]:
    """(uplink device or None, problem or None) for one network."""
    kind = net.network_type
    if kind not in supported:
        return None, f"network type {kind} is not supported on this host"
    if kind == "local":
        return None, None
    if kind in ("flat", "vlan"):
        physnet = net.physical_network
        if not physnet:
            return None, f"{kind} network without a physical network"
        nic = config.physical_interface_mappings.get(physnet)
        if nic is None:
            return None, f"physical network {physnet!r} is not mapped on this host"
        if actual.link(nic) is None:
            return None, f"interface {nic} of physical network {physnet!r} not found"
        if kind == "flat":
            return nic, None
        vid = net.segmentation_id
        if vid is None or not 1 <= vid <= 4094:
            return None, f"invalid VLAN id {vid}"
        return vlan_name(nic, vid), None
    if kind == "vxlan":
        vni = net.segmentation_id
        if vni is None or not 1 <= vni <= MAX_VNI:
            return None, f"invalid VXLAN id {vni}"
        return vxlan_name(vni), None
    return None, f"network type {kind} is not supported by the Linux bridge driver"


def device_names(desired: HostState, config: LinuxBridgeConfig) -> set[str]:
    """Every device the layout and wiring of `desired` may look at: the ports' devices,
    their networks' bridges and possible uplinks, and the mapped physical NICs."""
    names = {p.device_name for p in desired.ports.values()}
    names.update(config.physical_interface_mappings.values())
    for net in desired.networks.values():
        names.add(bridge_name(net.id))
        vid = net.segmentation_id
        if net.network_type == "vxlan" and vid is not None and 1 <= vid <= MAX_VNI:
            names.add(vxlan_name(vid))
        elif net.network_type == "vlan" and vid is not None and 1 <= vid <= 4094:
            nic = config.physical_interface_mappings.get(net.physical_network or "")
            if nic is not None:
                names.add(vlan_name(nic, vid))
    return names


def layout(
    desired: HostState,
    actual: ActualState,
    config: LinuxBridgeConfig,
    supported: frozenset[str],
) -> Layout:
    """Wire the networks that have ports here; explain the ones that cannot be."""
    wirings: dict[str, Wiring] = {}
    problems: dict[str, str] = {}
    claimed: dict[str, str] = {}  # device name -> network id using it
    for net_id in sorted({p.network_id for p in desired.ports.values()}):
        net = desired.networks.get(net_id)
        if net is None:
            problems[net_id] = f"network {net_id} is not in the desired state"
            continue
        uplink, problem = _uplink_for(net, actual, config, supported)
        bridge = bridge_name(net.id)
        if problem is None:
            for device in (bridge, uplink):
                if device is not None and device in claimed:
                    problem = f"{device} is already used by network {claimed[device]}"
                    break
        if problem is not None:
            problems[net_id] = problem
            continue
        claimed[bridge] = net_id
        if uplink is not None:
            claimed[uplink] = net_id
        wirings[net_id] = Wiring(net, bridge, uplink)
    return Layout(wirings, problems)


def _needs_ensure(actual: ActualState, link: Link | None, bridge: str | None, mtu: int) -> bool:
    if link is None:
        return True
    if bridge is not None and actual.master_of(link.name) != bridge:
        return True
    return link.mtu != mtu or not link.up or not actual.ipv6_off.get(link.name, False)


def _vxlan_changes(
    wiring: Wiring, desired: HostState, actual: ActualState, config: LinuxBridgeConfig
) -> list[Change]:
    assert wiring.uplink is not None and config.tunnel_ip is not None
    net = wiring.network
    name = wiring.uplink
    vni = net.segmentation_id
    assert vni is not None
    changes: list[Change] = []
    link = actual.link(name)
    want = VxlanAttrs(vni=vni, local=config.tunnel_ip, port=config.vxlan_port, learning=False)
    present: frozenset[FdbEntry] = frozenset()
    if link is not None and (link.kind != "vxlan" or link.vxlan != want):
        changes.append(DeleteLink(name, stale=False))  # VNI/local/port cannot be changed
        link = None
    elif link is not None:
        present = actual.fdb.get(name, frozenset())
    if _needs_ensure(actual, link, wiring.bridge, net.mtu):
        changes.append(
            EnsureVxlan(name, vni, config.tunnel_ip, config.vxlan_port, net.mtu, wiring.bridge)
        )
    vteps = remote_vteps_of(desired, net.id, config.tunnel_ip)
    flood = {FdbEntry(ZERO_MAC, ip) for ip in vteps}
    unicast = {FdbEntry(mac, ip) for mac, ip in unicast_targets(vteps).items()}
    changes.extend(AddFloodEntry(name, e.dst) for e in sorted(flood - present))
    changes.extend(SetMacEntry(name, e.mac, e.dst) for e in sorted(unicast - present))
    changes.extend(DeleteFdbEntry(name, e.mac, e.dst) for e in sorted(present - flood - unicast))
    return changes


def _vlan_changes(wiring: Wiring, actual: ActualState, config: LinuxBridgeConfig) -> list[Change]:
    assert wiring.uplink is not None
    net = wiring.network
    nic = config.physical_interface_mappings[net.physical_network or ""]
    vid = net.segmentation_id
    assert vid is not None
    changes: list[Change] = []
    link = actual.link(wiring.uplink)
    if link is not None:
        parent = actual.link(nic)
        same_parent = parent is not None and link.parent == parent.index
        if link.kind != "vlan" or link.vlan_id != vid or not same_parent:
            changes.append(DeleteLink(wiring.uplink, stale=False))
            link = None
    if _needs_ensure(actual, link, wiring.bridge, net.mtu):
        changes.append(EnsureVlan(wiring.uplink, nic, vid, net.mtu, wiring.bridge))
    return changes


def _stale_changes(desired: HostState, actual: ActualState, lay: Layout) -> list[Change]:
    port_devices = {p.device_name for p in desired.ports.values()}
    bridges = {w.bridge for w in lay.wirings.values()}
    uplinks = {w.uplink for w in lay.wirings.values() if w.uplink is not None}
    unwire: list[Change] = []
    devices: list[Change] = []
    stale_bridges: list[Change] = []
    for link in sorted(actual.links.values(), key=lambda lk: lk.name):
        master = actual.master_of(link.name)
        in_managed_bridge = master is not None and actual.is_managed_bridge(master)
        if link.name.startswith(TAP_PREFIX) and in_managed_bridge:
            if link.name not in port_devices:
                unwire.append(UnwirePort(link.name, delete=is_owned_device(link.name, link.alias)))
        elif link.kind == "vxlan" and link.name.startswith(VXLAN_PREFIX):
            if link.name not in uplinks:
                devices.append(DeleteLink(link.name, stale=True))
        elif link.kind == "vlan" and in_managed_bridge:
            if link.name not in uplinks:
                devices.append(DeleteLink(link.name, stale=True))
        elif link.kind == "bridge" and link.name.startswith(BRIDGE_PREFIX):
            if link.name not in bridges:
                stale_bridges.append(DeleteLink(link.name, stale=True))
    return unwire + devices + stale_bridges


def diff(
    desired: HostState,
    actual: ActualState,
    config: LinuxBridgeConfig,
    supported: frozenset[str],
) -> Plan:
    lay = layout(desired, actual, config, supported)
    wirings = [lay.wirings[k] for k in sorted(lay.wirings)]
    changes: list[Change] = []
    for w in wirings:
        bridge = actual.link(w.bridge)
        if bridge is not None and bridge.kind != "bridge":
            changes.append(DeleteLink(w.bridge, stale=False))
            bridge = None
        if _needs_ensure(actual, bridge, None, w.network.mtu):
            changes.append(EnsureBridge(w.bridge, w.network.mtu))
    for w in wirings:
        kind = w.network.network_type
        if kind == "vxlan":
            changes.extend(_vxlan_changes(w, desired, actual, config))
        elif kind == "vlan":
            changes.extend(_vlan_changes(w, actual, config))
        elif kind == "flat" and w.uplink is not None:
            nic = actual.link(w.uplink)
            if nic is None or actual.master_of(w.uplink) != w.bridge or not nic.up:
                changes.append(AttachUplink(w.uplink, w.bridge))
    for port in sorted(desired.ports.values(), key=lambda p: p.id):
        wiring = lay.wirings.get(port.network_id)
        device = actual.link(port.device_name)
        if wiring is None or device is None:
            continue
        mtu = wiring.network.mtu
        if (
            actual.master_of(device.name) != wiring.bridge
            or device.up != port.admin_state_up
            or device.mtu != mtu
            or not actual.ipv6_off.get(device.name, False)
        ):
            changes.append(WirePort(device.name, wiring.bridge, mtu, port.admin_state_up))
    changes.extend(_stale_changes(desired, actual, lay))
    return Plan(tuple(changes))


def statuses(
    desired: HostState,
    actual: ActualState,
    config: LinuxBridgeConfig,
    supported: frozenset[str],
) -> list[PortStatus]:
    lay = layout(desired, actual, config, supported)
    out: list[PortStatus] = []
    for port in sorted(desired.ports.values(), key=lambda p: p.id):
        problem = lay.problems.get(port.network_id)
        if problem is not None:
            out.append(PortStatus(port.id, "ERROR", problem))
            continue
        wiring = lay.wirings[port.network_id]
        out.append(_port_status(port.id, port.device_name, port.admin_state_up, wiring, actual))
    return out


def _port_status(
    port_id: str, device_name: str, admin_up: bool, wiring: Wiring, actual: ActualState
) -> PortStatus:
    device = actual.link(device_name)
    if device is None:
        return PortStatus(port_id, "DOWN", f"device {device_name} not found")
    if actual.master_of(device_name) != wiring.bridge:
        return PortStatus(port_id, "DOWN", f"{device_name} is not in {wiring.bridge}")
    if not admin_up:
        return PortStatus(port_id, "DOWN", "admin state down")
    if not device.up:
        return PortStatus(port_id, "DOWN", f"{device_name} is down")
    bridge = actual.link(wiring.bridge)
    if bridge is None or not bridge.up:
        return PortStatus(port_id, "DOWN", f"bridge {wiring.bridge} is down")
    if wiring.uplink is not None:
        uplink = actual.link(wiring.uplink)
        if uplink is None or not uplink.up or actual.master_of(wiring.uplink) != wiring.bridge:
            return PortStatus(port_id, "DOWN", f"{wiring.uplink} is not up in {wiring.bridge}")
    return PortStatus(port_id, "ACTIVE")
