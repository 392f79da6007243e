"""``baryon port plug`` / ``baryon port unplug``: attach a workload namespace to a port.

The port's MAC, MTU (its network's), addresses and gateway come from the API; the
veth pair is made by ``drivers.plug`` in this process (so it must run on the node,
as root). The node's agent then wires the host end into the port's network.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress

from baryon.v1 import network_pb2, port_pb2, subnet_pb2
from cli.client import CliError
from cli.networks import NETWORK
from cli.ports import PORT
from cli.resource import Command, Invocation
from cli.subnets import SUBNET
from drivers.plug import PlugError, plug, unplug


def _add_node_netns(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-netns",
        metavar="NODE_NS",
        default=None,
        help="namespace of the node's dataplane (the agent's --netns; default: this one)",
    )


class PlugCommand(Command):
    verb = "plug"
    summary = "plug a network namespace into a {title} (veth pair, os-vif style)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.add_ref(parser)
        parser.add_argument("--netns", required=True, metavar="NS", help="workload namespace")
        parser.add_argument("--ifname", default="eth0", help="interface name in NS (eth0)")
        _add_node_netns(parser)
        parser.add_argument(
            "--static-ip",
            action="store_true",
            help="configure the port's fixed IPs and gateway in NS (otherwise use DHCP)",
        )

    def run(self, inv: Invocation) -> int:
        ns = inv.ns
        port = inv.resolver.find(PORT, ns.ref)
        assert isinstance(port, port_pb2.Port)
        net = inv.resolver.find(NETWORK, port.network_id)
        assert isinstance(net, network_pb2.Network)
        addresses: list[tuple[str, int]] = []
        gateway: str | None = None
        if ns.static_ip:
            for fixed in port.fixed_ips.ips:
                subnet = inv.resolver.find(SUBNET, fixed.subnet_id)
                assert isinstance(subnet, subnet_pb2.Subnet)
                prefixlen = ipaddress.ip_network(subnet.cidr, strict=False).prefixlen
                addresses.append((fixed.ip_address, prefixlen))
                if gateway is None and subnet.gateway_ip:
                    gateway = subnet.gateway_ip
        try:
            device = asyncio.run(
                plug(
                    port.id,
                    port.mac_address,
                    net.mtu or 1500,
                    netns=ns.netns,
                    ifname=ns.ifname,
                    node_netns=ns.node_netns,
                    fixed_ips=addresses or None,
                    gateway=gateway,
                    # OVS's userspace datapath drops TCP with offloaded checksums.
                    disable_tx_offload=port.binding_vif_type == "ovs",
                )
            )
        except (PlugError, OSError) as err:
            raise CliError(f"cannot plug port {port.id}: {err}") from None
        print(f"plugged port {port.id} into {ns.netns} as {ns.ifname} (host device {device})")
        return 0


class UnplugCommand(Command):
    verb = "unplug"
    summary = "remove the veth pair that plugs a workload into a {title}"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.add_ref(parser)
        _add_node_netns(parser)

    def run(self, inv: Invocation) -> int:
        port = inv.resolver.find(PORT, inv.ns.ref)
        assert isinstance(port, port_pb2.Port)
        try:
            asyncio.run(unplug(port.id, node_netns=inv.ns.node_netns))
        except OSError as err:
            raise CliError(f"cannot unplug port {port.id}: {err}") from None
        print(f"unplugged port {port.id}")
        return 0


def extra_commands() -> list[Command]:
    """Commands beyond the resources' standard verbs (registered by cli.main)."""
    from cli.agents import agent_commands

    return [PlugCommand(PORT), UnplugCommand(PORT), *agent_commands()]
