"""Small typed helpers over pyroute2's asyncio RTNL API (pyroute2 itself is untyped)."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import flags as ndmsg_flags
from pyroute2.netlink.rtnl.ndmsg import states as ndmsg_states

NETNS_RUN_DIR = "/run/netns"
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
ZERO_MAC = "00:00:00:00:00:00"
_FDB_STATE = ndmsg_states["noarp"] | ndmsg_states["permanent"]
_NTF_SELF = ndmsg_flags["self"]
# An interface index no kernel hands out soon: probes point at it on purpose.
PROBE_BOGUS_IFINDEX = 0x7FFFFFF0


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def open_iproute(netns: str | None) -> Any:
    """An AsyncIPRoute in `netns` (None: the current namespace).

    Never creates the namespace (pyroute2 would by default): a missing one is an error.
    Keep the socket: opening one in a namespace forks a short-lived helper.
    """
    if netns is None:
        return AsyncIPRoute(groups=0)
    if not netns_exists(netns):
        raise FileNotFoundError(f"network namespace {netns!r} does not exist")
    return AsyncIPRoute(netns=netns, flags=0, groups=0)


def nl_errno(exc: BaseException) -> int | None:
    if isinstance(exc, NetlinkError):
        return int(exc.code)
    if isinstance(exc, OSError):
        return exc.errno
    return None


def is_errno(exc: BaseException, *codes: int) -> bool:
    return nl_errno(exc) in codes


@dataclass(frozen=True, slots=True)
class VxlanAttrs:
    vni: int
    local: str | None
    port: int
    learning: bool


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    mtu: int
    up: bool
    lower_up: bool
    mac: str | None
    alias: str | None
    parent: int | None  # IFLA_LINK: vlan parent, veth peer (maybe in another netns)
    vxlan: VxlanAttrs | None = None
    vlan_id: int | None = None


def _parse_link(msg: Any) -> Link:
    kind = msg.get(("linkinfo", "kind"))
    vxlan: VxlanAttrs | None = None
    vlan_id: int | None = None
    if kind == "vxlan":
        vxlan = VxlanAttrs(
            vni=int(msg.get(("linkinfo", "data", "vxlan_id")) or 0),
            local=msg.get(("linkinfo", "data", "vxlan_local")),
            port=int(msg.get(("linkinfo", "data", "vxlan_port")) or 0),
            learning=bool(msg.get(("linkinfo", "data", "vxlan_learning"))),
        )
    elif kind == "vlan":
        raw = msg.get(("linkinfo", "data", "vlan_id"))
        vlan_id = int(raw) if raw is not None else None
    flags = int(msg["flags"])
    master = msg.get("master")
    parent = msg.get("link")
    mac = msg.get("address")
    return Link(
        index=int(msg["index"]),
        name=str(msg.get("ifname")),
        kind=str(kind) if kind is not None else None,
        master=int(master) if master else None,
        mtu=int(msg.get("mtu") or 0),
        up=bool(flags & IFF_UP),
        lower_up=bool(flags & IFF_LOWER_UP),
        mac=str(mac).lower() if mac else None,
        alias=msg.get("ifalias"),
        parent=int(parent) if parent else None,
        vxlan=vxlan,
        vlan_id=vlan_id,
    )


async def dump_links(ipr: Any) -> list[Link]:
    return [_parse_link(msg) async for msg in await ipr.link("dump")]


async def get_link(ipr: Any, name: str) -> Link | None:
    try:
        msgs = await ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    for msg in msgs:
        return _parse_link(msg)
    return None


async def link_index(ipr: Any, name: str) -> int:
    """The ifindex of `name`; raises NetlinkError(ENODEV) when it does not exist."""
    found = await ipr.link_lookup(ifname=name)
    if not found:
        raise NetlinkError(errno.ENODEV, f"no device {name}")
    return int(found[0])


@dataclass(frozen=True, slots=True, order=True)
class FdbEntry:
    """A VXLAN forwarding entry: frames for `mac` go to the VTEP `dst`."""

    mac: str
    dst: str


async def dump_tunnel_fdb(ipr: Any) -> dict[int, set[FdbEntry]]:
    """ifindex -> the device's own ("self") FDB entries that point at a remote VTEP."""
    out: dict[int, set[FdbEntry]] = {}
    async for msg in await ipr.fdb("dump"):
        dst = msg.get("dst")
        mac = msg.get("lladdr")
        if dst is None or mac is None or msg.get("master"):
            continue
        if not int(msg["flags"]) & _NTF_SELF:
            continue
        out.setdefault(int(msg["ifindex"]), set()).add(FdbEntry(str(mac).lower(), str(dst)))
    return out


async def fdb_append(ipr: Any, ifindex: int, entry: FdbEntry) -> None:
    """Add one more (mac, dst) (the only way to flood to several VTEPs); EEXIST is fine."""
    try:
        await ipr.fdb("append", ifindex=ifindex, lladdr=entry.mac, dst=entry.dst)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


async def fdb_replace(ipr: Any, ifindex: int, entry: FdbEntry) -> None:
    """Point a unicast MAC at exactly one VTEP (creating or moving the entry)."""
    # pyroute2 only fills in state/flags for add/append/del: without NTF_SELF the
    # request would land in the bridge's FDB instead of the VXLAN device's.
    await ipr.fdb(
        "replace",
        ifindex=ifindex,
        lladdr=entry.mac,
        dst=entry.dst,
        state=_FDB_STATE,
        flags=_NTF_SELF,
    )


async def fdb_delete(ipr: Any, ifindex: int, entry: FdbEntry) -> None:
    try:
        await ipr.fdb("del", ifindex=ifindex, lladdr=entry.mac, dst=entry.dst)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV):
            raise


async def delete_link(ipr: Any, name: str) -> None:
    """Delete a link if it exists."""
    try:
        await ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


async def probe_link_kind(ipr: Any, kind: str, **attrs: Any) -> bool:
    """Whether the kernel knows link kind `kind`, without leaving anything behind.

    The request points at a nonexistent lower device, so a kernel that knows the kind
    rejects it for that (ENODEV/EINVAL) after looking the kind up; a kernel that lacks
    it answers EOPNOTSUPP ("Unknown device type"). Should a kernel accept it anyway,
    the link is deleted again.
    """
    name = "bqprobe" + uuid.uuid4().hex[:8]
    try:
        await ipr.link("add", ifname=name, kind=kind, **attrs)
    except NetlinkError as exc:
        return int(exc.code) != errno.EOPNOTSUPP
    await delete_link(ipr, name)
    return True


_CLONE_NEWNET = 0x40000000


def _socket_in_netns(
    netns: str | None = None,
    family: int = socket.AF_INET,
    socket_type: int = socket.SOCK_STREAM,
    proto: int = 0,
    fileno: int | None = None,
    flags: int = os.O_CREAT,
    libc: Any = None,
    timeout: Any = None,
) -> socket.socket:
    """pyroute2's netns.create_socket without its helper process: a throwaway thread
    joins the namespace (setns with CLONE_NEWNET affects only the calling thread),
    opens the socket there and exits. The socket stays in that namespace."""
    if fileno is not None:
        return socket.socket(fileno=fileno)
    if netns is None:
        return socket.socket(family, socket_type, proto)
    if not netns_exists(netns):
        if flags & os.O_CREAT:
            return _PYROUTE2_CREATE_SOCKET(  # type: ignore[no-any-return]
                netns=netns, family=family, socket_type=socket_type, proto=proto, flags=flags
            )
        raise FileNotFoundError(f"network namespace {netns!r} does not exist")
    out: list[socket.socket | BaseException] = []

    def body() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out.append(socket.socket(family, socket_type, proto))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=body, name=f"netns-socket-{netns}", daemon=True)
    thread.start()
    thread.join()
    result = out[0]
    if isinstance(result, BaseException):
        raise result
    return result


_LIBC = ctypes.CDLL(None, use_errno=True)
_PYROUTE2_CREATE_SOCKET = pyroute2_netns.create_socket


def avoid_forking_for_netns_sockets() -> None:
    """Open pyroute2 sockets in named namespaces from a thread instead of a forked
    helper: a process holding live gRPC objects must never fork (the agent)."""
    pyroute2_netns.create_socket = _socket_in_netns
