"""Small typed helpers over pyroute2's asyncio RTNL API (pyroute2 itself is untyped)."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
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


# -- raw dumps -------------------------------------------------------------------------
#
# pyroute2 decodes every attribute of every message in pure Python (~0.5 ms per link);
# a read-back of a host needs a handful of attributes. RtnlDumper sends the dump request
# itself and decodes only those, with struct, into the same Link / FdbEntry values as
# _parse_link / dump_tunnel_fdb (same pyroute2 decoding rules, e.g. l2addr = 6 bytes).

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # len, type
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_U8 = struct.Struct("=B")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct(">H")
_I32 = struct.Struct("=i")

_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLM_F_DUMP_INTR = 0x10
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLA_F_NESTED = 0x8000
_IFLA_NET_NS_FD = 28
_VETH_INFO_PEER = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_RTM_GETNEIGH = 30
_AF_BRIDGE = 7
_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_LINK = 5
_IFLA_MASTER = 10
_IFLA_LINKINFO = 18
_IFLA_IFALIAS = 20
_IFLA_AF_SPEC = 26
_IFLA_INET6_CONF = 2
_DEVCONF_DISABLE_IPV6 = 26  # index into the IFLA_INET6_CONF array of s32
_IFLA_EXT_MASK = 29
_RTEXT_FILTER_SKIP_STATS = 1 << 3  # no counters: smaller messages (ignored by old kernels)
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_IFLA_VXLAN_ID = 1
_IFLA_VXLAN_LOCAL = 4
_IFLA_VXLAN_LEARNING = 7
_IFLA_VXLAN_PORT = 15
_IFLA_VLAN_ID = 1
_NDA_DST = 1
_NDA_LLADDR = 2
_NDA_MASTER = 9
_LINK_ATTRS = frozenset(
    (
        _IFLA_ADDRESS,
        _IFLA_IFNAME,
        _IFLA_MTU,
        _IFLA_LINK,
        _IFLA_MASTER,
        _IFLA_LINKINFO,
        _IFLA_IFALIAS,
        _IFLA_AF_SPEC,
    )
)
_FDB_ATTRS = frozenset((_NDA_DST, _NDA_LLADDR, _NDA_MASTER))
_RECV_SIZE = 1 << 17  # a dump chunk is at most 32 KiB
_GETLINK_CHUNK = 16
_SETLINK_CHUNK = 64  # acks are small
_DUMP_RETRIES = 3  # dumps interrupted by concurrent changes (NLM_F_DUMP_INTR) are redone


def _attrs(
    data: bytes, off: int, end: int, wanted: frozenset[int] | None = None
) -> dict[int, tuple[int, int]]:
    """type -> (start, end) of the payload of each attribute in data[off:end]."""
    out: dict[int, tuple[int, int]] = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(data, off)
        if length < 4 or off + length > end:
            break
        kind &= _NLA_TYPE_MASK
        if wanted is None or kind in wanted:
            out[kind] = (off + 4, off + length)
        off += (length + 3) & ~3
    return out


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, sequence, body start, end) of each netlink message in `data`."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        yield kind, flags, seq, off + _NLMSGHDR.size, off + length
        off += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    attr = _NLA.pack(4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def _raise_on_error(kind: int, data: bytes, body_off: int) -> None:
    """NetlinkError if this answer is an error (not an ack)."""
    code = -int(_I32.unpack_from(data, body_off)[0]) if kind == _NLMSG_ERROR else 0
    if code:
        raise NetlinkError(code, os.strerror(code))


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def _name_attr(name: str) -> bytes:
    return _attr(_IFLA_IFNAME, name.encode() + b"\0")


def _asciiz(data: bytes, span: tuple[int, int]) -> str:
    raw = data[span[0] : span[1]].split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return str(raw)


def _u32(data: bytes, span: tuple[int, int] | None) -> int:
    return int(_U32.unpack_from(data, span[0])[0]) if span is not None else 0


def _mac(data: bytes, start: int) -> str:
    return ":".join(f"{b:02x}" for b in data[start : start + 6])


def _lladdr(raw: bytes) -> str:
    if len(raw) == 6:
        return ":".join(f"{b:02x}" for b in raw)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ":".join(f"{b:02x}" for b in raw)


def _raw_ipv6_disabled(data: bytes, span: tuple[int, int] | None) -> bool | None:
    """net.ipv6.conf.<dev>.disable_ipv6 from IFLA_AF_SPEC (the same value the sysctl
    file shows); None when the device has no IPv6 state (nor such a sysctl file)."""
    if span is None:
        return None
    inet6 = _attrs(data, span[0], span[1]).get(socket.AF_INET6)
    if inet6 is None:
        return None
    conf = _attrs(data, inet6[0], inet6[1]).get(_IFLA_INET6_CONF)
    if conf is None or conf[1] - conf[0] < (_DEVCONF_DISABLE_IPV6 + 1) * 4:
        return None
    return bool(_I32.unpack_from(data, conf[0] + _DEVCONF_DISABLE_IPV6 * 4)[0] == 1)


def _parse_raw_link(data: bytes, off: int, end: int) -> Link:
    """_parse_link over the raw RTM_NEWLINK message body data[off:end]."""
    return _parse_raw_link_ipv6(data, off, end)[0]


def _parse_raw_link_ipv6(data: bytes, off: int, end: int) -> tuple[Link, bool | None]:
    """_parse_raw_link, and whether IPv6 is disabled on the link (None: no IPv6)."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, off)
    attrs = _attrs(data, off + _IFINFOMSG.size, end, _LINK_ATTRS)
    kind: str | None = None
    vxlan: VxlanAttrs | None = None
    vlan_id: int | None = None
    info = attrs.get(_IFLA_LINKINFO)
    if info is not None:
        linkinfo = _attrs(data, info[0], info[1])
        kind_span = linkinfo.get(_IFLA_INFO_KIND)
        if kind_span is not None:
            kind = _asciiz(data, kind_span)
        info_data = linkinfo.get(_IFLA_INFO_DATA)
        if kind == "vxlan":
            vx = _attrs(data, info_data[0], info_data[1]) if info_data is not None else {}
            local = vx.get(_IFLA_VXLAN_LOCAL)
            port = vx.get(_IFLA_VXLAN_PORT)
            learning = vx.get(_IFLA_VXLAN_LEARNING)
            vxlan = VxlanAttrs(
                vni=_u32(data, vx.get(_IFLA_VXLAN_ID)),
                local=(
                    socket.inet_ntop(socket.AF_INET, data[local[0] : local[0] + 4])
                    if local is not None
                    else None
                ),
                port=int(_BE16.unpack_from(data, port[0])[0]) if port is not None else 0,
                learning=bool(_U8.unpack_from(data, learning[0])[0]) if learning else False,
            )
        elif kind == "vlan" and info_data is not None:
            vid = _attrs(data, info_data[0], info_data[1]).get(_IFLA_VLAN_ID)
            vlan_id = int(_U16.unpack_from(data, vid[0])[0]) if vid is not None else None
    name = attrs.get(_IFLA_IFNAME)
    address = attrs.get(_IFLA_ADDRESS)
    alias = attrs.get(_IFLA_IFALIAS)
    master = _u32(data, attrs.get(_IFLA_MASTER))
    parent = _u32(data, attrs.get(_IFLA_LINK))
    link = Link(
        index=int(index),
        name=_asciiz(data, name) if name is not None else "None",
        kind=kind,
        master=master or None,
        mtu=_u32(data, attrs.get(_IFLA_MTU)),
        up=bool(flags & IFF_UP),
        lower_up=bool(flags & IFF_LOWER_UP),
        mac=_mac(data, address[0]) if address is not None else None,
        alias=_asciiz(data, alias) if alias is not None else None,
        parent=parent or None,
        vxlan=vxlan,
        vlan_id=vlan_id,
    )
    return link, _raw_ipv6_disabled(data, attrs.get(_IFLA_AF_SPEC))


@dataclass(frozen=True, slots=True)
class LinkSetting:
    """What RtnlDumper.set_links sets on one link (None: leave as is)."""

    name: str
    mtu: int | None = None
    master: int | None = None
    up: bool | None = None
    alias: str | None = None
    mac: str | None = None


class RtnlDumper:
    """A raw rtnetlink socket in `netns` (None: the current namespace) for the dumps a
    read-back needs, decoded without pyroute2. Dumps run one at a time; a dump that was
    interrupted (cancelled, failed) leaves the socket to be reopened by the next one.
    Opening a socket in a named namespace joins it from a throwaway thread (no fork).
    """

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = asyncio.Lock()

    def _open(self) -> socket.socket:
        if self.netns is not None and not netns_exists(self.netns):
            raise FileNotFoundError(f"network namespace {self.netns!r} does not exist")
        sock = _socket_in_netns(
            self.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _dump(self, msg_type: int, body: bytes) -> tuple[list[tuple[bytes, int, int]], bool]:
        """(data, start, end) of the body of every message of one dump, and whether the
        kernel flagged the dump as interrupted (NLM_F_DUMP_INTR)."""
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._sock = self._open()
        sock = self._sock
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0
        )
        out: list[tuple[bytes, int, int]] = []
        interrupted = False
        try:
            await loop.sock_sendall(sock, header + body)
            while True:
                data = await loop.sock_recv(sock, _RECV_SIZE)
                if not data:
                    raise ConnectionError("netlink socket closed")
                for kind, flags, mseq, body_off, end in _messages(data):
                    if mseq != seq:
                        continue
                    if kind == _NLMSG_DONE:
                        return out, interrupted
                    if kind == _NLMSG_ERROR:
                        code = -int(_I32.unpack_from(data, body_off)[0])
                        if code == 0:
                            continue
                        raise NetlinkError(code, os.strerror(code))
                    if flags & _NLM_F_DUMP_INTR:
                        interrupted = True
                    out.append((data, body_off, end))
        except BaseException:
            # The rest of this dump may still be queued (or running) in the kernel.
            self.close()
            raise

    async def _dump_consistent(self, msg_type: int, body: bytes) -> list[tuple[bytes, int, int]]:
        async with self._lock:
            for _ in range(_DUMP_RETRIES):
                msgs, interrupted = await self._dump(msg_type, body)
                if not interrupted:
                    break
            return msgs

    async def links(self) -> list[Link]:
        """Every link of the namespace (what dump_links returns)."""
        return [link for link, _ in await self.links_ipv6()]

    async def links_ipv6(self) -> list[tuple[Link, bool | None]]:
        """Every link of the namespace with whether IPv6 is disabled on it (None: the
        link has no IPv6 state, i.e. no net.ipv6.conf.<name> sysctls)."""
        request = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _NLA.pack(8, _IFLA_EXT_MASK)
        request += _U32.pack(_RTEXT_FILTER_SKIP_STATS)
        msgs = await self._dump_consistent(_RTM_GETLINK, request)
        return [_parse_raw_link_ipv6(data, start, end) for data, start, end in msgs]

    async def named_links_ipv6(self, names: Iterable[str]) -> list[tuple[Link, bool | None]]:
        """What links_ipv6 returns, for just the links called `names` that exist: one
        RTM_GETLINK per name, all sent at once (a scoped read-back costs O(names), not
        O(links in the namespace))."""
        wanted = sorted(set(names))
        out: list[tuple[Link, bool | None]] = []
        # In chunks: a few dozen answers (~2 KB each, more in socket memory) at once
        # would overflow the receive buffer (ENOBUFS).
        for i in range(0, len(wanted), _GETLINK_CHUNK):
            out += await self._named_links(wanted[i : i + _GETLINK_CHUNK])
        return out

    async def _named_links(self, wanted: list[str]) -> list[tuple[Link, bool | None]]:
        requests = []
        for name in wanted:
            mask = _NLA.pack(8, _IFLA_EXT_MASK) + _U32.pack(_RTEXT_FILTER_SKIP_STATS)
            body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name_attr(name) + mask
            requests.append((_RTM_GETLINK, _NLM_F_REQUEST, body))
        out: list[tuple[Link, bool | None]] = []
        for kind, data, body_off, end in await self._exchange(requests):
            if kind == _NLMSG_ERROR:
                code = -int(_I32.unpack_from(data, body_off)[0])
                if code not in (0, errno.ENODEV):
                    raise NetlinkError(code, os.strerror(code))
            elif kind == _RTM_NEWLINK:
                out.append(_parse_raw_link_ipv6(data, body_off, end))
        return out

    async def set_links(self, settings: Sequence[LinkSetting]) -> dict[str, int]:
        """Apply many links' settings at once: one RTM_NEWLINK (set) per link, sent
        together in chunks, each acknowledged. name -> errno of those that failed."""
        failed: dict[str, int] = {}
        for i in range(0, len(settings), _SETLINK_CHUNK):
            chunk = settings[i : i + _SETLINK_CHUNK]
            requests = []
            for st in chunk:
                body = _name_attr(st.name)
                if st.mtu is not None:
                    body += _NLA.pack(8, _IFLA_MTU) + _U32.pack(st.mtu)
                if st.master is not None:
                    body += _NLA.pack(8, _IFLA_MASTER) + _U32.pack(st.master)
                if st.alias is not None:
                    body += _attr(_IFLA_IFALIAS, st.alias.encode())
                if st.mac is not None:
                    body += _attr(_IFLA_ADDRESS, _mac_bytes(st.mac))
                flags = change = 0
                if st.up is not None:
                    change = IFF_UP
                    flags = IFF_UP if st.up else 0
                body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, change) + body
                requests.append((_RTM_NEWLINK, _NLM_F_REQUEST | _NLM_F_ACK, body))
            answers = await self._exchange(requests)
            for st, (kind, data, body_off, _end) in zip(chunk, answers, strict=True):
                code = -int(_I32.unpack_from(data, body_off)[0]) if kind == _NLMSG_ERROR else 0
                if code:
                    failed[st.name] = code
        return failed

    async def create_veth(
        self, name: str, mtu: int, peer: str, peer_mac: str, peer_netns: str
    ) -> None:
        """A veth pair in one request: `name` here (down), `peer` in namespace
        `peer_netns` with MAC `peer_mac`, both with `mtu`. NetlinkError(EEXIST) when
        either name is taken (nothing is created then)."""
        fd = os.open(netns_path(peer_netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer_attrs = (
                _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                + _name_attr(peer)
                + _attr(_IFLA_ADDRESS, _mac_bytes(peer_mac))
                + _NLA.pack(8, _IFLA_MTU)
                + _U32.pack(mtu)
                + _NLA.pack(8, _IFLA_NET_NS_FD)
                + _U32.pack(fd)
            )
            info = _attr(_IFLA_INFO_KIND, b"veth") + _attr(
                _IFLA_INFO_DATA | _NLA_F_NESTED, _attr(_VETH_INFO_PEER, peer_attrs)
            )
            body = (
                _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                + _name_attr(name)
                + _NLA.pack(8, _IFLA_MTU)
                + _U32.pack(mtu)
                + _attr(_IFLA_LINKINFO | _NLA_F_NESTED, info)
            )
            flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
            ((kind, data, body_off, _end),) = await self._exchange([(_RTM_NEWLINK, flags, body)])
        finally:
            os.close(fd)
        _raise_on_error(kind, data, body_off)

    async def delete_link(self, name: str) -> bool:
        """Delete link `name` (a veth: both ends); False if there was none."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name_attr(name)
        request = (_RTM_DELLINK, _NLM_F_REQUEST | _NLM_F_ACK, body)
        ((kind, data, body_off, _end),) = await self._exchange([request])
        try:
            _raise_on_error(kind, data, body_off)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True

    async def _exchange(
        self, requests: list[tuple[int, int, bytes]]
    ) -> list[tuple[int, bytes, int, int]]:
        """Send (type, flags, body) requests in one write; the one answer to each, in
        request order, as (type, data, body start, end): the object asked for, or an
        error/ack message."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._sock is None:
                self._sock = self._open()
            sock = self._sock
            index: dict[int, int] = {}
            batch = b""
            for i, (msg_type, flags, body) in enumerate(requests):
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                index[self._seq] = i
                batch += _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, self._seq, 0)
                batch += body
            answers: list[tuple[int, bytes, int, int] | None] = [None] * len(requests)
            try:
                await loop.sock_sendall(sock, batch)
                while index:
                    data = await loop.sock_recv(sock, _RECV_SIZE)
                    if not data:
                        raise ConnectionError("netlink socket closed")
                    for kind, _flags, mseq, body_off, end in _messages(data):
                        i = index.pop(mseq, -1)
                        if i >= 0:
                            answers[i] = (kind, data, body_off, end)
            except BaseException:
                self.close()  # answers may still be queued: start afresh next time
                raise
            return [a for a in answers if a is not None]

    async def tunnel_fdb(self, ifindexes: set[int] | None = None) -> dict[int, set[FdbEntry]]:
        """What dump_tunnel_fdb returns, optionally only for the devices `ifindexes`."""
        request = _NDMSG.pack(_AF_BRIDGE, 0, 0, 0, 0)
        msgs = await self._dump_consistent(_RTM_GETNEIGH, request)
        out: dict[int, set[FdbEntry]] = {}
        for data, start, end in msgs:
            _family, ifindex, _state, flags, _type = _NDMSG.unpack_from(data, start)
            if not flags & _NTF_SELF or (ifindexes is not None and ifindex not in ifindexes):
                continue
            attrs = _attrs(data, start + _NDMSG.size, end, _FDB_ATTRS)
            dst = attrs.get(_NDA_DST)
            mac = attrs.get(_NDA_LLADDR)
            if dst is None or mac is None or _u32(data, attrs.get(_NDA_MASTER)):
                continue
            raw_dst = data[dst[0] : dst[1]]
            family = socket.AF_INET6 if len(raw_dst) > 8 else socket.AF_INET
            entry = FdbEntry(
                _lladdr(data[mac[0] : mac[1]]).lower(), socket.inet_ntop(family, raw_dst)
            )
            out.setdefault(int(ifindex), set()).add(entry)
        return out


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


_RTMGRP_LINK = 1


class LinkMonitor:
    """The kernel's link notifications (RTMGRP_LINK) in `netns`, decoded only as far
    as the link's name: a node agent wakes on every change of every port device, and
    pyroute2 would decode every attribute of every message (~2 KB each)."""

    def __init__(self, netns: str | None) -> None:
        if netns is not None and not netns_exists(netns):
            raise FileNotFoundError(f"network namespace {netns!r} does not exist")
        sock = _socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, _RTMGRP_LINK))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        self._sock.close()

    async def changed(self) -> list[str]:
        """Wait for notifications; the names of the links they are about. Raises
        OSError (ENOBUFS) when the kernel dropped some: the caller must resync."""
        data = await asyncio.get_running_loop().sock_recv(self._sock, _RECV_SIZE)
        names: list[str] = []
        for kind, _flags, _seq, body, end in _messages(data):
            if kind not in (_RTM_NEWLINK, _RTM_DELLINK) or end - body < _IFINFOMSG.size:
                continue
            name = _attrs(data, body + _IFINFOMSG.size, end, _NAME_ONLY).get(_IFLA_IFNAME)
            if name is not None:
                names.append(_asciiz(data, name))
        return names


_NAME_ONLY = frozenset({_IFLA_IFNAME})
_LIBC = ctypes.CDLL(None, use_errno=True)
_PYROUTE2_CREATE_SOCKET = pyroute2_netns.create_socket


def avoid_forking_for_netns_sockets() -> None:
    """Open pyroute2 sockets in named namespaces from a thread instead of a forked
    helper: a process holding live gRPC objects must never fork (the agent)."""
    pyroute2_netns.create_socket = _socket_in_netns
