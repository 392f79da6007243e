"""The change objects an Open vSwitch plan is made of.

Three kinds, applied in this order by the driver:

- OVSDB changes (``run_ovsdb``): all of one plan go into ONE ovsdbapp transaction,
  which returns once ovs-vswitchd has applied it;
- flow changes: replace or delete one group of flows (one cookie) on one bridge; all
  of one bridge go into one atomic ``ovs-ofctl --bundle``;
- link changes (netlink): the per-port hybrid-plug devices (qbr/qvb/qvo) are made
  BEFORE the OVSDB transaction (OVS must find qvo to open it); hybrid devices and port
  devices Baryon created are deleted AFTER it (once unwired).

Each is a small frozen dataclass that says what it does (``str()``) and converges
towards the target it names whatever it finds (create or update; delete if present),
so applying a plan twice is harmless. Computing changes (planner.py) does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers import sysctl
from drivers.model import FrozenDict
from drivers.netlink import delete_link, get_link
from drivers.nsdev import run_cmd
from drivers.ovs.flows import Flow
from drivers.ovs.naming import hybrid_alias, hybrid_names
from drivers.ovs.ovsdb import TxnContext, col, merged

# The keys of Port.other_config and Interface.external_ids the driver owns (Neutron's
# names); other keys (e.g. written by a hypervisor) are left alone.
PORT_KEYS = frozenset({"net_uuid", "network_type", "physical_network", "segmentation_id", "tag"})
IFACE_KEYS = frozenset({"iface-id", "attached-mac"})


def _frozen() -> FrozenDict[str, str]:
    return FrozenDict()


@dataclass(frozen=True, slots=True)
class EnsureBridge:
    name: str
    datapath_type: str
    fail_mode: str | None  # None: leave it (a physical bridge is the operator's)

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        mode = f" fail_mode {self.fail_mode}" if self.fail_mode else ""
        return f"ensure bridge {self.name} datapath {self.datapath_type}{mode}"

    def run_ovsdb(self, ctx: TxnContext) -> None:
        br = ctx.bridge(self.name)
        if br is None:
            br = ctx.create_bridge(self.name)
        if col(br, "datapath_type", None) != self.datapath_type:
            br.datapath_type = self.datapath_type
        if self.fail_mode is not None and list(col(br, "fail_mode", [])) != [self.fail_mode]:
            br.fail_mode = [self.fail_mode]


def _ensure_port(ctx: TxnContext, bridge: str, name: str) -> Any:
    if ctx.port(name) is None:
        return ctx.create_port(bridge, name)
    return ctx.move_port(name, bridge)


@dataclass(frozen=True, slots=True)
class EnsurePatchPort:
    bridge: str
    name: str
    peer: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"ensure patch port {self.name} on {self.bridge} peer {self.peer}"

    def run_ovsdb(self, ctx: TxnContext) -> None:
        iface = _ensure_port(ctx, self.bridge, self.name).interfaces[0]
        iface.type = "patch"
        iface.options = {"peer": self.peer}


@dataclass(frozen=True, slots=True)
class EnsureTunnelPort:
    """One tunnel port per (type, remote VTEP); the key (VNI) comes from the flows."""

    bridge: str
    name: str
    tunnel_type: str
    options: Mapping[str, str] = field(default_factory=_frozen)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", FrozenDict(self.options))

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"ensure {self.tunnel_type} port {self.name} on {self.bridge} {opts}"

    def run_ovsdb(self, ctx: TxnContext) -> None:
        iface = _ensure_port(ctx, self.bridge, self.name).interfaces[0]
        iface.type = self.tunnel_type
        iface.options = dict(self.options)


@dataclass(frozen=True, slots=True)
class WirePort:
    """A port device in the integration bridge: its network's local VLAN (or the dead
    VLAN when admin down), Neutron's iface-id/attached-mac, the network MTU."""

    bridge: str
    device: str
    tag: int
    other_config: Mapping[str, str]
    external_ids: Mapping[str, str]
    mtu: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "other_config", FrozenDict(self.other_config))
        object.__setattr__(self, "external_ids", FrozenDict(self.external_ids))

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return (
            f"wire port {self.device} into {self.bridge} tag {self.tag} mtu {self.mtu}"
            f" iface-id {self.external_ids.get('iface-id')}"
        )

    def run_ovsdb(self, ctx: TxnContext) -> None:
        port = _ensure_port(ctx, self.bridge, self.device)
        iface = port.interfaces[0]
        if list(col(port, "tag", [])) != [self.tag]:
            port.tag = [self.tag]
        current = dict(col(port, "other_config", {}))
        config = merged(current, self.other_config, PORT_KEYS)
        if current != config:
            port.other_config = config
        current = dict(col(iface, "external_ids", {}))
        ext = merged(current, self.external_ids, IFACE_KEYS)
        if current != ext:
            iface.external_ids = ext
        if list(col(iface, "mtu_request", [])) != [self.mtu]:
            iface.mtu_request = [self.mtu]


@dataclass(frozen=True, slots=True)
class RemovePort:
    """Take a port out of OVS (a port gone from this host, or a tunnel no longer used)."""

    bridge: str
    name: str
    stale: bool = True

    @property
    def removes_stale(self) -> bool:
        return self.stale

    def __str__(self) -> str:
        return f"remove port {self.name} from {self.bridge}"

    def run_ovsdb(self, ctx: TxnContext) -> None:
        ctx.delete_port(self.name)


OvsdbChange = EnsureBridge | EnsurePatchPort | EnsureTunnelPort | WirePort | RemovePort


@dataclass(frozen=True, slots=True)
class SetFlows:
    """Replace the flows of one group (cookie) on a bridge, atomically."""

    bridge: str
    group: str  # what the group is for: "net:<id>", "tunnel:<port>", ...
    cookie: int
    flows: tuple[Flow, ...]

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"set {len(self.flows)} flow(s) of {self.group} on {self.bridge}"


@dataclass(frozen=True, slots=True)
class DeleteFlows:
    bridge: str
    cookie: int
    stale: bool = True

    @property
    def removes_stale(self) -> bool:
        return self.stale

    def __str__(self) -> str:
        return f"delete flows cookie {self.cookie:#x} on {self.bridge}"


FlowChange = SetFlows | DeleteFlows


@dataclass(frozen=True, slots=True)
class DeleteDevice:
    """Delete a port device Baryon created (ifalias baryon-port:<id>), once unwired."""

    name: str

    @property
    def removes_stale(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"delete port device {self.name}"

    async def apply(self, ipr: Any) -> None:
        await delete_link(ipr, self.name)


@dataclass(frozen=True, slots=True)
class EnsureHybridPlug:
    """Neutron's hybrid plug for one port: a Linux bridge qbr<port> holding the tap and
    the veth end qvb<port>, whose peer qvo<port> goes into the integration bridge (a
    WirePort of the same plan). IPv6 off on all three (they only forward), TX checksum
    offload off on qvb (it sends into OVS's userspace datapath, which drops TCP whose
    checksum was left to the NIC), everything up. Creates what is missing, fixes the
    rest; a veth with one end gone is recreated."""

    port_id: str
    tap: str
    mtu: int

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        qbr, qvb, qvo = hybrid_names(self.port_id)
        return f"ensure hybrid plug {self.tap} -> {qbr} -> {qvb}/{qvo} mtu {self.mtu}"

    async def apply(self, ipr: Any, netns: str | None) -> None:
        qbr, qvb, qvo = hybrid_names(self.port_id)
        alias = hybrid_alias(self.port_id)
        if await get_link(ipr, qbr) is None:
            # br_netfilter on from the start (the firewall also checks it): no window
            # in which the firewall's guard drops the port's traffic.
            await ipr.link(
                "add",
                ifname=qbr,
                kind="bridge",
                br_stp_state=0,
                br_forward_delay=0,
                br_nf_call_iptables=1,
                br_nf_call_ip6tables=1,
            )
        have_qvb = await get_link(ipr, qvb) is not None
        have_qvo = await get_link(ipr, qvo) is not None
        if not (have_qvb and have_qvo):
            await delete_link(ipr, qvb)
            await delete_link(ipr, qvo)
            await ipr.link("add", ifname=qvb, kind="veth", mtu=self.mtu, peer={"ifname": qvo})
        # Before anything is up: no IPv6 link-local chatter into the overlay.
        await sysctl.disable_ipv6(netns, [qbr, qvb, qvo])
        for dev in (qbr, qvb, qvo):
            await ipr.link("set", ifname=dev, ifalias=alias)
        for dev in (qvb, qvo):
            await ipr.link("set", ifname=dev, mtu=self.mtu)
        qbr_index = (await ipr.link_lookup(ifname=qbr))[0]
        for dev in (qvb, self.tap):
            await ipr.link("set", ifname=dev, master=qbr_index)
        await _tx_off(netns, qvb)
        for dev in (qbr, qvb, qvo, self.tap):
            await ipr.link("set", ifname=dev, state="up")


async def _tx_off(netns: str | None, device: str) -> None:
    argv = ["ethtool", "-K", device, "tx", "off"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    await run_cmd(*argv)


@dataclass(frozen=True, slots=True)
class DeleteHybridPlug:
    """Delete a port's qbr bridge and qvb/qvo veth (the tap is released, not deleted):
    the port is gone (stale) or no longer needs a firewall bridge (not stale)."""

    port_id: str
    stale: bool = True

    @property
    def removes_stale(self) -> bool:
        return self.stale

    def __str__(self) -> str:
        qbr, qvb, qvo = hybrid_names(self.port_id)
        return f"delete hybrid plug {qbr} {qvb}/{qvo}"

    async def apply(self, ipr: Any) -> None:
        qbr, qvb, qvo = hybrid_names(self.port_id)
        for dev in (qvb, qvo, qbr):
            await delete_link(ipr, dev)


LinkChange = EnsureHybridPlug | DeleteHybridPlug | DeleteDevice
OvsChange = OvsdbChange | FlowChange | LinkChange
