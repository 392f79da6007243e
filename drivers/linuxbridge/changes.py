"""The change objects a Linux bridge plan is made of.

Each is a small frozen dataclass that says what it does (``str()``) and carries an
idempotent ``apply``: it converges one device towards the target it names, whatever
the device looks like when it runs (created or not, configured or not). Computing
changes (planner.py) does no I/O; only ``apply`` touches the kernel.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from drivers import sysctl
from drivers.netlink import (
    FdbEntry,
    LinkSetting,
    RtnlDumper,
    delete_link,
    fdb_append,
    fdb_delete,
    fdb_replace,
    get_link,
    link_index,
)


@dataclass(frozen=True, slots=True)
class HostHandle:
    """What changes run against: a long-lived AsyncIPRoute, a raw rtnetlink socket for
    batched link settings, both in the namespace `netns`."""

    ipr: Any
    netns: str | None
    nl: RtnlDumper
    # Bridge name -> ifindex, looked up once per plan (ports come after bridges).
    bridge_indexes: dict[str, int] = field(default_factory=dict)

    async def bridge_index(self, name: str) -> int:
        index = self.bridge_indexes.get(name)
        if index is None:
            index = self.bridge_indexes[name] = await link_index(self.ipr, name)
        return index


async def _create(ipr: Any, **attrs: Any) -> None:
    try:
        await ipr.link("add", **attrs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


async def _join_bridge(host: HostHandle, name: str, mtu: int, bridge: str) -> None:
    """An uplink device (VXLAN, VLAN): IPv6 off, the network's MTU, in the bridge, up."""
    await sysctl.disable_ipv6(host.netns, [name])
    master = await link_index(host.ipr, bridge)
    await host.ipr.link("set", ifname=name, mtu=mtu, master=master, state="up")


@dataclass(frozen=True, slots=True)
class EnsureBridge:
    name: str
    mtu: int

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"ensure bridge {self.name} mtu {self.mtu} up"

    async def apply(self, host: HostHandle) -> None:
        if await get_link(host.ipr, self.name) is None:
            # Created at another MTU and then set: only an MTU set after creation pins the
            # bridge's MTU; otherwise the kernel re-derives it from whichever ports come
            # and go (and a bridge left with no port falls back to 1500).
            scratch_mtu = self.mtu - 1 if self.mtu > 68 else self.mtu + 1
            await _create(
                host.ipr,
                ifname=self.name,
                kind="bridge",
                br_stp_state=0,
                br_forward_delay=0,
                mtu=scratch_mtu,
            )
        await sysctl.disable_ipv6(host.netns, [self.name])
        await host.ipr.link("set", ifname=self.name, mtu=self.mtu, state="up")


@dataclass(frozen=True, slots=True)
class EnsureVxlan:
    name: str
    vni: int
    local: str
    port: int
    mtu: int
    bridge: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return (
            f"ensure vxlan {self.name} vni {self.vni} local {self.local} dstport {self.port}"
            f" mtu {self.mtu} in {self.bridge} up"
        )

    async def apply(self, host: HostHandle) -> None:
        if await get_link(host.ipr, self.name) is None:
            await _create(
                host.ipr,
                ifname=self.name,
                kind="vxlan",
                vxlan_id=self.vni,
                vxlan_local=self.local,
                vxlan_port=self.port,
                vxlan_learning=0,
                mtu=self.mtu,
            )
        await _join_bridge(host, self.name, self.mtu, self.bridge)


@dataclass(frozen=True, slots=True)
class EnsureVlan:
    """A VLAN sub-interface of a physical NIC, in the network's bridge (needs 8021q)."""

    name: str
    parent: str
    vlan_id: int
    mtu: int
    bridge: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"ensure vlan {self.name} on {self.parent} id {self.vlan_id} in {self.bridge} up"

    async def apply(self, host: HostHandle) -> None:
        if await get_link(host.ipr, self.name) is None:
            parent = await link_index(host.ipr, self.parent)
            await _create(
                host.ipr, ifname=self.name, kind="vlan", link=parent, vlan_id=self.vlan_id
            )
        await _join_bridge(host, self.name, self.mtu, self.bridge)


@dataclass(frozen=True, slots=True)
class AttachUplink:
    """Enslave an existing interface (a flat network's physical NIC) and set it up."""

    device: str
    bridge: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"attach {self.device} to {self.bridge} up"

    async def apply(self, host: HostHandle) -> None:
        master = await link_index(host.ipr, self.bridge)
        await host.ipr.link("set", ifname=self.device, master=master, state="up")


@dataclass(frozen=True, slots=True)
class WirePort:
    """Port device: IPv6 off, network MTU, in the bridge, up or down (admin state)."""

    device: str
    bridge: str
    mtu: int
    up: bool

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        state = "up" if self.up else "down"
        return f"wire port {self.device} into {self.bridge} mtu {self.mtu} {state}"

    async def apply(self, host: HostHandle) -> None:
        failures = await wire_ports(host, [self])
        if failures:
            raise failures[0][1]


async def wire_ports(
    host: HostHandle, ports: list[WirePort]
) -> list[tuple[WirePort, BaseException]]:
    """Wire many ports at once; the ones that failed, with why. IPv6 off for all of
    them from one namespace thread, then three pipelined netlink batches: admin-down
    ones down, every one's MTU and bridge, admin-up ones up — down before it joins, up
    only once it is in, never forwarding half-wired. A device gone since the state was
    read (unplugged) is no failure: it reads back DOWN."""
    failures: list[tuple[WirePort, BaseException]] = []
    ready = ports
    try:
        await sysctl.disable_ipv6(host.netns, [c.device for c in ports])
    except OSError:
        ready = []  # one went away meanwhile, say: the others one by one
        for change in ports:
            try:
                await sysctl.disable_ipv6(host.netns, [change.device])
                ready.append(change)
            except FileNotFoundError:
                pass  # gone
            except OSError as exc:
                failures.append((change, exc))
    wiring: list[WirePort] = []
    for change in ready:
        try:
            await host.bridge_index(change.bridge)
            wiring.append(change)
        except NetlinkError as exc:
            failures.append((change, exc))
    failed = await host.nl.set_links([LinkSetting(c.device, up=False) for c in wiring if not c.up])
    joining = [c for c in wiring if c.device not in failed]
    failed |= await host.nl.set_links(
        [LinkSetting(c.device, mtu=c.mtu, master=host.bridge_indexes[c.bridge]) for c in joining]
    )
    failed |= await host.nl.set_links(
        [LinkSetting(c.device, up=True) for c in wiring if c.up and c.device not in failed]
    )
    for change in wiring:
        code = failed.get(change.device)
        if code is not None and code != errno.ENODEV:
            failures.append((change, NetlinkError(code, os.strerror(code))))
    return failures


@dataclass(frozen=True, slots=True)
class UnwirePort:
    """A port that is gone: release its device (down), or delete it if Baryon made it."""

    device: str
    delete: bool

    @property
    def removes_stale(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"delete port device {self.device}" if self.delete else f"unwire {self.device}"

    async def apply(self, host: HostHandle) -> None:
        if self.delete:
            await delete_link(host.ipr, self.device)
            return
        try:
            await host.ipr.link("set", ifname=self.device, master=0, state="down")
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


@dataclass(frozen=True, slots=True)
class DeleteLink:
    """Delete a bridge / VXLAN / VLAN device (stale, or to recreate it differently)."""

    name: str
    stale: bool

    @property
    def removes_stale(self) -> bool:
        return self.stale

    def __str__(self) -> str:
        return f"delete {self.name}" + (" (stale)" if self.stale else " (to recreate)")

    async def apply(self, host: HostHandle) -> None:
        await delete_link(host.ipr, self.name)


@dataclass(frozen=True, slots=True)
class AddFloodEntry:
    """Broadcast/unknown/multicast frames of the VXLAN device also go to `dst`."""

    device: str
    dst: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"fdb append 00:00:00:00:00:00 dst {self.dst} dev {self.device}"

    async def apply(self, host: HostHandle) -> None:
        ifindex = await link_index(host.ipr, self.device)
        await fdb_append(host.ipr, ifindex, FdbEntry("00:00:00:00:00:00", self.dst))


@dataclass(frozen=True, slots=True)
class SetMacEntry:
    """Unicast frames for `mac` go to the VTEP `dst` (creates the entry or moves it)."""

    device: str
    mac: str
    dst: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"fdb replace {self.mac} dst {self.dst} dev {self.device}"

    async def apply(self, host: HostHandle) -> None:
        ifindex = await link_index(host.ipr, self.device)
        await fdb_replace(host.ipr, ifindex, FdbEntry(self.mac, self.dst))


@dataclass(frozen=True, slots=True)
class DeleteFdbEntry:
    device: str
    mac: str
    dst: str

    @property
    def removes_stale(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"fdb del {self.mac} dst {self.dst} dev {self.device}"

    async def apply(self, host: HostHandle) -> None:
        try:
            ifindex = await link_index(host.ipr, self.device)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return
            raise
        await fdb_delete(host.ipr, ifindex, FdbEntry(self.mac, self.dst))


LinuxBridgeChange = (
    EnsureBridge
    | EnsureVxlan
    | EnsureVlan
    | AttachUplink
    | WirePort
    | UnwirePort
    | DeleteLink
    | AddFloodEntry
    | SetMacEntry
    | DeleteFdbEntry
)
