"""``baryon network ...``"""

from __future__ import annotations

from baryon.v1 import network_pb2
from cli.options import (
    CREATE,
    LIST,
    WRITE,
    Option,
    Value,
    admin_state,
    attribute,
    named,
    port_security,
    toggle,
)
from cli.output import ID_NAME, Column
from cli.resource import Resource

NETWORK_TYPES = ("local", "flat", "vlan", "vxlan", "gre")

NETWORK = Resource(
    path=("network",),
    message=network_pb2.Network,
    service=network_pb2.DESCRIPTOR.services_by_name["NetworkService"],
    metavar="NETWORK",
    options=(
        *named("network"),
        toggle(
            "shared",
            "--share",
            "--no-share",
            "share the network with every project (admin only)",
            "do not share the network (default)",
        ),
        toggle("shared", "--share", "--no-share", "only shared networks", "only unshared", LIST),
        toggle(
            "external",
            "--external",
            "--internal",
            "the network is external, routers may use it as a gateway (admin only)",
            "the network is internal (default)",
        ),
        toggle("external", "--external", "--internal", "only external", "only internal", LIST),
        *attribute(
            "--provider-network-type",
            "provider_network_type",
            "segment type (admin only; default: the controller's tenant type)",
            "only networks of this segment type",
            choices=NETWORK_TYPES,
            metavar="TYPE",
        ),
        Value(
            "--provider-physical-network",
            "provider_physical_network",
            WRITE,
            "physical network of a flat or vlan segment (admin only)",
            metavar="PHYSNET",
        ),
        Value(
            "--provider-segment",
            "provider_segmentation_id",
            WRITE,
            "VLAN ID, VNI or GRE key (admin only)",
            type=int,
            metavar="ID",
        ),
        Value("--mtu", "mtu", WRITE, "MTU (default: the segment type's maximum)", type=int),
        port_security("network's new ports"),
        admin_state("network"),
    ),
    columns=(
        *ID_NAME,
        Column("Subnets", "subnets"),
    ),
    long_columns=(
        Column("Project", "project_id"),
        Column("Status", "status"),
        Column("State", "admin_state_up"),
        Column("Shared", "shared"),
        Column("External", "external"),
        Column("Network Type", "provider_network_type"),
        Column("MTU", "mtu"),
        Column("Tags", "tags"),
    ),
)


def network_option(kind: str) -> list[Option]:
    """--network NETWORK: required on create, a filter on list."""
    return [
        Value(
            "--network",
            "network_id",
            CREATE,
            f"network of the {kind} (name or ID)",
            required=True,
            ref=NETWORK,
            metavar="NETWORK",
        ),
        Value(
            "--network",
            "network_id",
            LIST,
            f"only {kind}s on this network",
            ref=NETWORK,
            metavar="NETWORK",
        ),
    ]
