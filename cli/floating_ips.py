"""``baryon floating ip ...``"""

from __future__ import annotations

from dataclasses import dataclass

from baryon.v1 import floating_ip_pb2
from cli.networks import NETWORK
from cli.options import (
    CREATE,
    LIST,
    WRITE,
    CsvFilter,
    Repeated,
    Value,
    attribute,
)
from cli.output import Column
from cli.ports import PORT
from cli.resource import Command, Resource
from cli.routers import ROUTER, UnsetCommand
from cli.subnets import SUBNET


@dataclass(frozen=True, eq=False)
class FloatingIPResource(Resource):
    @property
    def field(self) -> str:
        return "floating_ip"  # snake_case would make floating_i_p of FloatingIP


FLOATING_IP = FloatingIPResource(
    path=("floating", "ip"),
    message=floating_ip_pb2.FloatingIP,
    service=floating_ip_pb2.DESCRIPTOR.services_by_name["FloatingIPService"],
    metavar="FLOATING_IP",
    named=False,
    options=(
        Value(
            "network",
            "floating_network_id",
            CREATE,
            "external network to take the address from (name or ID)",
            ref=NETWORK,
            metavar="NETWORK",
        ),
        Value(
            "--network",
            "floating_network_id",
            LIST,
            "only floating IPs of this network",
            ref=NETWORK,
            metavar="NETWORK",
        ),
        Value("--description", "description", WRITE, "floating IP description"),
        *attribute(
            "--project",
            "project_id",
            "owner project (admin only; default: the token's project)",
            "only floating IPs of this project",
            CREATE,
            metavar="PROJECT",
        ),
        Value("--subnet", "subnet_id", CREATE, "subnet to take the address from", ref=SUBNET),
        *attribute(
            "--floating-ip-address",
            "floating_ip_address",
            "the address (admin only; default: allocated)",
            "only this floating address",
            CREATE,
            metavar="IP",
        ),
        *attribute(
            "--port",
            "port_id",
            "port to associate the floating IP with (name or ID)",
            "only floating IPs associated with this port",
            WRITE,
            ref=PORT,
            metavar="PORT",
        ),
        *attribute(
            "--fixed-ip-address",
            "fixed_ip_address",
            "the port's address to map to (default: its only IPv4 address)",
            "only floating IPs mapped to this fixed address",
            WRITE,
            metavar="IP",
        ),
        Value("--router", "router_id", LIST, "only floating IPs of this router", ref=ROUTER),
        Value(
            "--status",
            "status",
            LIST,
            "only floating IPs in this status",
            choices=("ACTIVE", "DOWN", "ERROR"),
        ),
        Repeated(
            "--tag",
            "tags",
            WRITE,
            "tag (repeatable; on set, added to the existing tags)",
            metavar="TAG",
            clear=("--no-tag", "clear the tags; with --tag, replace them"),
        ),
        CsvFilter("--tags", "tags", "only floating IPs carrying all of these tags"),
        CsvFilter("--any-tags", "tags_any", "only floating IPs carrying any of these tags"),
    ),
    columns=(
        Column("ID", "id"),
        Column("Floating IP Address", "floating_ip_address"),
        Column("Fixed IP Address", "fixed_ip_address"),
        Column("Port", "port_id"),
        Column("Floating Network", "floating_network_id"),
        Column("Project", "project_id"),
    ),
    long_columns=(
        Column("Router", "router_id"),
        Column("Status", "status"),
        Column("Description", "description"),
        Column("Tags", "tags"),
    ),
)


def floating_ip_commands() -> list[Command]:
    return [
        UnsetCommand(
            FLOATING_IP,
            [("--port", "port_id", "disassociate the floating IP from its port")],
        )
    ]
