"""Router and floating IP stubs for one caller of an in-process controller, and the
topology most L3 tests start from (an external network, a tenant network)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask

from baryon.v1 import (
    floating_ip_pb2,
    floating_ip_pb2_grpc,
    network_pb2,
    router_pb2,
    router_pb2_grpc,
    subnet_pb2,
)
from tests.support.controller import Client, Env, _all_pages, _Authed, bearer

EXT_CIDR = "203.0.113.0/24"
INT_CIDR = "10.0.0.0/24"


class L3:
    def __init__(self, env: Env, client: Client) -> None:
        md = bearer(client.token)
        self.client = client
        self.routers = _Authed(router_pb2_grpc.RouterServiceStub(env.channel), md)
        self.fips = _Authed(floating_ip_pb2_grpc.FloatingIPServiceStub(env.channel), md)

    # -- routers
    async def router(self, **fields: Any) -> router_pb2.Router:
        return await self.routers.CreateRouter(
            router_pb2.CreateRouterRequest(router=router_pb2.Router(**fields))
        )

    async def get_router(self, id_: str) -> router_pb2.Router:
        return await self.routers.GetRouter(router_pb2.GetRouterRequest(id=id_))

    async def list_routers(self, **filters: Any) -> list[router_pb2.Router]:
        return await _all_pages(
            self.routers.ListRouters, router_pb2.ListRoutersRequest, "routers", filters
        )

    async def update_router(
        self, id_: str, if_revision: int = 0, **fields: Any
    ) -> router_pb2.Router:
        return await self.routers.UpdateRouter(
            router_pb2.UpdateRouterRequest(
                router=router_pb2.Router(id=id_, **fields),
                update_mask=FieldMask(paths=list(fields)),
                if_revision=if_revision,
            )
        )

    async def set_gateway(self, id_: str, network_id: str, **gw: Any) -> router_pb2.Router:
        info = router_pb2.ExternalGatewayInfo(network_id=network_id, **gw)
        return await self.update_router(id_, external_gateway_info=info)

    async def clear_gateway(self, id_: str) -> router_pb2.Router:
        return await self.routers.UpdateRouter(
            router_pb2.UpdateRouterRequest(
                router=router_pb2.Router(id=id_),
                update_mask=FieldMask(paths=["external_gateway_info"]),
            )
        )

    async def set_routes(self, id_: str, *routes: tuple[str, str]) -> router_pb2.Router:
        return await self.routers.UpdateRouter(
            router_pb2.UpdateRouterRequest(
                router=router_pb2.Router(
                    id=id_,
                    routes=[router_pb2.Route(destination=d, nexthop=n) for d, n in routes],
                ),
                update_mask=FieldMask(paths=["routes"]),
            )
        )

    async def delete_router(self, id_: str, if_revision: int = 0) -> None:
        await self.routers.DeleteRouter(
            router_pb2.DeleteRouterRequest(id=id_, if_revision=if_revision)
        )

    async def add_interface(
        self, router_id: str, subnet_id: str = "", port_id: str = ""
    ) -> router_pb2.RouterInterfaceInfo:
        return await self.routers.AddRouterInterface(
            router_pb2.AddRouterInterfaceRequest(
                router_id=router_id, subnet_id=subnet_id, port_id=port_id
            )
        )

    async def remove_interface(
        self, router_id: str, subnet_id: str = "", port_id: str = ""
    ) -> router_pb2.RouterInterfaceInfo:
        return await self.routers.RemoveRouterInterface(
            router_pb2.RemoveRouterInterfaceRequest(
                router_id=router_id, subnet_id=subnet_id, port_id=port_id
            )
        )

    # -- floating IPs
    async def fip(self, network_id: str, **fields: Any) -> floating_ip_pb2.FloatingIP:
        return await self.fips.CreateFloatingIP(
            floating_ip_pb2.CreateFloatingIPRequest(
                floating_ip=floating_ip_pb2.FloatingIP(floating_network_id=network_id, **fields)
            )
        )

    async def get_fip(self, id_: str) -> floating_ip_pb2.FloatingIP:
        return await self.fips.GetFloatingIP(floating_ip_pb2.GetFloatingIPRequest(id=id_))

    async def list_fips(self, **filters: Any) -> list[floating_ip_pb2.FloatingIP]:
        return await _all_pages(
            self.fips.ListFloatingIPs,
            floating_ip_pb2.ListFloatingIPsRequest,
            "floating_ips",
            filters,
        )

    async def update_fip(
        self, id_: str, if_revision: int = 0, **fields: Any
    ) -> floating_ip_pb2.FloatingIP:
        return await self.fips.UpdateFloatingIP(
            floating_ip_pb2.UpdateFloatingIPRequest(
                floating_ip=floating_ip_pb2.FloatingIP(id=id_, **fields),
                update_mask=FieldMask(paths=list(fields)),
                if_revision=if_revision,
            )
        )

    async def delete_fip(self, id_: str, if_revision: int = 0) -> None:
        await self.fips.DeleteFloatingIP(
            floating_ip_pb2.DeleteFloatingIPRequest(id=id_, if_revision=if_revision)
        )


@dataclass
class Topology:
    admin: L3
    p1: L3
    p2: L3
    ext: network_pb2.Network
    ext_subnet: subnet_pb2.Subnet
    net: network_pb2.Network
    subnet: subnet_pb2.Subnet


async def topology(env: Env) -> Topology:
    """An external network (admin's, 203.0.113.0/24) and p1's network (10.0.0.0/24)."""
    ext = await env.admin.network(name="ext", external=True)
    ext_subnet = await env.admin.subnet(ext.id, EXT_CIDR)
    net = await env.p1.network(name="int")
    subnet = await env.p1.subnet(net.id, INT_CIDR)
    return Topology(
        admin=L3(env, env.admin),
        p1=L3(env, env.p1),
        p2=L3(env, env.p2),
        ext=ext,
        ext_subnet=ext_subnet,
        net=net,
        subnet=subnet,
    )
