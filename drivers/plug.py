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
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from drivers import sysctl
from drivers.model import normalize_mac, owned_alias, port_device_name
from drivers.netlink import (
    LinkSetting,
    RtnlDumper,
    netns_exists,
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
    node = node_nl if node_nl is not None else RtnlDumper(node_netns)
    workload = workload_nl if workload_nl is not None else RtnlDumper(netns)
    try:
        try:
            # The common case in one request: the pair, the workload end already in
            # its namespace with the port's MAC and MTU.
            await node.create_veth(host_dev, mtu, ifname, mac, netns)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            await _reuse_pair(node, workload, host_dev, mac, mtu, netns, ifname)
        # Host end: no IPv6 of its own (it only forwards) before it comes up, the
        # network's MTU, marked ours. Workload end: the port's MAC and MTU, up.
        await sysctl.disable_ipv6(node_netns, [host_dev])
        alias = owned_alias(port_id)
        _check(await node.set_links([LinkSetting(host_dev, mtu=mtu, alias=alias, up=True)]))
        workload_end = LinkSetting(ifname, mac=mac, mtu=mtu, up=True)
        _check(await workload.set_links([LinkSetting("lo", up=True), workload_end]))
    finally:
        if node_nl is None:
            node.close()
        if workload_nl is None:
            workload.close()
    if fixed_ips:
        ipr = open_iproute(netns)
        try:
            await _configure_addresses(ipr, ifname, fixed_ips, gateway)
        finally:
            ipr.close()
    if disable_tx_offload:
        await _ethtool_tx_off(netns, ifname)
    return host_dev


async def _reuse_pair(
    node: RtnlDumper,
    workload: RtnlDumper,
    host_dev: str,
    mac: str,
    mtu: int,
    netns: str,
    ifname: str,
) -> None:
    """Plugging again: keep a pair whose both ends exist, recreate one whose workload
    end is gone, refuse a workload name taken by something else."""
    host_link = await node.named_links_ipv6([host_dev])
    inner = [link for link, _ in await workload.named_links_ipv6([ifname])]
    if host_link and not inner:
        await node.delete_link(host_dev)  # a leftover whose workload end is gone
        host_link = []
    if not host_link:
        if inner:
            raise PlugError(f"{ifname} already exists in namespace {netns!r}")
        await node.create_veth(host_dev, mtu, ifname, mac, netns)
    elif inner and inner[0].kind != "veth":
        raise PlugError(f"{ifname} in namespace {netns!r} is a {inner[0].kind}, not a veth")


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
    node = RtnlDumper(node_netns)
    try:
        await node.delete_link(port_device_name(port_id))
    finally:
        node.close()
