"""``baryon router ...``: routers, their gateway, routes and interfaces."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from baryon.v1 import router_pb2
from cli.client import UsageError
from cli.networks import NETWORK
from cli.options import (
    SET,
    WRITE,
    BuildContext,
    Mode,
    Option,
    Repeated,
    Resolver,
    admin_state,
    dest_for,
    key_values,
    named,
)
from cli.output import ID_NAME, INLINE, Column
from cli.ports import FIXED_IP, FIXED_IP_METAVAR, PORT
from cli.resource import Command, Invocation, Resource
from cli.subnets import SUBNET

ROUTE = key_values("destination", "gateway", required=("destination", "gateway"))
ROUTE_METAVAR = "destination=CIDR,gateway=IP"


def _route(spec: dict[str, str], ctx: BuildContext | None = None) -> router_pb2.Route:
    return router_pb2.Route(destination=spec["destination"], nexthop=spec["gateway"])


def _route_text(msg: Message) -> str:
    assert isinstance(msg, router_pb2.Route)
    return f"destination='{msg.destination}', gateway='{msg.nexthop}'"


def _gateway_text(msg: Message) -> str:
    assert isinstance(msg, router_pb2.ExternalGatewayInfo)
    ips = ", ".join(f"{ip.ip_address} ({ip.subnet_id})" for ip in msg.external_fixed_ips)
    snat = "" if not msg.HasField("enable_snat") else f", snat={msg.enable_snat}"
    return f"network={msg.network_id}{snat}, ips=[{ips}]" if msg.network_id else ""


INLINE[router_pb2.Route.DESCRIPTOR.full_name] = _route_text
INLINE[router_pb2.ExternalGatewayInfo.DESCRIPTOR.full_name] = _gateway_text


class ExternalGateway(Option):
    """--external-gateway NETWORK [--fixed-ip ...] [--enable-snat | --disable-snat]."""

    SNAT_DEST = "opt_enable_snat"
    FIXED_DEST = "opt_gateway_fixed_ip"

    def __init__(self) -> None:
        super().__init__(
            "--external-gateway",
            "external_gateway_info",
            WRITE,
            "external network for the router's gateway (name or ID)",
        )

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        parser.add_argument(self.flag, dest=self.dest, metavar="NETWORK", help=self.help)
        parser.add_argument(
            "--fixed-ip",
            dest=self.FIXED_DEST,
            action="append",
            type=FIXED_IP,
            metavar=FIXED_IP_METAVAR,
            help="gateway address (admin only; repeatable; with --external-gateway)",
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--enable-snat",
            dest=self.SNAT_DEST,
            action="store_const",
            const=True,
            default=None,
            help="source NAT on the gateway (admin only; the default)",
        )
        group.add_argument(
            "--disable-snat",
            dest=self.SNAT_DEST,
            action="store_const",
            const=False,
            help="no source NAT on the gateway (admin only)",
        )

    def given(self, ns: argparse.Namespace) -> bool:
        return any(
            getattr(ns, d, None) not in (None, [])
            for d in (self.dest, self.FIXED_DEST, self.SNAT_DEST)
        )

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        network = getattr(ns, self.dest, None)
        fixed: list[dict[str, str]] = getattr(ns, self.FIXED_DEST, None) or []
        snat: bool | None = getattr(ns, self.SNAT_DEST, None)
        if network is None:
            if fixed or snat is not None:
                raise UsageError(
                    "--fixed-ip, --enable-snat and --disable-snat need --external-gateway"
                )
            return []
        assert isinstance(target, router_pb2.Router)
        info = target.external_gateway_info
        info.network_id = ctx.resolve(NETWORK, network)
        if snat is not None:
            info.enable_snat = snat
        for spec in fixed:
            ip = info.external_fixed_ips.add(ip_address=spec.get("ip-address", ""))
            if "subnet" in spec:
                ip.subnet_id = ctx.resolve(SUBNET, spec["subnet"])
        return [self.field]


ROUTER = Resource(
    path=("router",),
    message=router_pb2.Router,
    service=router_pb2.DESCRIPTOR.services_by_name["RouterService"],
    metavar="ROUTER",
    options=(
        *named("router"),
        admin_state("router"),
        ExternalGateway(),
        Repeated(
            "--route",
            "routes",
            SET,
            "static route (repeatable; added to the stored routes)",
            type=ROUTE,
            metavar=ROUTE_METAVAR,
            build=_route,
            clear=("--no-route", "clear the routes; with --route, replace them"),
        ),
    ),
    columns=(
        *ID_NAME,
        Column("Status", "status"),
        Column("State", "admin_state_up"),
        Column("Project", "project_id"),
    ),
    long_columns=(
        Column("External gateway info", "external_gateway_info"),
        Column("Routes", "routes"),
        Column("Tags", "tags"),
    ),
)


class UnsetCommand(Command):
    """``unset``: clear fields (an Update whose mask names them, left empty)."""

    verb = "unset"
    summary = "clear attributes of a {title}"

    def __init__(
        self, resource: Resource, clears: Sequence[tuple[str, str, str]], routes: bool = False
    ) -> None:
        super().__init__(resource)
        self.clears = clears
        self.routes = routes

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.add_ref(parser)
        for flag, _, help in self.clears:
            parser.add_argument(flag, dest=dest_for(flag), action="store_true", help=help)
        if self.routes:
            parser.add_argument(
                "--route",
                dest="opt_route",
                action="append",
                type=ROUTE,
                metavar=ROUTE_METAVAR,
                help="remove this static route (repeatable)",
            )
        self.add_if_revision(parser)

    def build(self, ns: argparse.Namespace, current: Message) -> Message:
        msg = self.resource.message(id=getattr(current, "id"))  # noqa: B009
        paths = [field for flag, field, _ in self.clears if getattr(ns, dest_for(flag))]
        if_revision: int = ns.if_revision
        removed = [_route(spec) for spec in getattr(ns, "opt_route", None) or []]
        if removed:
            assert isinstance(current, router_pb2.Router) and isinstance(msg, router_pb2.Router)
            msg.routes.extend(r for r in current.routes if r not in removed)
            paths.append("routes")
            if_revision = if_revision or current.revision_number
        if not paths:
            raise UsageError(f"nothing to unset; see baryon {self.resource.title} unset --help")
        return self.resource.request(
            "Update",
            **{self.resource.field: msg},
            update_mask=FieldMask(paths=paths),
            if_revision=if_revision,
        )

    def run(self, inv: Invocation) -> int:
        current = inv.resolver.find(self.resource, inv.ns.ref)
        inv.transport.call(self.resource.rpc("Update"), self.build(inv.ns, current))
        return 0


class InterfaceCommand(Command):
    """``router add|remove subnet|port ROUTER TARGET``."""

    action: ClassVar[str]
    target: ClassVar[Resource]

    def __init__(self) -> None:
        super().__init__(dataclasses.replace(ROUTER, path=("router", self.action)))

    @property
    def help(self) -> str:
        return self.summary

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("router", metavar="ROUTER", help="router (name or ID)")
        parser.add_argument("target", metavar=self.verb.upper(), help=f"{self.verb} (name or ID)")

    def build(self, ns: argparse.Namespace, resolver: Resolver) -> Message:
        router_id = str(getattr(resolver.find(ROUTER, ns.router), "id"))  # noqa: B009
        target_id = str(getattr(resolver.find(self.target, ns.target), "id"))  # noqa: B009
        cls = (
            router_pb2.AddRouterInterfaceRequest
            if self.action == "add"
            else router_pb2.RemoveRouterInterfaceRequest
        )
        return cls(router_id=router_id, **{f"{self.verb}_id": target_id})

    def run(self, inv: Invocation) -> int:
        method = "AddRouterInterface" if self.action == "add" else "RemoveRouterInterface"
        rpc = ROUTER.service.methods_by_name[method]
        inv.transport.call(rpc, self.build(inv.ns, inv.resolver))
        return 0


class AddSubnet(InterfaceCommand):
    action = "add"
    verb = "subnet"
    target = SUBNET
    summary = "connect a subnet to a router (a new port takes the subnet's gateway IP)"


class AddPort(InterfaceCommand):
    action = "add"
    verb = "port"
    target = PORT
    summary = "connect a router to a network through an existing port"


class RemoveSubnet(InterfaceCommand):
    action = "remove"
    verb = "subnet"
    target = SUBNET
    summary = "disconnect a subnet from a router (its interface port is deleted)"


class RemovePort(InterfaceCommand):
    action = "remove"
    verb = "port"
    target = PORT
    summary = "disconnect a router's interface port (the port is deleted)"


def router_commands() -> list[Command]:
    return [
        UnsetCommand(
            ROUTER,
            [("--external-gateway", "external_gateway_info", "remove the router's gateway")],
            routes=True,
        ),
        AddSubnet(),
        AddPort(),
        RemoveSubnet(),
        RemovePort(),
    ]
