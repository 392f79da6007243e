"""``baryon port ...``"""

from __future__ import annotations

import argparse

from google.protobuf.message import Message

from baryon.v1 import port_pb2
from cli.networks import network_option
from cli.options import (
    LIST,
    WRITE,
    BuildContext,
    KeyValueMap,
    Mode,
    Option,
    Repeated,
    Value,
    admin_state,
    attribute,
    key_values,
    named,
    port_security,
)
from cli.output import ID_NAME, Column
from cli.resource import Resource
from cli.security_groups import SECURITY_GROUP
from cli.subnets import SUBNET

FIXED_IP = key_values("subnet", "ip-address")
FIXED_IP_METAVAR = "subnet=SUBNET,ip-address=IP"


def _fixed_ip(spec: dict[str, str], ctx: BuildContext) -> port_pb2.FixedIP:
    ip = port_pb2.FixedIP(ip_address=spec.get("ip-address", ""))
    if "subnet" in spec:
        ip.subnet_id = ctx.resolve(SUBNET, spec["subnet"])
    return ip


def _address_pair(spec: dict[str, str], ctx: BuildContext) -> port_pb2.AllowedAddressPair:
    return port_pb2.AllowedAddressPair(
        ip_address=spec["ip-address"], mac_address=spec.get("mac-address", "")
    )


def _security_group(ref: str, ctx: BuildContext) -> str:
    return ctx.resolve(SECURITY_GROUP, ref)


class FixedIPFilter(Option):
    """list --fixed-ip subnet=S,ip-address=IP -> fixed_ip_subnet_id, fixed_ip_address."""

    def __init__(self) -> None:
        super().__init__(
            "--fixed-ip", "fixed_ip_address", LIST, "only ports with this subnet and/or address"
        )

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        parser.add_argument(
            self.flag, dest=self.dest, type=FIXED_IP, metavar=FIXED_IP_METAVAR, help=self.help
        )

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        spec: dict[str, str] | None = getattr(ns, self.dest, None)
        if not spec:
            return []
        assert isinstance(target, port_pb2.ListPortsRequest)
        ip = _fixed_ip(spec, ctx)
        target.fixed_ip_subnet_id, target.fixed_ip_address = ip.subnet_id, ip.ip_address
        return ["fixed_ip_subnet_id", "fixed_ip_address"]


PORT = Resource(
    path=("port",),
    message=port_pb2.Port,
    service=port_pb2.DESCRIPTOR.services_by_name["PortService"],
    metavar="PORT",
    options=(
        *named("port"),
        *network_option("port"),
        Repeated(
            "--fixed-ip",
            "fixed_ips",
            WRITE,
            "address for the port: from a subnet, a given address, or both (repeatable;"
            " default: one address per IPv4 subnet)",
            type=FIXED_IP,
            metavar=FIXED_IP_METAVAR,
            build=_fixed_ip,
            wrapper="ips",
            clear=("--no-fixed-ip", "no addresses; on set with --fixed-ip, replace them"),
            clear_modes=WRITE,
        ),
        FixedIPFilter(),
        *attribute(
            "--mac-address",
            "mac_address",
            "MAC address (default: generated; changing it is admin only)",
            "only the port with this MAC address",
            metavar="MAC",
        ),
        Value("--device", "device_id", WRITE, "ID of the device using the port", metavar="ID"),
        Value("--device-id", "device_id", LIST, "only ports of this device", metavar="ID"),
        *attribute(
            "--device-owner",
            "device_owner",
            "owner of the device, e.g. compute:nova or network:dhcp",
            "only ports with this device owner",
            metavar="OWNER",
        ),
        Repeated(
            "--security-group",
            "security_groups",
            WRITE,
            "security group (name or ID; repeatable; default: the project's default group)",
            metavar="GROUP",
            build=_security_group,
            wrapper="ids",
            clear=(
                "--no-security-group",
                "no security groups; on set with --security-group, replace them",
            ),
            clear_modes=WRITE,
        ),
        port_security("port"),
        Repeated(
            "--allowed-address",
            "allowed_address_pairs",
            WRITE,
            "extra address (or CIDR) the port may send from (repeatable)",
            type=key_values("ip-address", "mac-address", required=("ip-address",)),
            metavar="ip-address=IP[,mac-address=MAC]",
            build=_address_pair,
            clear=(
                "--no-allowed-address",
                "clear the allowed addresses; with --allowed-address, replace them",
            ),
        ),
        *attribute(
            "--host",
            "binding_host_id",
            "host to bind the port to (admin only)",
            "only ports bound to this host",
            metavar="HOST",
        ),
        Value(
            "--vnic-type",
            "binding_vnic_type",
            WRITE,
            "VNIC type: normal (default), direct, macvtap, ...",
            metavar="TYPE",
        ),
        KeyValueMap(
            "--binding-profile",
            "binding_profile",
            WRITE,
            "binding profile entry (admin only; repeatable; on set, merged)",
            clear=("--no-binding-profile", "clear the binding profile"),
        ),
        admin_state("port"),
        Value(
            "--status",
            "status",
            LIST,
            "only ports in this status",
            choices=("ACTIVE", "DOWN", "BUILD", "ERROR"),
        ),
    ),
    columns=(
        *ID_NAME,
        Column("MAC Address", "mac_address"),
        Column("Fixed IP Addresses", "fixed_ips"),
        Column("Status", "status"),
    ),
    long_columns=(
        Column("Network", "network_id"),
        Column("Security Groups", "security_groups"),
        Column("Device Owner", "device_owner"),
        Column("Device ID", "device_id"),
        Column("Host", "binding_host_id"),
        Column("Tags", "tags"),
    ),
)
