"""Helpers shared by the services that live in namespaces of their own (L3 routers, DHCP).

A service namespace is attached to a network the way a workload is: a veth pair whose
node-side end is named like any port's device ("tap" + port id[:11], ifalias
``baryon-port:<id>``) and enslaved to the network's bridge, and whose other end sits
in the service namespace with the port's MAC, MTU and addresses. The L2 driver sees
the tap as an ordinary port (and deletes it, owned, when the port goes away).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from drivers import sysctl
from drivers.model import owned_alias
from drivers.netlink import (
    NETNS_RUN_DIR,
    Link,
    delete_link,
    dump_links,
    get_link,
    netns_exists,
    netns_path,
    open_iproute,
)

RTPROT_STATIC = 4
MAIN_TABLE = 254


class CommandFailed(Exception):
    pass


async def run_cmd(*argv: str, stdin: bytes | None = None, ok_codes: Iterable[int] = (0,)) -> str:
    """Run a command; stdout on success (exit code in ok_codes), CommandFailed otherwise."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    if proc.returncode not in tuple(ok_codes):
        raise CommandFailed(f"{' '.join(argv)} -> {proc.returncode}: {err.decode().strip()}")
    return out.decode()


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_id(kind: str, value: str) -> str:
    """Ids end up in namespace, file and device names and in nft scripts: letters,
    digits, '.', '_', '-' only (UUIDs in practice)."""
    if not _ID_RE.match(value):
        raise ValueError(f"invalid {kind} id {value!r}")
    return value


def list_namespaces(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


async def ensure_namespace(name: str) -> None:
    """Create the named namespace (if missing) with lo up."""
    if not netns_exists(name):
        try:
            await run_cmd("ip", "netns", "add", name)
        except CommandFailed:
            if not netns_exists(name):
                raise
    await run_cmd("ip", "-n", name, "link", "set", "lo", "up")


async def purge_links(ipr: Any) -> None:
    """Delete every device but lo of the namespace `ipr` is in.

    Deleting a namespace takes its devices along, but only once the kernel gets round
    to cleaning the namespace up (asynchronously, sometimes much later): purging first
    means the veth peers in other namespaces (taps in bridges) are gone at once."""
    for link in await dump_links(ipr):
        if link.name != "lo":
            await delete_link(ipr, link.name)


async def delete_namespace(name: str) -> None:
    """Delete a namespace (purge_links first for its devices to go at once)."""
    if netns_exists(name):
        await run_cmd("ip", "netns", "del", name, ok_codes=(0, 1))


def namespace_inode(name: str) -> int | None:
    """The inode of the namespace's file in /run/netns (None: no such namespace); a
    namespace deleted and made again has another."""
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


class NamespaceSockets:
    """Long-lived netlink sockets, one per service namespace, reopened when the
    namespace was recreated since (its inode changed)."""

    def __init__(self) -> None:
        # ns -> (inode of /run/netns/ns when opened, socket)
        self._iprs: dict[str, tuple[int, Any]] = {}

    def __iter__(self) -> Iterator[str]:
        """The namespaces with a socket open."""
        return iter(self._iprs)

    def get(self, ns: str) -> Any:
        inode = namespace_inode(ns)
        cached = self._iprs.get(ns)
        if cached is not None and cached[0] == inode:
            return cached[1]
        if cached is not None:
            cached[1].close()
        ipr = open_iproute(ns)
        self._iprs[ns] = (inode or 0, ipr)
        return ipr

    def close(self, ns: str) -> None:
        cached = self._iprs.pop(ns, None)
        if cached is not None:
            cached[1].close()


def canonical_interface(value: str) -> str:
    """ "10.0.1.1/24" in canonical text form (raises ValueError if it is no address/len)."""
    return str(ipaddress.ip_interface(value))


@dataclass(frozen=True, slots=True)
class VethPort:
    """A service port: ``inner`` in the service namespace, ``tap`` in the node's."""

    port_id: str
    tap: str
    inner: str
    mac: str
    mtu: int
    bridge: str
    up: bool
    ipv6: bool = False  # False: IPv6 off on the inner end (no link-local chatter)


@dataclass(frozen=True, slots=True)
class TapActual:
    """A tap device in the node namespace: its master's name, MTU, up."""

    master: str | None
    mtu: int
    up: bool


def read_taps(links: Iterable[Link], prefix: str = "tap") -> dict[str, TapActual]:
    """Pure: the tap devices among a node namespace's links."""
    listed = list(links)
    names = {lk.index: lk.name for lk in listed}
    return {
        lk.name: TapActual(names.get(lk.master) if lk.master else None, lk.mtu, lk.up)
        for lk in listed
        if lk.name.startswith(prefix)
    }


def veth_port_ok(
    port: VethPort, inner: Link | None, tap: TapActual | None, bridges: frozenset[str]
) -> bool:
    """Pure: whether a service port's devices are as `port` wants them (the tap must be
    in the bridge only once the bridge exists)."""
    if inner is None or tap is None or inner.kind != "veth":
        return False
    if inner.mac != port.mac or inner.mtu != port.mtu or inner.up != port.up:
        return False
    if not tap.up or tap.mtu != port.mtu:
        return False
    return not (port.bridge in bridges and tap.master != port.bridge)


async def ensure_veth_port(
    node_ipr: Any, node_netns: str | None, inner_ipr: Any, ns: str, port: VethPort
) -> None:
    """Create (or fix) the veth pair of a service port; idempotent.

    The tap joins the bridge when the bridge exists (the L2 driver makes bridges for
    networks with ports on this host, and wires the tap too: both agree on it).
    """
    tap = await get_link(node_ipr, port.tap)
    inner = await get_link(inner_ipr, port.inner)
    if tap is not None and inner is None:
        await delete_link(node_ipr, port.tap)  # half a pair: start again
        tap = None
    if inner is not None and tap is None:
        await delete_link(inner_ipr, port.inner)
        inner = None
    if tap is None:
        try:
            await node_ipr.link(
                "add",
                ifname=port.tap,
                kind="veth",
                mtu=port.mtu,
                peer={
                    "ifname": port.inner,
                    "net_ns_fd": netns_path(ns),
                    "address": port.mac,
                    "mtu": port.mtu,
                },
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    await sysctl.disable_ipv6(node_netns, [port.tap])
    await node_ipr.link("set", ifname=port.tap, mtu=port.mtu, ifalias=owned_alias(port.port_id))
    bridge = await get_link(node_ipr, port.bridge)
    if bridge is not None:
        await node_ipr.link("set", ifname=port.tap, master=bridge.index)
    await node_ipr.link("set", ifname=port.tap, state="up")
    if not port.ipv6:
        await sysctl.disable_ipv6(ns, [port.inner])
    await inner_ipr.link("set", ifname=port.inner, address=port.mac, mtu=port.mtu)
    await inner_ipr.link("set", ifname=port.inner, state="up" if port.up else "down")


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_interface(address).version == 6 else socket.AF_INET


async def read_addresses(ipr: Any) -> dict[int, frozenset[str]]:
    """ifindex -> its global addresses as canonical "ip/len" (link-local v6 left out)."""
    out: dict[int, set[str]] = {}
    async for msg in await ipr.addr("dump"):
        address = msg.get("address")
        if address is None:
            continue
        value = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
        if value.is_link_local:
            continue
        out.setdefault(int(msg["index"]), set()).add(str(value))
    return {k: frozenset(v) for k, v in out.items()}


def _address_attrs(value: str) -> dict[str, Any]:
    """The netlink attributes of an address given as "ip/len"."""
    iface = ipaddress.ip_interface(value)
    return {
        "address": str(iface.ip),
        "prefixlen": iface.network.prefixlen,
        "family": _family(value),
    }


async def set_addresses(ipr: Any, device: str, add: Iterable[str], remove: Iterable[str]) -> None:
    """Add then remove addresses on `device` (EEXIST/EADDRNOTAVAIL tolerated)."""
    found = await ipr.link_lookup(ifname=device)
    if not found:
        raise NetlinkError(errno.ENODEV, f"no device {device}")
    index = int(found[0])
    for value in add:
        attrs = _address_attrs(value)
        try:
            await ipr.addr("add", index=index, **attrs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    for value in remove:
        attrs = _address_attrs(value)
        try:
            await ipr.addr("del", index=index, **attrs)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise


async def read_static_routes(ipr: Any) -> frozenset[tuple[str, str]]:
    """(destination CIDR, next hop) of the main table's RTPROT_STATIC routes."""
    out: set[tuple[str, str]] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        async for msg in await ipr.route("dump", table=MAIN_TABLE, family=family):
            if int(msg["proto"]) != RTPROT_STATIC:
                continue
            gateway = msg.get("gateway")
            if gateway is None:
                continue
            dst = msg.get("dst") or ("0.0.0.0" if family == socket.AF_INET else "::")
            out.add((str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}")), str(gateway)))
    return frozenset(out)


def _static_route_attrs(destination: str, nexthop: str) -> dict[str, Any]:
    """The netlink attributes of a static route (RTPROT_STATIC) in the main table."""
    net = ipaddress.ip_network(destination)
    return {
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        "dst": str(net),
        "gateway": nexthop,
        "table": MAIN_TABLE,
        "proto": RTPROT_STATIC,
    }


async def replace_route(ipr: Any, destination: str, nexthop: str) -> None:
    await ipr.route("replace", **_static_route_attrs(destination, nexthop))


async def delete_route(ipr: Any, destination: str, nexthop: str) -> None:
    attrs = _static_route_attrs(destination, nexthop)
    try:
        await ipr.route("del", **attrs)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise


def _read_forwarding() -> bool:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip() == "1"


def _write_forwarding() -> None:
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/forwarding"):
        with open(path, "w") as f:
            f.write("1")


async def ip_forwarding(netns: str) -> bool:
    return await sysctl.run_in_netns(netns, _read_forwarding)


async def enable_ip_forwarding(netns: str) -> None:
    await sysctl.run_in_netns(netns, _write_forwarding)


async def conntrack_delete(netns: str, *args: str) -> None:
    """``conntrack -D <args>`` in `netns` (no matching entry is not an error)."""
    await run_cmd("ip", "netns", "exec", netns, "conntrack", "-D", *args, ok_codes=(0, 1))


def _garp_frames(mac: str, addresses: Iterable[str]) -> list[bytes]:
    hw = bytes.fromhex(mac.replace(":", ""))
    frames = []
    for address in addresses:
        ip = ipaddress.ip_address(address.split("/")[0])
        if ip.version != 4:
            continue
        arp = (
            b"\x00\x01\x08\x00\x06\x04\x00\x01"  # Ethernet/IPv4, request
            + hw
            + ip.packed
            + b"\x00" * 6
            + ip.packed
        )
        frames.append(b"\xff" * 6 + hw + b"\x08\x06" + arp)
    return frames


def _send_frames(batches: list[tuple[str, list[bytes]]]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        for device, frames in batches:
            for frame in frames:
                s.sendto(frame, (device, 0))


async def send_garp(netns: str, announcements: Iterable[tuple[str, str, Iterable[str]]]) -> None:
    """Gratuitous ARP for (device, MAC, addresses) in `netns`, from one thread there:
    neighbours update their ARP caches and bridges on the way learn where the MAC now is
    (a router that moved to another node is reachable at once, not after the old
    entries age out)."""
    batches = [(dev, _garp_frames(mac, addrs)) for dev, mac, addrs in announcements]
    batches = [(dev, frames) for dev, frames in batches if frames]
    if batches:
        await sysctl.run_in_netns(netns, lambda: _send_frames(batches))
