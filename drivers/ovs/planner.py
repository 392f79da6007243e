"""Pure functions of (desired, actual): the plan that converges a host, and port statuses.

Plan order: hybrid-plug devices (netlink, first: OVS must find qvo), bridges and patch
ports, tunnel ports, port wiring, stale port/tunnel removals (all OVSDB: one
transaction), then flow groups (one bundle per bridge), then deletion of hybrid-plug
devices no longer needed and of stale port devices Baryon created. Changes that
remove what the desired state does not mention are flagged ``removes_stale``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from drivers.base import Change, Plan
from drivers.model import (
    HostState,
    NetworkSpec,
    PortSpec,
    PortStatus,
    is_owned_device,
    remote_vteps_of,
    unicast_targets,
)
from drivers.ovs.actual import ActualState, OvsPort
from drivers.ovs.changes import (
    IFACE_KEYS,
    PORT_KEYS,
    DeleteDevice,
    DeleteFlows,
    DeleteHybridPlug,
    EnsureBridge,
    EnsureHybridPlug,
    EnsurePatchPort,
    EnsureTunnelPort,
    RemovePort,
    SetFlows,
    WirePort,
)
from drivers.ovs.config import OvsConfig
from drivers.ovs.flows import Flow, flow, vlan_vid
from drivers.ovs.naming import (
    DEAD_VLAN,
    PATCH_INT_TO_TUN,
    PATCH_TUN_TO_INT,
    TUNNEL_TYPES,
    cookie_for,
    hybrid_alias,
    hybrid_names,
    hybrid_port_of,
    int_patch_name,
    phys_patch_name,
    port_device_name,
    tunnel_port_name,
)

MAX_LOCAL_VLAN = 4094
MAX_KEY = {"vxlan": 2**24 - 1, "gre": 2**32 - 1}

# Tunnel bridge tables (Neutron has more; these are all this layout needs).
TUN_FROM_INT = 1  # frames from the integration bridge, by local VLAN -> tunnels
TUN_IN = {"vxlan": 3, "gre": 4}  # frames from tunnels, by key -> local VLAN

# Priorities.
P_NORMAL = 0
P_DROP_UNTRANSLATED = 2  # frames from a physical bridge with no network: dropped
P_TRANSLATE_IN = 3  # provider VLAN / untagged -> local VLAN (integration bridge)
P_TRANSLATE_OUT = 4  # local VLAN -> provider VLAN / untagged (physical bridge)
P_DELIVER = 5  # a local port's MAC from a tunnel / physical bridge: straight to it
P_DEAD_PORT = 10  # admin-down port: whatever it sends is dropped
P_DEAD_VLAN = 65535


@dataclass(frozen=True, slots=True)
class Wiring:
    """How one network with ports on this host is laid out here."""

    network: NetworkSpec
    tag: int  # local VLAN on the integration bridge
    physical_bridge: str | None = None  # flat/vlan
    tunnels: tuple[str, ...] = ()  # tunnel port names of its remote VTEPs


@dataclass(frozen=True, slots=True)
class FlowGroup:
    bridge: str
    key: str
    flows: frozenset[Flow]

    @property
    def cookie(self) -> int:
        return cookie_for(self.key)


@dataclass
class Layout:
    wirings: dict[str, Wiring] = field(default_factory=dict)  # network id -> wiring
    problems: dict[str, str] = field(default_factory=dict)  # network id -> why not
    physical_bridges: dict[str, str] = field(default_factory=dict)  # physnet -> bridge (exists)
    tunnels: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (type, ip)
    groups: list[FlowGroup] = field(default_factory=list)


# -- networks --------------------------------------------------------------------------


def _problem(
    net: NetworkSpec, config: OvsConfig, supported: frozenset[str], phys: Mapping[str, str]
) -> str | None:
    kind = net.network_type
    if kind not in supported:
        return f"network type {kind} is not supported on this host"
    seg = net.segmentation_id
    if kind in ("flat", "vlan"):
        physnet = net.physical_network
        if not physnet:
            return f"{kind} network without a physical network"
        bridge = config.bridge_mappings.get(physnet)
        if bridge is None:
            return f"physical network {physnet!r} is not mapped on this host"
        if physnet not in phys:
            return f"bridge {bridge} of physical network {physnet!r} not found"
        if kind == "vlan" and (seg is None or not 1 <= seg <= MAX_LOCAL_VLAN):
            return f"invalid VLAN id {seg}"
    elif kind in TUNNEL_TYPES:
        if seg is None or not 1 <= seg <= MAX_KEY[kind]:
            return f"invalid {kind} id {seg}"
    return None


def _segment(net: NetworkSpec) -> tuple[str, str | None, int | None] | None:
    """What two networks on one host must not share (None: nothing)."""
    if net.network_type == "local":
        return None
    if net.network_type == "flat":
        return ("flat", net.physical_network, None)
    if net.network_type == "vlan":
        return ("vlan", net.physical_network, net.segmentation_id)
    return (net.network_type, None, net.segmentation_id)


def recorded_tags(actual: ActualState, config: OvsConfig) -> dict[str, list[int]]:
    """network id -> local VLANs its ports on the integration bridge carry (Neutron keeps
    them in Port.other_config: net_uuid, tag)."""
    out: dict[str, list[int]] = {}
    for port in actual.ports_on(config.integration_bridge):
        net_id = port.other_config.get("net_uuid")
        raw = port.other_config.get("tag", "")
        if net_id and raw.isdigit() and 1 <= int(raw) <= MAX_LOCAL_VLAN:
            out.setdefault(net_id, []).append(int(raw))
    return out


def allocate_local_vlans(
    net_ids: Iterable[str], recorded: Mapping[str, list[int]]
) -> dict[str, int | None]:
    """A local VLAN per network: the one it already has (read back from the ports, so it
    survives a restart), else the lowest one nobody holds, stale networks included
    (None: all 4094 are taken)."""
    holder: dict[int, str] = {}
    kept: dict[str, int] = {}
    for net_id in sorted(recorded):
        for tag in sorted(set(recorded[net_id]), key=lambda t: (-recorded[net_id].count(t), t)):
            if tag not in holder:
                holder[tag] = net_id
                kept[net_id] = tag
                break
    out: dict[str, int | None] = {}
    free = (t for t in range(1, MAX_LOCAL_VLAN + 1) if t not in holder)
    for net_id in sorted(net_ids):
        held = kept.get(net_id)
        out[net_id] = held if held is not None else next(free, None)
    return out


def layout(
    desired: HostState, actual: ActualState, config: OvsConfig, supported: frozenset[str]
) -> Layout:
    lay = Layout()
    for physnet, bridge in sorted(config.bridge_mappings.items()):
        if bridge in actual.bridges:
            lay.physical_bridges[physnet] = bridge
    claimed: dict[tuple[str, str | None, int | None], str] = {}
    ok: list[NetworkSpec] = []
    for net_id in sorted({p.network_id for p in desired.ports.values()}):
        net = desired.networks.get(net_id)
        if net is None:
            lay.problems[net_id] = f"network {net_id} is not in the desired state"
            continue
        problem = _problem(net, config, supported, lay.physical_bridges)
        segment = _segment(net)
        if problem is None and segment is not None:
            if segment in claimed:
                problem = f"segment {segment} is already used by network {claimed[segment]}"
            else:
                claimed[segment] = net_id
        if problem is not None:
            lay.problems[net_id] = problem
            continue
        ok.append(net)
    tags = allocate_local_vlans((n.id for n in ok), recorded_tags(actual, config))
    for net in ok:
        tag = tags[net.id]
        if tag is None:
            lay.problems[net.id] = "no free local VLAN on this host"
            continue
        physbr = lay.physical_bridges.get(net.physical_network or "")
        tunnels: tuple[str, ...] = ()
        if net.network_type in TUNNEL_TYPES:
            names = []
            for ip in sorted(
                remote_vteps_of(desired, net.id, config.tunnel_ip), key=ipaddress.ip_address
            ):
                name = tunnel_port_name(net.network_type, ip)
                lay.tunnels[name] = (net.network_type, ip)
                names.append(name)
            tunnels = tuple(names)
        physical = physbr if net.network_type in ("flat", "vlan") else None
        lay.wirings[net.id] = Wiring(net, tag, physical, tunnels)
    lay.groups = _flow_groups(desired, lay, config)
    return lay


# -- flows -----------------------------------------------------------------------------


def _base_groups(lay: Layout, config: OvsConfig) -> list[FlowGroup]:
    br_int = config.integration_bridge
    int_flows = [
        flow(0, P_NORMAL, actions="NORMAL"),
        flow(0, P_DEAD_VLAN, "vlan_tci=0x0fff/0x1fff", actions="drop"),
    ]
    groups: list[FlowGroup] = []
    for bridge in sorted(lay.physical_bridges.values()):
        int_flows.append(
            flow(0, P_DROP_UNTRANSLATED, f"in_port={int_patch_name(bridge)}", actions="drop")
        )
        phys = flow(0, P_DROP_UNTRANSLATED, f"in_port={phys_patch_name(bridge)}", actions="drop")
        groups.append(FlowGroup(bridge, f"phys:{bridge}", frozenset([phys])))
    groups.insert(0, FlowGroup(br_int, "base", frozenset(int_flows)))
    if config.tunnel_ip is not None:
        tun = flow(0, 1, f"in_port={PATCH_TUN_TO_INT}", actions=f"goto_table:{TUN_FROM_INT}")
        groups.append(FlowGroup(config.tunnel_bridge, "base", frozenset([tun])))
        for name, (kind, _) in sorted(lay.tunnels.items()):
            cls = flow(0, 1, f"in_port={name}", actions=f"goto_table:{TUN_IN[kind]}")
            groups.append(FlowGroup(config.tunnel_bridge, f"tunnel:{name}", frozenset([cls])))
    return groups


def _network_groups(desired: HostState, w: Wiring, config: OvsConfig) -> list[FlowGroup]:
    net = w.network
    key = f"net:{net.id}"
    kind = net.network_type
    seg = net.segmentation_id
    local = f"set_field:{vlan_vid(w.tag)}->vlan_vid"
    if kind in ("flat", "vlan"):
        assert w.physical_bridge is not None
        int_port = int_patch_name(w.physical_bridge)
        phy_port = phys_patch_name(w.physical_bridge)
        if kind == "flat":
            ingress = flow(
                0,
                P_TRANSLATE_IN,
                f"in_port={int_port}",
                "vlan_tci=0x0000/0x1fff",
                actions=f"push_vlan:0x8100,{local},NORMAL",
            )
            egress_action = "pop_vlan,NORMAL"
        else:
            assert seg is not None
            ingress = flow(
                0,
                P_TRANSLATE_IN,
                f"in_port={int_port}",
                f"dl_vlan={seg}",
                actions=f"{local},NORMAL",
            )
            egress_action = f"set_field:{vlan_vid(seg)}->vlan_vid,NORMAL"
        egress = flow(
            0, P_TRANSLATE_OUT, f"in_port={phy_port}", f"dl_vlan={w.tag}", actions=egress_action
        )
        return [
            FlowGroup(config.integration_bridge, key, frozenset([ingress])),
            FlowGroup(w.physical_bridge, key, frozenset([egress])),
        ]
    if kind in TUNNEL_TYPES:
        assert seg is not None
        tun_id = f"set_field:{seg:#x}->tun_id"
        flows = [
            flow(
                TUN_IN[kind],
                1,
                f"tun_id={seg:#x}",
                actions=f"push_vlan:0x8100,{local},output:{PATCH_TUN_TO_INT}",
            )
        ]
        if w.tunnels:
            outputs = ",".join(f"output:{t}" for t in w.tunnels)
            flows.append(
                flow(TUN_FROM_INT, 1, f"dl_vlan={w.tag}", actions=f"pop_vlan,{tun_id},{outputs}")
            )
        vteps = remote_vteps_of(desired, net.id, config.tunnel_ip)
        for mac, ip in sorted(unicast_targets(vteps).items()):
            flows.append(
                flow(
                    TUN_FROM_INT,
                    2,
                    f"dl_vlan={w.tag}",
                    f"dl_dst={mac}",
                    actions=f"pop_vlan,{tun_id},output:{tunnel_port_name(kind, ip)}",
                )
            )
        return [FlowGroup(config.tunnel_bridge, key, frozenset(flows))]
    return []  # local: the tag alone isolates it


def _flow_groups(desired: HostState, lay: Layout, config: OvsConfig) -> list[FlowGroup]:
    groups = _base_groups(lay, config)
    for net_id in sorted(lay.wirings):
        groups.extend(_network_groups(desired, lay.wirings[net_id], config))
    return groups


def _port_group(
    port_id: str, mac: str, admin_up: bool, device: str, w: Wiring, config: OvsConfig
) -> FlowGroup | None:
    """Flows of one wired port on the integration bridge.

    Admin down: whatever it sends is dropped (it also sits in the dead VLAN).
    Admin up: frames for its MAC arriving from the tunnel bridge or the physical
    bridge go straight to it (l2population for local ports), instead of relying on
    what NORMAL learned: after a port moves here, NORMAL would still send its MAC back
    towards where it was learned until the workload speaks (measured: ~1 s of loss).
    """
    key = f"port:{port_id}"
    if not admin_up:
        drop = flow(0, P_DEAD_PORT, f"in_port={device}", actions="drop")
        return FlowGroup(config.integration_bridge, key, frozenset([drop]))
    net = w.network
    if net.network_type in TUNNEL_TYPES:
        match = [f"in_port={PATCH_INT_TO_TUN}", f"dl_vlan={w.tag}"]
        actions = f"pop_vlan,output:{device}"
    elif net.network_type == "vlan" and w.physical_bridge is not None:
        match = [f"in_port={int_patch_name(w.physical_bridge)}", f"dl_vlan={net.segmentation_id}"]
        actions = f"pop_vlan,output:{device}"
    elif net.network_type == "flat" and w.physical_bridge is not None:
        match = [f"in_port={int_patch_name(w.physical_bridge)}", "vlan_tci=0x0000/0x1fff"]
        actions = f"output:{device}"
    else:
        return None  # local: NORMAL alone
    deliver = flow(0, P_DELIVER, *match, f"dl_dst={mac}", actions=actions)
    return FlowGroup(config.integration_bridge, key, frozenset([deliver]))


# -- ports -----------------------------------------------------------------------------


def _wire_port(
    port_id: str, mac: str, admin_up: bool, device: str, w: Wiring, config: OvsConfig
) -> WirePort:
    net = w.network
    other = {"net_uuid": net.id, "network_type": net.network_type, "tag": str(w.tag)}
    if net.physical_network:
        other["physical_network"] = net.physical_network
    if net.segmentation_id is not None:
        other["segmentation_id"] = str(net.segmentation_id)
    return WirePort(
        bridge=config.integration_bridge,
        device=device,
        tag=w.tag if admin_up else DEAD_VLAN,
        other_config=other,
        external_ids={"iface-id": port_id, "attached-mac": mac},
        mtu=net.mtu,
    )


def _port_matches(actual: OvsPort | None, want: WirePort) -> bool:
    if actual is None or actual.bridge != want.bridge or actual.tag != want.tag:
        return False
    other = {k: v for k, v in actual.other_config.items() if k in PORT_KEYS}
    ext = {k: v for k, v in actual.external_ids.items() if k in IFACE_KEYS}
    return (
        other == want.other_config and ext == want.external_ids and actual.mtu_request == want.mtu
    )


# -- hybrid plug -------------------------------------------------------------------------


def uses_hybrid_plug(port: PortSpec, config: OvsConfig) -> bool:
    """Whether the port gets Neutron's hybrid plug (a firewall bridge of its own)."""
    return config.hybrid_plug and port.port_security_enabled


def ovs_device(port: PortSpec, config: OvsConfig) -> str:
    """The port's device in the integration bridge: qvo<port> (hybrid) or its tap."""
    if uses_hybrid_plug(port, config):
        return hybrid_names(port.id)[2]
    return port.device_name


def port_bridges(desired: HostState, config: OvsConfig) -> dict[str, str]:
    """port id -> its qbr bridge, for the ports with a hybrid plug (the firewall's
    ``port_bridges``)."""
    return {
        p.id: hybrid_names(p.id)[0] for p in desired.ports.values() if uses_hybrid_plug(p, config)
    }


def hybrid_problem(port: PortSpec, mtu: int, actual: ActualState) -> str | None:
    """What is missing from the port's hybrid plug (None: all wired, except qvo's place
    in the integration bridge, which the OVSDB side checks)."""
    qbr_name, qvb_name, qvo_name = hybrid_names(port.id)
    alias = hybrid_alias(port.id)
    qbr = actual.links.get(qbr_name)
    if qbr is None or qbr.kind != "bridge":
        return f"bridge {qbr_name} not found"
    for name in (qvb_name, qvo_name):
        link = actual.links.get(name)
        if link is None or link.kind != "veth":
            return f"veth {name} not found"
        if link.mtu != mtu:
            return f"{name} has mtu {link.mtu}, not {mtu}"
    for name in (qbr_name, qvb_name, qvo_name):
        if actual.links[name].alias != alias:
            return f"{name} is not marked as Baryon's"
    for name in (port.device_name, qvb_name):
        link = actual.links.get(name)
        if link is None:
            return f"device {name} not found"
        if link.master != qbr.index:
            return f"{name} is not in {qbr_name}"
    for name in (qbr_name, qvb_name, qvo_name, port.device_name):
        if not actual.links[name].up:
            return f"{name} is down"
    return None


def _is_our_port(port: OvsPort) -> bool:
    """A workload port the driver wired (as opposed to patch/internal/tunnel ports)."""
    if port.iface_type not in ("", "system"):
        return False
    return "net_uuid" in port.other_config or "iface-id" in port.external_ids


def _bridge_changes(lay: Layout, actual: ActualState, config: OvsConfig) -> list[Change]:
    changes: list[Change] = []
    own = [config.integration_bridge]
    if config.tunnel_ip is not None:
        own.append(config.tunnel_bridge)
    for name in own:
        br = actual.bridges.get(name)
        if br is None or br.datapath_type != config.datapath_type or br.fail_mode != "secure":
            changes.append(EnsureBridge(name, config.datapath_type, "secure"))
    patches: list[tuple[str, str, str]] = []
    if config.tunnel_ip is not None:
        patches.append((config.integration_bridge, PATCH_INT_TO_TUN, PATCH_TUN_TO_INT))
        patches.append((config.tunnel_bridge, PATCH_TUN_TO_INT, PATCH_INT_TO_TUN))
    for bridge in sorted(lay.physical_bridges.values()):
        patches.append((config.integration_bridge, int_patch_name(bridge), phys_patch_name(bridge)))
        patches.append((bridge, phys_patch_name(bridge), int_patch_name(bridge)))
    for bridge, name, peer in patches:
        port = actual.port(name)
        if (
            port is None
            or port.bridge != bridge
            or port.iface_type != "patch"
            or port.options != {"peer": peer}
        ):
            changes.append(EnsurePatchPort(bridge, name, peer))
    return changes


def _tunnel_options(kind: str, remote_ip: str, config: OvsConfig) -> dict[str, str]:
    assert config.tunnel_ip is not None
    options = {"remote_ip": remote_ip, "local_ip": config.tunnel_ip, "key": "flow"}
    if kind == "vxlan":
        options["dst_port"] = str(config.vxlan_port)
    return options


def diff(
    desired: HostState, actual: ActualState, config: OvsConfig, supported: frozenset[str]
) -> Plan:
    lay = layout(desired, actual, config, supported)
    changes: list[Change] = _bridge_changes(lay, actual, config)
    br_int, br_tun = config.integration_bridge, config.tunnel_bridge

    for name, (kind, ip) in sorted(lay.tunnels.items()):
        options = _tunnel_options(kind, ip, config)
        port = actual.port(name)
        if (
            port is None
            or port.bridge != br_tun
            or port.iface_type != kind
            or port.options != options
        ):
            changes.append(EnsureTunnelPort(br_tun, name, kind, options))

    wanted_groups = list(lay.groups)
    hybrid_changes: list[Change] = []
    for spec in sorted(desired.ports.values(), key=lambda p: p.id):
        w = lay.wirings.get(spec.network_id)
        if w is None or spec.device_name not in actual.links:
            continue
        device = ovs_device(spec, config)
        if uses_hybrid_plug(spec, config) and hybrid_problem(spec, w.network.mtu, actual):
            hybrid_changes.append(EnsureHybridPlug(spec.id, spec.device_name, w.network.mtu))
        want = _wire_port(spec.id, spec.mac, spec.admin_state_up, device, w, config)
        if not _port_matches(actual.port(want.device), want):
            changes.append(want)
        group = _port_group(spec.id, spec.mac, spec.admin_state_up, want.device, w, config)
        if group is not None:
            wanted_groups.append(group)

    # Stale: workload ports of ports no longer here, unused tunnels. A port still
    # desired whose device in br-int changed (port security or hybrid plugging turned
    # on or off: tap <-> qvo) is converging, not stale.
    desired_devices = {ovs_device(p, config) for p in desired.ports.values()}
    stale_devices: list[Change] = []
    for port in sorted(actual.ports_on(br_int), key=lambda p: p.name):
        if _is_our_port(port) and port.name not in desired_devices:
            converging = port.external_ids.get("iface-id") in desired.ports
            changes.append(RemovePort(br_int, port.name, stale=not converging))
            link = actual.links.get(port.name)
            if not converging and link is not None and is_owned_device(link.name, link.alias):
                stale_devices.append(DeleteDevice(port.name))
    # Hybrid-plug devices (qbr/qvb/qvo) of ports gone, or of ports plugged directly now.
    hybrid_ports = {
        pid for link in actual.links.values() if (pid := hybrid_port_of(link.name, link.alias))
    }
    for pid in sorted(hybrid_ports):
        owner = desired.ports.get(pid)
        if owner is not None and uses_hybrid_plug(owner, config):
            continue
        stale_devices.insert(0, DeleteHybridPlug(pid, stale=owner is None))
        tap = actual.links.get(port_device_name(pid))
        if (
            owner is None
            and tap is not None
            and is_owned_device(tap.name, tap.alias)
            and DeleteDevice(tap.name) not in stale_devices
        ):
            stale_devices.append(DeleteDevice(tap.name))
    for port in sorted(actual.ports_on(br_tun), key=lambda p: p.name):
        if port.iface_type in TUNNEL_TYPES and port.name not in lay.tunnels:
            changes.append(RemovePort(br_tun, port.name))

    # Flows: a group per cookie and bridge.
    managed = {br_int, *lay.physical_bridges.values()}
    if config.tunnel_ip is not None:
        managed.add(br_tun)
    wanted = {(g.bridge, g.cookie): g for g in wanted_groups}
    for (bridge, cookie), group in wanted.items():
        if actual.flow_group(bridge, cookie) != group.flows:
            changes.append(SetFlows(bridge, group.key, cookie, tuple(sorted(group.flows))))
    # Deleting the group of a port or network that is still desired (admin state back
    # up, a VLAN network moved elsewhere) is part of converging it, not a stale removal.
    live = {cookie_for(f"port:{p}") for p in desired.ports}
    live |= {cookie_for(f"net:{n}") for n in lay.wirings}
    for bridge in sorted(managed):
        for cookie in sorted(actual.flows.get(bridge, {})):
            if (bridge, cookie) not in wanted:
                changes.append(DeleteFlows(bridge, cookie, stale=cookie not in live))
    changes.extend(stale_devices)
    return Plan(tuple(hybrid_changes + changes))


# -- statuses --------------------------------------------------------------------------


def statuses(
    desired: HostState, actual: ActualState, config: OvsConfig, supported: frozenset[str]
) -> list[PortStatus]:
    lay = layout(desired, actual, config, supported)
    # A port needs its network's flows, its tunnels' and the bridges' base flows.
    by_key: dict[str, list[FlowGroup]] = {}
    for group in lay.groups:
        by_key.setdefault(group.key, []).append(group)
    by_net: dict[str, list[FlowGroup]] = {}
    for net_id, w in lay.wirings.items():
        keys = [f"net:{net_id}", *(f"tunnel:{t}" for t in w.tunnels)]
        by_net[net_id] = [g for k in keys for g in by_key.get(k, [])]
    base_ok = all(
        actual.flow_group(g.bridge, g.cookie) == g.flows
        for g in lay.groups
        if g.key == "base" or g.key.startswith("phys:")
    )
    out: list[PortStatus] = []
    for port in sorted(desired.ports.values(), key=lambda p: p.id):
        problem = lay.problems.get(port.network_id)
        if problem is not None:
            out.append(PortStatus(port.id, "ERROR", problem))
            continue
        w = lay.wirings[port.network_id]
        device = ovs_device(port, config)
        status = _port_status(port, device, w, by_net, base_ok, actual, config)
        if status.status == "ACTIVE":
            own = _port_group(port.id, port.mac, True, device, w, config)
            if own is not None and actual.flow_group(own.bridge, own.cookie) != own.flows:
                status = PortStatus(port.id, "DOWN", "flows not installed")
        out.append(status)
    return out


def _uplinks(w: Wiring, config: OvsConfig) -> list[str]:
    if w.physical_bridge is not None:
        return [int_patch_name(w.physical_bridge), phys_patch_name(w.physical_bridge)]
    if w.network.network_type in TUNNEL_TYPES:
        return [PATCH_INT_TO_TUN, PATCH_TUN_TO_INT, *w.tunnels]
    return []


def _port_status(
    spec: PortSpec,
    device: str,
    w: Wiring,
    by_net: Mapping[str, list[FlowGroup]],
    base_ok: bool,
    actual: ActualState,
    config: OvsConfig,
) -> PortStatus:
    """ACTIVE only when every piece is wired: with a hybrid plug, the tap in its qbr
    with qvb, and qvo (the device in br-int) applied by ovs-vswitchd with its tag."""
    port_id, admin_up = spec.id, spec.admin_state_up
    if spec.device_name not in actual.links:
        return PortStatus(port_id, "DOWN", f"device {spec.device_name} not found")
    if uses_hybrid_plug(spec, config):
        problem = hybrid_problem(spec, w.network.mtu, actual)
        if problem is not None:
            return PortStatus(port_id, "DOWN", f"hybrid plug: {problem}")
    link = actual.links.get(device)
    if link is None:
        return PortStatus(port_id, "DOWN", f"device {device} not found")
    port = actual.port(device)
    if port is None or port.bridge != config.integration_bridge:
        return PortStatus(port_id, "DOWN", f"{device} is not in {config.integration_bridge}")
    if not port.applied:
        detail = f": {port.error}" if port.error else ""
        return PortStatus(port_id, "DOWN", f"ovs-vswitchd has not applied {device}{detail}")
    if not admin_up:
        return PortStatus(port_id, "DOWN", "admin state down")
    if port.tag != w.tag:
        return PortStatus(port_id, "DOWN", f"{device} has tag {port.tag}, not {w.tag}")
    if not link.up:
        return PortStatus(port_id, "DOWN", f"{device} is down")
    for name in _uplinks(w, config):
        uplink = actual.port(name)
        if uplink is None or not uplink.applied:
            return PortStatus(port_id, "DOWN", f"{name} is not ready")
    groups = by_net.get(w.network.id, [])
    if not base_ok or any(actual.flow_group(g.bridge, g.cookie) != g.flows for g in groups):
        return PortStatus(port_id, "DOWN", "flows not installed")
    return PortStatus(port_id, "ACTIVE")
