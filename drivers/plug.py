"""Plugging a workload (a network namespace) into a port, os-vif style.

``plug`` creates a veth pair: the host end, named like Neutron's tap device
("tap" + port id[:11]), stays in the node's namespace for the mechanism driver to
wire; the other end goes into the workload namespace with the port's MAC and MTU.
With ``fixed_ips`` it also configures addresses and a default route (the
``baryon port plug --static-ip`` case; otherwise the workload runs a DHCP client).
The host end carries the ifalias ``baryon-port:<port id>``, which tells drivers that
Baryon made it and may delete it when the port goes away.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from drivers import sysctl
from drivers.model import normalize_mac, owned_alias, port_device_name
from drivers.netlink import (
    LinkSetting,
    RtnlDumper,
    delete_link,
    get_link,
    netns_exists,
    netns_path,
    open_iproute,
)


class PlugError(Exception):
    pass


async def plug(
    port_id: str,
    mac: str,
    mtu: int,
    *,
    netns: str,
    ifname: str = "eth0",
    node_netns: str | None = None,
    fixed_ips: Sequence[tuple[str, int]] | None = None,
    gateway: str | None = None,
    disable_tx_offload: bool = False,
    node_nl: RtnlDumper | None = None,
    workload_nl: RtnlDumper | None = None,
) -> str:
    """Plug workload namespace `netns` into port `port_id`; returns the host device name.

    Idempotent: plugging again reconfigures the existing pair (MAC, MTU, addresses,
    route); a host end left without its workload end is recreated. node_nl /
    workload_nl: raw netlink sockets of node_netns / netns to use (and leave open), for
    a caller plugging many workloads.
    """
    mac = normalize_mac(mac)
    host_dev = port_device_name(port_id)
    if not netns_exists(netns):
        raise PlugError(f"workload namespace {netns!r} does not exist")
    node_raw = node_nl if node_nl is not None else RtnlDumper(node_netns)
    workload_raw = workload_nl if workload_nl is not None else RtnlDumper(netns)
    pair = _Pair(port_id, host_dev, mac, mtu, netns, ifname, node_netns)
    try:
        fresh = await _plug_new(node_raw, workload_raw, pair)
    finally:
        if node_nl is None:
            node_raw.close()
        if workload_nl is None:
            workload_raw.close()
    if not fresh:
        await _replug(pair)
    if fixed_ips:
        workload = open_iproute(netns)
        try:
            await _configure_addresses(workload, ifname, fixed_ips, gateway)
        finally:
            workload.close()
    return await _finish(host_dev, netns, ifname, disable_tx_offload)


@dataclass(frozen=True, slots=True)
class _Pair:
    """What one plug wires: the port's veth pair and where its ends go."""

    port_id: str
    host_dev: str
    mac: str
    mtu: int
    netns: str
    ifname: str
    node_netns: str | None


async def _replug(pair: _Pair) -> None:
    """The idempotent path, when either end exists already: check what is there,
    recreate a host end left alone, and (re)configure both ends."""
    port_id, host_dev, mac, mtu = pair.port_id, pair.host_dev, pair.mac, pair.mtu
    netns, ifname, node_netns = pair.netns, pair.ifname, pair.node_netns
    node = open_iproute(node_netns)
    workload = open_iproute(netns)
    try:
        host_link = await get_link(node, host_dev)
        inner = await get_link(workload, ifname)
        if host_link is not None and inner is None:
            await delete_link(node, host_dev)  # a leftover whose workload end is gone
            host_link = None
        if host_link is None:
            if inner is not None:
                raise PlugError(f"{ifname} already exists in namespace {netns!r}")
            await node.link(
                "add",
                ifname=host_dev,
                kind="veth",
                mtu=mtu,
                peer={"ifname": ifname, "net_ns_fd": netns_path(netns), "address": mac, "mtu": mtu},
            )
        elif inner is not None and inner.kind != "veth":
            raise PlugError(f"{ifname} in namespace {netns!r} is a {inner.kind}, not a veth")
        # Host end: no IPv6 of its own (it only forwards), marked as ours, up.
        await sysctl.disable_ipv6(node_netns, [host_dev])
        await node.link("set", ifname=host_dev, mtu=mtu, ifalias=owned_alias(port_id))
        await node.link("set", ifname=host_dev, state="up")
        # Workload end.
        await workload.link("set", ifname="lo", state="up")
        await workload.link("set", ifname=ifname, address=mac, mtu=mtu)
        await workload.link("set", ifname=ifname, state="up")
    finally:
        node.close()
        workload.close()


async def _finish(host_dev: str, netns: str, ifname: str, disable_tx_offload: bool) -> str:
    if disable_tx_offload:
        await _ethtool_tx_off(netns, ifname)
    return host_dev


async def _plug_new(node: RtnlDumper, workload: RtnlDumper, pair: _Pair) -> bool:
    """The common case in a few pipelined netlink messages: the pair is created with
    the workload end's name, namespace, MAC and MTU in one request. False (nothing
    done) when either name exists already: the caller takes the idempotent path."""
    try:
        await node.create_veth(pair.host_dev, pair.mtu, pair.ifname, pair.mac, pair.netns)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    # Host end: no IPv6 of its own (it only forwards) before it comes up, marked ours.
    await sysctl.disable_ipv6(pair.node_netns, [pair.host_dev])
    host_end = LinkSetting(pair.host_dev, alias=owned_alias(pair.port_id), up=True)
    _check(await node.set_links([host_end]))
    workload_end = LinkSetting(pair.ifname, up=True)
    _check(await workload.set_links([LinkSetting("lo", up=True), workload_end]))
    return True


def _check(failed: dict[str, int]) -> None:
    for name, code in failed.items():
        raise NetlinkError(code, f"{name}: {os.strerror(code)}")


async def _configure_addresses(
    ipr: Any, ifname: str, fixed_ips: Sequence[tuple[str, int]], gateway: str | None
) -> None:
    index = (await ipr.link_lookup(ifname=ifname))[0]
    for address, prefixlen in fixed_ips:
        try:
            await ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    if gateway is not None:
        if ipaddress.ip_address(gateway).version == 6:
            family, dst = socket.AF_INET6, "::/0"
        else:
            family, dst = socket.AF_INET, "0.0.0.0/0"
        await ipr.route("replace", family=family, dst=dst, gateway=gateway, oif=index)


async def _ethtool_tx_off(netns: str, ifname: str) -> None:
    """TX checksum offload off on the workload end (needed with OVS's userspace datapath)."""
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        netns,
        "ethtool",
        "-K",
        ifname,
        "tx",
        "off",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise PlugError(f"ethtool -K {ifname} tx off in {netns}: {err.decode().strip()}")


async def unplug(port_id: str, *, node_netns: str | None = None) -> None:
    """Remove the port's veth pair (both ends); nothing to do if it is gone already."""
    node = open_iproute(node_netns)
    try:
        await delete_link(node, port_device_name(port_id))
    finally:
        node.close()
