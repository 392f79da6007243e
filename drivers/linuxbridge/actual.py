"""What a host's Linux bridge dataplane looks like now, read back from the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.linuxbridge.naming import BRIDGE_PREFIX, TAP_PREFIX, VXLAN_PREFIX
from drivers.model import FrozenDict
from drivers.netlink import FdbEntry, Link, RtnlDumper, dump_links, dump_tunnel_fdb
from drivers.sysctl import ipv6_disabled


@dataclass(frozen=True)
class ActualState:
    """links: every link of the namespace by name; fdb: VXLAN device name -> its remote
    entries; ipv6_off: managed device name -> whether IPv6 is disabled on it."""

    links: Mapping[str, Link] = field(default_factory=lambda: FrozenDict())
    fdb: Mapping[str, frozenset[FdbEntry]] = field(default_factory=lambda: FrozenDict())
    ipv6_off: Mapping[str, bool] = field(default_factory=lambda: FrozenDict())
    _by_index: dict[int, Link] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", FrozenDict(self.links))
        object.__setattr__(self, "fdb", FrozenDict(self.fdb))
        object.__setattr__(self, "ipv6_off", FrozenDict(self.ipv6_off))
        object.__setattr__(self, "_by_index", {lk.index: lk for lk in self.links.values()})

    def link(self, name: str) -> Link | None:
        return self.links.get(name)

    def master_of(self, name: str) -> str | None:
        """Name of the bridge (or other master) `name` is enslaved to, if any."""
        link = self.links.get(name)
        if link is None or link.master is None:
            return None
        master = self._by_index.get(link.master)
        return master.name if master is not None else None

    def members(self, bridge: str) -> list[Link]:
        target = self.links.get(bridge)
        if target is None:
            return []
        return [link for link in self.links.values() if link.master == target.index]

    def is_managed_bridge(self, name: str) -> bool:
        link = self.links.get(name)
        return link is not None and link.kind == "bridge" and name.startswith(BRIDGE_PREFIX)


def _is_managed_device(link: Link, bridge_indexes: set[int]) -> bool:
    if link.kind == "bridge":
        return link.name.startswith(BRIDGE_PREFIX)
    if link.kind == "vxlan":
        return link.name.startswith(VXLAN_PREFIX)
    return link.name.startswith(TAP_PREFIX) or link.master in bridge_indexes


async def read_actual_state(
    ipr: Any, netns: str | None, dumper: RtnlDumper | None = None
) -> ActualState:
    """Read the namespace back: with `dumper` (a raw socket in `netns`) the dumps are
    decoded without pyroute2 and disable_ipv6 comes with the links (much cheaper);
    otherwise through `ipr` and the sysctl files."""
    v6: dict[str, bool] | None = None
    if dumper is None:
        links = await dump_links(ipr)
    else:
        with_v6 = await dumper.links_ipv6()
        links = [link for link, _ in with_v6]
        v6 = {link.name: off for link, off in with_v6 if off is not None}
    bridge_indexes = {
        lk.index for lk in links if lk.kind == "bridge" and lk.name.startswith(BRIDGE_PREFIX)
    }
    by_index = {link.index: link for link in links}
    fdb: dict[str, frozenset[FdbEntry]] = {}
    vxlan_indexes = {link.index for link in links if link.kind == "vxlan"}
    if vxlan_indexes:
        if dumper is None:
            tunnel_fdb = await dump_tunnel_fdb(ipr)
        else:
            tunnel_fdb = await dumper.tunnel_fdb(vxlan_indexes)
        for ifindex, entries in tunnel_fdb.items():
            owner = by_index.get(ifindex)
            if owner is not None and owner.kind == "vxlan":
                fdb[owner.name] = frozenset(entries)
    managed = [link.name for link in links if _is_managed_device(link, bridge_indexes)]
    if v6 is None:
        ipv6 = await ipv6_disabled(netns, managed)
    else:
        ipv6 = {name: v6[name] for name in managed if name in v6}
    return ActualState(links={link.name: link for link in links}, fdb=fdb, ipv6_off=ipv6)


async def read_named_state(dumper: RtnlDumper, names: Iterable[str]) -> ActualState:
    """Only the links called `names` (those that exist), without FDB entries: the
    read-back of a scoped sync (LinuxBridgeDriver.sync_ports)."""
    with_v6 = await dumper.named_links_ipv6(names)
    return ActualState(
        links={link.name: link for link, _ in with_v6},
        ipv6_off={link.name: off for link, off in with_v6 if off is not None},
    )
