"""``baryon subnet ...``"""

from __future__ import annotations

from google.protobuf.message import Message

from baryon.v1 import subnet_pb2
from cli.client import UsageError
from cli.networks import network_option
from cli.options import (
    CREATE,
    LIST,
    WRITE,
    BuildContext,
    Mode,
    Repeated,
    Value,
    attribute,
    key_values,
    named,
    toggle,
)
from cli.output import ID_NAME, INLINE, Column
from cli.resource import Resource

IPV6_MODES = ("slaac", "dhcpv6-stateful", "dhcpv6-stateless")


def _gateway(raw: str, ctx: BuildContext) -> str | None:
    if raw == "none":
        return ""
    if raw == "auto":
        if ctx.mode is Mode.SET:
            raise UsageError("--gateway auto is only valid on create; give an address or none")
        return None
    return raw


def _pool(spec: dict[str, str], ctx: BuildContext) -> subnet_pb2.AllocationPool:
    return subnet_pb2.AllocationPool(start=spec["start"], end=spec["end"])


def _route(spec: dict[str, str], ctx: BuildContext) -> subnet_pb2.HostRoute:
    return subnet_pb2.HostRoute(destination=spec["destination"], nexthop=spec["gateway"])


def _pool_text(msg: Message) -> str:
    assert isinstance(msg, subnet_pb2.AllocationPool)
    return f"{msg.start}-{msg.end}"


def _route_text(msg: Message) -> str:
    assert isinstance(msg, subnet_pb2.HostRoute)
    return f"destination='{msg.destination}', gateway='{msg.nexthop}'"


INLINE[subnet_pb2.AllocationPool.DESCRIPTOR.full_name] = _pool_text
INLINE[subnet_pb2.HostRoute.DESCRIPTOR.full_name] = _route_text

SUBNET = Resource(
    path=("subnet",),
    message=subnet_pb2.Subnet,
    service=subnet_pb2.DESCRIPTOR.services_by_name["SubnetService"],
    metavar="SUBNET",
    options=(
        *named("subnet"),
        *network_option("subnet"),
        Value("--subnet-range", "cidr", CREATE, "the subnet's CIDR", required=True, metavar="CIDR"),
        *attribute(
            "--ip-version",
            "ip_version",
            "4 or 6 (default: from --subnet-range)",
            "only subnets of this IP version",
            CREATE,
            type=int,
            choices=(4, 6),
        ),
        Value("--subnet-range", "cidr", LIST, "only subnets with this CIDR", metavar="CIDR"),
        Value(
            "--gateway",
            "gateway_ip",
            WRITE,
            "gateway address; auto (create only, the default): the first usable address;"
            " none: no gateway",
            metavar="IP|auto|none",
            convert=_gateway,
        ),
        Repeated(
            "--allocation-pool",
            "allocation_pools",
            WRITE,
            "range to allocate addresses from (repeatable; default: the whole subnet)",
            type=key_values("start", "end", required=("start", "end")),
            metavar="start=IP,end=IP",
            build=_pool,
            clear=("--no-allocation-pool", "clear the pools; with --allocation-pool, replace"),
        ),
        Repeated(
            "--dns-nameserver",
            "dns_nameservers",
            WRITE,
            "DNS server (repeatable)",
            metavar="IP",
            clear=("--no-dns-nameservers", "clear the DNS servers; with --dns-nameserver, replace"),
        ),
        Repeated(
            "--host-route",
            "host_routes",
            WRITE,
            "static route handed out by DHCP (repeatable)",
            type=key_values("destination", "gateway", required=("destination", "gateway")),
            metavar="destination=CIDR,gateway=IP",
            build=_route,
            clear=("--no-host-route", "clear the host routes; with --host-route, replace"),
        ),
        toggle("enable_dhcp", "--dhcp", "--no-dhcp", "enable DHCP (default)", "disable DHCP"),
        Value("--ipv6-ra-mode", "ipv6_ra_mode", CREATE, "IPv6 RA mode", choices=IPV6_MODES),
        Value(
            "--ipv6-address-mode",
            "ipv6_address_mode",
            CREATE,
            "IPv6 address mode",
            choices=IPV6_MODES,
        ),
    ),
    columns=(
        *ID_NAME,
        Column("Network", "network_id"),
        Column("Subnet", "cidr"),
    ),
    long_columns=(
        Column("Project", "project_id"),
        Column("IP Version", "ip_version"),
        Column("Gateway", "gateway_ip"),
        Column("DHCP", "enable_dhcp"),
        Column("Allocation Pools", "allocation_pools"),
        Column("DNS Nameservers", "dns_nameservers"),
        Column("Host Routes", "host_routes"),
        Column("Tags", "tags"),
    ),
)
