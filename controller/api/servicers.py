"""gRPC servicers, generated from one table of resources so every resource gets
the same AIP-style Create/Get/List/Update/Delete behaviour, auth and error mapping."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from baryon.v1 import (
    floating_ip_pb2,
    floating_ip_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    port_pb2,
    port_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    security_group_pb2,
    security_group_pb2_grpc,
    subnet_pb2,
    subnet_pb2_grpc,
)
from controller.api import convert
from controller.api.status import abort
from controller.auth import Context, TokenTable
from controller.errors import BaryonError
from controller.model import Network, Router, SecurityGroup, SecurityGroupRule
from controller.services.base import ListQuery
from controller.services.floating_ips import FloatingIPService
from controller.services.networks import NetworkService
from controller.services.ports import PortService
from controller.services.routers import InterfaceInfo, RouterService
from controller.services.security_groups import SecurityGroupService
from controller.services.subnets import SubnetService

log = logging.getLogger(__name__)
Handler = Callable[[Context, Any], Awaitable[Message]]


def guarded(tokens: TokenTable, handler: Handler) -> Callable[..., Awaitable[Message]]:
    """Authenticate, run, and turn domain errors into rich gRPC statuses."""

    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Message:  # type: ignore[type-arg]
        try:
            ctx = tokens.authenticate(context.invocation_metadata())  # type: ignore[arg-type]
            return await handler(ctx, request)
        except BaryonError as err:
            await abort(context, err)
        except Exception:
            log.exception("internal error in %s", getattr(handler, "__name__", handler))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see controller log")
        raise AssertionError("unreachable")

    return method


@dataclass
class ResourceApi:
    """How one resource maps onto its service's RPCs."""

    camel: str  # Network
    singular: str  # network (request field)
    plural: str  # networks (response field)
    pb: type[Message]
    list_response: type[Message]
    to_pb: Callable[[Any], Message]
    service: Any
    create: str = "create"
    get: str = "get"
    list_page: str = "list_page"
    update: str | None = "update"
    delete: str = "delete"
    list_skip: tuple[str, ...] = ()
    predicates: Callable[[Any], list[Callable[[Any], bool]]] | None = None

    def handlers(self) -> dict[str, Handler]:
        svc = self.service

        async def create(ctx: Context, req: Any) -> Message:
            attrs = convert.create_attrs(getattr(req, self.singular))
            return self.to_pb(await getattr(svc, self.create)(ctx, attrs))

        async def get(ctx: Context, req: Any) -> Message:
            return self.to_pb(await getattr(svc, self.get)(ctx, req.id))

        async def list_(ctx: Context, req: Any) -> Message:
            q = ListQuery(
                page_size=req.page_size,
                page_token=req.page_token,
                equals=convert.list_filters(req, self.list_skip),
                tags=list(getattr(req, "tags", ())),
                tags_any=list(getattr(req, "tags_any", ())),
                predicates=self.predicates(req) if self.predicates else [],
            )
            items, token = await getattr(svc, self.list_page)(ctx, q)
            resp = self.list_response(next_page_token=token)
            getattr(resp, self.plural).extend(self.to_pb(o) for o in items)
            return resp

        async def update(ctx: Context, req: Any) -> Message:
            msg = getattr(req, self.singular)
            attrs = convert.update_attrs(msg, req.update_mask, self.singular)
            attrs.pop("id", None)
            obj = await getattr(svc, self.update or "")(ctx, msg.id, attrs, req.if_revision)
            return self.to_pb(obj)

        async def delete(ctx: Context, req: Any) -> Message:
            await getattr(svc, self.delete)(ctx, req.id, req.if_revision)
            return empty_pb2.Empty()

        out: dict[str, Handler] = {
            f"Create{self.camel}": create,
            f"Get{self.camel}": get,
            f"List{self.camel}s": list_,
            f"Delete{self.camel}": delete,
        }
        if self.update:
            out[f"Update{self.camel}"] = update
        return out


def _port_predicates(req: port_pb2.ListPortsRequest) -> list[Callable[[Any], bool]]:
    preds: list[Callable[[Any], bool]] = []
    if req.fixed_ip_subnet_id:
        sid = req.fixed_ip_subnet_id
        preds.append(lambda p: any(s == sid for s, _ in p.fixed_ips))
    if req.fixed_ip_address:
        ip = req.fixed_ip_address
        preds.append(lambda p: any(a == ip for _, a in p.fixed_ips))
    return preds


class Api:
    """Builds the servicer objects for a set of services."""

    def __init__(
        self,
        tokens: TokenTable,
        networks: NetworkService,
        subnets: SubnetService,
        ports: PortService,
        sgs: SecurityGroupService,
        routers: RouterService | None = None,
        fips: FloatingIPService | None = None,
    ) -> None:
        self.tokens = tokens
        self.store = networks.store

        def network_pb(n: Network) -> Message:
            subnet_ids = sorted(self.store.cache.ids("net_subnets", n.id))
            return convert.to_proto(n, network_pb2.Network, subnets=subnet_ids)

        def sg_pb(sg: SecurityGroup) -> Message:
            rules = [rule_pb(r) for r in sgs.rules_of(sg.id)]
            return convert.to_proto(sg, security_group_pb2.SecurityGroup, rules=rules)

        def rule_pb(r: SecurityGroupRule) -> Message:
            return convert.to_proto(r, security_group_pb2.SecurityGroupRule)

        self.routers = routers or RouterService(self.store, networks.cfg, ports)
        self.fips = fips or FloatingIPService(self.store, networks.cfg, ports)

        def router_pb(r: Router) -> Message:
            extra: dict[str, Any] = {}
            if r.gw_network_id:
                gw_port = self.routers.gateway_port(r)
                extra["external_gateway_info"] = router_pb2.ExternalGatewayInfo(
                    network_id=r.gw_network_id,
                    enable_snat=r.enable_snat,
                    external_fixed_ips=[
                        router_pb2.ExternalFixedIP(subnet_id=s, ip_address=ip)
                        for s, ip in (gw_port.fixed_ips if gw_port else ())
                    ],
                )
            return convert.to_proto(r, router_pb2.Router, **extra)

        self.resources = {
            "network": ResourceApi(
                "Network",
                "network",
                "networks",
                network_pb2.Network,
                network_pb2.ListNetworksResponse,
                network_pb,
                networks,
            ),
            "subnet": ResourceApi(
                "Subnet",
                "subnet",
                "subnets",
                subnet_pb2.Subnet,
                subnet_pb2.ListSubnetsResponse,
                lambda s: convert.to_proto(s, subnet_pb2.Subnet),
                subnets,
            ),
            "port": ResourceApi(
                "Port",
                "port",
                "ports",
                port_pb2.Port,
                port_pb2.ListPortsResponse,
                lambda p: convert.to_proto(p, port_pb2.Port),
                ports,
                list_skip=("fixed_ip_subnet_id", "fixed_ip_address"),
                predicates=_port_predicates,
            ),
            "security_group": ResourceApi(
                "SecurityGroup",
                "security_group",
                "security_groups",
                security_group_pb2.SecurityGroup,
                security_group_pb2.ListSecurityGroupsResponse,
                sg_pb,
                sgs,
            ),
            "security_group_rule": ResourceApi(
                "SecurityGroupRule",
                "security_group_rule",
                "security_group_rules",
                security_group_pb2.SecurityGroupRule,
                security_group_pb2.ListSecurityGroupRulesResponse,
                rule_pb,
                sgs,
                create="create_rule",
                get="get_rule",
                list_page="list_rule_page",
                update=None,
                delete="delete_rule",
            ),
            "router": ResourceApi(
                "Router",
                "router",
                "routers",
                router_pb2.Router,
                router_pb2.ListRoutersResponse,
                router_pb,
                self.routers,
            ),
            "floating_ip": ResourceApi(
                "FloatingIP",
                "floating_ip",
                "floating_ips",
                floating_ip_pb2.FloatingIP,
                floating_ip_pb2.ListFloatingIPsResponse,
                lambda f: convert.to_proto(f, floating_ip_pb2.FloatingIP),
                self.fips,
            ),
        }
        self.extra_handlers: dict[str, dict[str, Handler]] = {
            "router": self._interface_handlers(),
        }

    def _interface_handlers(self) -> dict[str, Handler]:
        routers = self.routers

        def info_pb(info: InterfaceInfo) -> Message:
            return router_pb2.RouterInterfaceInfo(
                id=info.router_id,
                router_id=info.router_id,
                project_id=info.project_id,
                network_id=info.network_id,
                subnet_id=info.subnet_ids[0] if info.subnet_ids else "",
                subnet_ids=info.subnet_ids,
                port_id=info.port_id,
            )

        async def add(ctx: Context, req: Any) -> Message:
            return info_pb(
                await routers.add_interface(ctx, req.router_id, req.subnet_id, req.port_id)
            )

        async def remove(ctx: Context, req: Any) -> Message:
            return info_pb(
                await routers.remove_interface(ctx, req.router_id, req.subnet_id, req.port_id)
            )

        return {"AddRouterInterface": add, "RemoveRouterInterface": remove}

    def servicer(self, base: type, *resources: str) -> Any:
        methods: dict[str, Any] = {}
        for r in resources:
            handlers = {**self.resources[r].handlers(), **self.extra_handlers.get(r, {})}
            for name, handler in handlers.items():
                handler.__name__ = name
                methods[name] = guarded(self.tokens, handler)
        return type(base.__name__.replace("Servicer", "Impl"), (base,), methods)()

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Add every servicer to the server; returns the full service names."""
        pairs = [
            (network_pb2_grpc, "NetworkService", ("network",), network_pb2),
            (subnet_pb2_grpc, "SubnetService", ("subnet",), subnet_pb2),
            (port_pb2_grpc, "PortService", ("port",), port_pb2),
            (
                security_group_pb2_grpc,
                "SecurityGroupService",
                ("security_group", "security_group_rule"),
                security_group_pb2,
            ),
            (router_pb2_grpc, "RouterService", ("router",), router_pb2),
            (floating_ip_pb2_grpc, "FloatingIPService", ("floating_ip",), floating_ip_pb2),
        ]
        names = []
        for mod, svc, resources, pb in pairs:
            base = getattr(mod, f"{svc}Servicer")
            getattr(mod, f"add_{svc}Servicer_to_server")(self.servicer(base, *resources), server)
            names.append(pb.DESCRIPTOR.services_by_name[svc].full_name)
        return names
