"""Routers: external gateways, interfaces (ports on internal subnets), static routes.

Neutron's L3 rules (l3_db, extraroute_db): the gateway network must be external and
its port takes addresses there (chosen ones only by admins); an interface is a port
with device_owner network:router_interface on a subnet that has a gateway IP; a
router's subnets never overlap; routes' next hops are on its subnets; a router with
interfaces is not deleted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from controller.auth import Context
from controller.config import Config
from controller.errors import BaryonError, FailedPrecondition, InvalidArgument, NotFound
from controller.indexes import ROUTER_GATEWAY, ROUTER_INTERFACE
from controller.model import FloatingIP, Network, Pair, Port, Router, Subnet
from controller.services.base import (
    ListQuery,
    Service,
    bump,
    check_revision,
    check_update_fields,
    network_visible,
    reject_unknown,
)
from controller.services.l3 import (
    bad_request,
    new_port,
    router_ports,
)
from controller.services.ports import PortService
from controller.store import Store, Txn

CREATE_FIELDS = frozenset({"admin_state_up", "external_gateway_info"})
UPDATE_FIELDS = frozenset({"admin_state_up", "external_gateway_info", "routes"})
GW_FIELD = "router.external_gateway_info"
MAX_ROUTES = 30  # Neutron's max_routes


@dataclasses.dataclass
class InterfaceInfo:
    router_id: str
    project_id: str
    network_id: str
    port_id: str
    subnet_ids: list[str]


class RouterService(Service):
    def __init__(self, store: Store, cfg: Config, ports: PortService) -> None:
        super().__init__(store, cfg)
        self.ports = ports

    # -- create / read
    async def create(self, ctx: Context, attrs: Mapping[str, Any]) -> Router:
        reject_unknown(attrs, CREATE_FIELDS, "router")
        gw = attrs.get("external_gateway_info") or {}
        _check_gw_policy(ctx, gw)

        def build(txn: Txn) -> Router:
            common = self.common(ctx, attrs, "router")
            common["quota_slot"] = self.quota_slot(txn, common["project_id"], "router")
            router = Router(**common, admin_state_up=attrs.get("admin_state_up", True))
            if gw.get("network_id"):
                router = self._set_gateway(ctx, txn, router, gw)
            txn.create(router)
            return router

        router, _ = await self.store.commit(build)
        return router

    async def get(self, ctx: Context, id_: str) -> Router:
        await self.store.sync()
        return self.find(ctx, Router, id_)

    async def list_page(self, ctx: Context, q: ListQuery) -> tuple[list[Router], str]:
        await self.store.sync()
        return self.page(ctx, self.cache.all(Router), q)

    def gateway_port(self, router: Router) -> Port | None:
        return self.cache.get(Port, router.gw_port_id) if router.gw_port_id else None

    # -- update / delete
    async def update(
        self, ctx: Context, id_: str, attrs: Mapping[str, Any], if_revision: int
    ) -> Router:
        check_update_fields(attrs, UPDATE_FIELDS, "router")
        gw = attrs.get("external_gateway_info") or {}
        _check_gw_policy(ctx, gw)
        routes: list[Pair] | None = attrs.get("routes")
        if routes is not None:
            routes = _check_routes_format(routes)

        def build(txn: Txn) -> Router:
            old = self.find(ctx, Router, id_)
            check_revision(old, if_revision)
            plain = {k: v for k, v in attrs.items() if k not in ("external_gateway_info", "routes")}
            new = bump(old, plain)
            gw_port: list[Port] = []  # the gateway port as this update leaves it, if it changes
            if "external_gateway_info" in attrs:
                new = self._update_gateway(ctx, txn, old, new, gw, gw_port)
            if routes is not None:
                self._check_routes_nexthops(txn, old, routes, new, gw_port)
                new.routes = routes
            txn.update(old, new)
            return new

        router, _ = await self.store.commit(build)
        return router

    async def delete(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            router = self.find(ctx, Router, id_)
            check_revision(router, if_revision)
            interfaces = sorted(
                p.id
                for p in router_ports(self.cache, router.id)
                if p.device_owner != ROUTER_GATEWAY
            )
            if interfaces:
                raise FailedPrecondition(
                    f"Router {router.id} still has ports",
                    reason="RouterInUse",
                    ports=",".join(interfaces),
                )
            self._check_gateway_unused(txn, router)
            txn.prefix_unchanged(f"rtrport/{router.id}/")
            gw_port = self.gateway_port(router)
            if gw_port is not None:
                txn.delete(gw_port)
            txn.delete(router)

        await self.store.commit(build)

    # -- gateway
    def _set_gateway(
        self,
        ctx: Context,
        txn: Txn,
        router: Router,
        gw: Mapping[str, Any],
        made: list[Port] | None = None,
    ) -> Router:
        """The router with a new gateway port on gw's network (added to txn)."""
        net = self.find(
            ctx, Network, gw.get("network_id", ""), f"{GW_FIELD}.network_id", network_visible
        )
        if not net.external:
            raise bad_request(
                "router", f"Network {net.id} is not an external network", f"{GW_FIELD}.network_id"
            )
        fixed: list[Pair] | None = gw.get("external_fixed_ips") or None
        subnets = self.cache.related(Subnet, "net_subnets", net.id)
        if fixed:
            _check_not_gateway_ips(fixed, subnets)
        elif not subnets:
            raise InvalidArgument(
                f"Unable to find any IP address on external network {net.id}.",
                reason="ExternalIpAddressExhausted",
                field=f"{GW_FIELD}.network_id",
            )
        port = new_port(
            self.ports,
            txn,
            net,
            project_id="",
            device_id=router.id,
            device_owner=ROUTER_GATEWAY,
            fixed_ips=fixed,
            field=f"{GW_FIELD}.external_fixed_ips",
        )
        self._check_router_subnets(
            txn, router, _subnets_of(self.cache, port), f"{GW_FIELD}.network_id", exclude=None
        )
        txn.create(port)
        if made is not None:
            made.append(port)
        return dataclasses.replace(
            router,
            gw_network_id=net.id,
            gw_port_id=port.id,
            enable_snat=gw.get("enable_snat", True),
        )

    def _update_gateway(
        self,
        ctx: Context,
        txn: Txn,
        old: Router,
        new: Router,
        gw: Mapping[str, Any],
        made: list[Port],
    ) -> Router:
        net_id = gw.get("network_id", "")
        old_port = self.gateway_port(old)
        if net_id and net_id == old.gw_network_id and old_port is not None:
            # Same network: SNAT mode and, if given, the gateway's addresses.
            fixed: list[Pair] | None = gw.get("external_fixed_ips") or None
            if fixed:
                net = self.cache.get(Network, net_id)
                assert net is not None
                subnets = self.cache.related(Subnet, "net_subnets", net_id)
                _check_not_gateway_ips(fixed, subnets)
                try:
                    ips = self.ports._requested_ips(
                        txn, net, subnets, fixed, ROUTER_GATEWAY, old_port.mac_address,
                        old_port.fixed_ips,
                    )  # fmt: skip
                except BaryonError as err:
                    err.field_violations = [
                        (f.replace("port.fixed_ips", f"{GW_FIELD}.external_fixed_ips", 1), m)
                        for f, m in err.field_violations
                    ]
                    raise
                port = bump(old_port, {"fixed_ips": ips})
                self._check_router_subnets(
                    txn, old, _subnets_of(self.cache, port), f"{GW_FIELD}.network_id", old_port.id
                )
                txn.update(old_port, port)
                made.append(port)
            return dataclasses.replace(new, enable_snat=gw.get("enable_snat", True))
        if old.gw_network_id:
            self._check_gateway_unused(txn, old)
            if old_port is not None:
                txn.delete(old_port)
        cleared = dataclasses.replace(new, gw_network_id="", gw_port_id="", enable_snat=True)
        if not net_id:
            return cleared
        return self._set_gateway(ctx, txn, cleared, gw, made)

    def _check_gateway_unused(self, txn: Txn, router: Router) -> None:
        fips = [
            f
            for f in self.cache.related(FloatingIP, "fip_router", router.id)
            if f.floating_network_id == router.gw_network_id
        ]
        if fips:
            raise FailedPrecondition(
                f"Gateway cannot be updated for router {router.id}, since a gateway to external"
                f" network {router.gw_network_id} is required by one or more floating IPs.",
                reason="RouterExternalGatewayInUseByFloatingIp",
            )
        txn.prefix_unchanged(f"fiprtr/{router.id}/")

    # -- interfaces
    async def add_interface(
        self, ctx: Context, router_id: str, subnet_id: str, port_id: str
    ) -> InterfaceInfo:
        _check_interface_request(subnet_id, port_id)

        def build(txn: Txn) -> InterfaceInfo:
            router = self.find(ctx, Router, router_id, "router_id")
            txn.depends_on(router)
            if port_id:
                port = self.find(ctx, Port, port_id, "port_id", self.ports.visible)
                if port.device_id:
                    raise FailedPrecondition(
                        f"Unable to complete operation on port {port.id} for network"
                        f" {port.network_id}. Port already has an attached device"
                        f" {port.device_id}.",
                        reason="PortInUse",
                    )
                if not port.fixed_ips:
                    raise bad_request(
                        "router", "Router port must have at least one fixed IP", "port_id"
                    )
                if sum(1 for _, ip in port.fixed_ips if ":" not in ip) > 1:
                    raise bad_request(
                        "router", "Cannot have multiple IPv4 subnets on router port", "port_id"
                    )
                self._check_router_subnets(
                    txn, router, _subnets_of(self.cache, port), "port_id", exclude=None
                )
                new = bump(port, {"device_id": router.id, "device_owner": ROUTER_INTERFACE})
                txn.update(port, new)
            else:
                subnet = self.find(ctx, Subnet, subnet_id, "subnet_id", self._subnet_visible)
                if not subnet.gateway_ip:
                    raise bad_request(
                        "router", "Subnet for router interface must have a gateway IP", "subnet_id"
                    )
                self._check_router_subnets(txn, router, [subnet], "subnet_id", exclude=None)
                net = self.cache.get(Network, subnet.network_id)
                assert net is not None
                new = new_port(
                    self.ports,
                    txn,
                    net,
                    project_id=subnet.project_id,
                    device_id=router.id,
                    device_owner=ROUTER_INTERFACE,
                    fixed_ips=[(subnet.id, subnet.gateway_ip)],
                    field="subnet_id",
                    exact=True,
                )
                txn.create(new)
            return _info(router, new, [s for s, _ in new.fixed_ips])

        info, _ = await self.store.commit(build)
        return info

    async def remove_interface(
        self, ctx: Context, router_id: str, subnet_id: str, port_id: str
    ) -> InterfaceInfo:
        _check_interface_request(subnet_id, port_id, removing=True)

        def build(txn: Txn) -> InterfaceInfo:
            router = self.find(ctx, Router, router_id, "router_id")
            txn.depends_on(router)
            interfaces = [
                p for p in router_ports(self.cache, router.id) if p.device_owner == ROUTER_INTERFACE
            ]
            if port_id:
                found = [p for p in interfaces if p.id == port_id]
                if not found:
                    raise NotFound(
                        f"Router {router.id} does not have an interface with id {port_id}",
                        reason="RouterInterfaceNotFound",
                    )
                port = found[0]
                if subnet_id and subnet_id not in (s for s, _ in port.fixed_ips):
                    raise _no_interface_on(router, subnet_id)
                removed = [s for s, _ in port.fixed_ips]
            else:
                found = [p for p in interfaces if any(s == subnet_id for s, _ in p.fixed_ips)]
                if not found:
                    raise _no_interface_on(router, subnet_id)
                port = found[0]
                removed = [subnet_id]
            self._check_interface_unused(txn, router, port, removed)
            kept = [(s, ip) for s, ip in port.fixed_ips if s not in removed]
            if kept:
                txn.update(port, bump(port, {"fixed_ips": kept}))
            else:
                txn.delete(port)
            return _info(router, port, removed)

        info, _ = await self.store.commit(build)
        return info

    def _check_interface_unused(
        self, txn: Txn, router: Router, port: Port, removed: list[str]
    ) -> None:
        for fip in self.cache.related(FloatingIP, "fip_router", router.id):
            fixed = self.cache.get(Port, fip.port_id)
            subnets = [
                s for s, ip in (fixed.fixed_ips if fixed else ()) if ip == fip.fixed_ip_address
            ]
            used = next((s for s in subnets if s in removed), None)
            if used is not None:
                raise FailedPrecondition(
                    f"Router interface for subnet {used} on router {router.id} cannot be deleted,"
                    " as it is required by one or more floating IPs.",
                    reason="RouterInterfaceInUseByFloatingIP",
                )
        txn.prefix_unchanged(f"fiprtr/{router.id}/")
        remaining = [
            c
            for p in router_ports(self.cache, router.id)
            for s, c in self._cidrs(p)
            if p.id != port.id or s not in removed
        ]
        for subnet_id in removed:
            subnet = self.cache.get(Subnet, subnet_id)
            if subnet is None:
                continue
            for _, nexthop in router.routes:
                if _in_any(nexthop, [subnet.cidr]) and not _in_any(nexthop, remaining):
                    raise FailedPrecondition(
                        f"Router interface for subnet {subnet_id} on router {router.id} cannot be"
                        " deleted, as it is required by one or more routes.",
                        reason="RouterInterfaceInUseByRoute",
                    )

    def _subnet_visible(self, ctx: Context, subnet: Any) -> bool:
        if ctx.is_admin or subnet.project_id == ctx.project_id:
            return True
        net = self.cache.get(Network, subnet.network_id)
        return net is not None and net.shared

    def _cidrs(self, port: Port) -> list[tuple[str, str]]:
        out = []
        for subnet_id, _ in port.fixed_ips:
            subnet = self.cache.get(Subnet, subnet_id)
            if subnet is not None:
                out.append((subnet_id, subnet.cidr))
        return out

    def _check_router_subnets(
        self, txn: Txn, router: Router, new: list[Subnet], field: str, exclude: str | None
    ) -> None:
        """Neutron's _check_for_dup_router_subnets: no subnet twice, no overlapping CIDRs."""
        txn.prefix_unchanged(f"rtrport/{router.id}/")
        existing = [
            (s, c)
            for p in router_ports(self.cache, router.id)
            if p.id != exclude
            for s, c in self._cidrs(p)
        ]
        for subnet in new:
            for sub_id, cidr in existing:
                if sub_id == subnet.id:
                    raise bad_request(
                        "router", f"Router already has a port on subnet {subnet.id}", field
                    )
                if ipaddress.ip_network(subnet.cidr).overlaps(ipaddress.ip_network(cidr)):
                    raise bad_request(
                        "router",
                        f"Cidr {subnet.cidr} of subnet {subnet.id} overlaps with cidr {cidr}"
                        f" of subnet {sub_id}",
                        field,
                    )

    # -- routes
    def _check_routes_nexthops(
        self, txn: Txn, router: Router, routes: list[Pair], new: Router, made: list[Port]
    ) -> None:
        """Neutron's _validate_routes_nexthop, against the router's ports (gateway included)."""
        if len(routes) > MAX_ROUTES:
            raise InvalidArgument(
                f"Unable to complete operation for {router.id}. The number of routes exceeds"
                f" the maximum {MAX_ROUTES}.",
                reason="RoutesExhausted",
                field="router.routes",
            )
        txn.prefix_unchanged(f"rtrport/{router.id}/")
        ports = [p for p in router_ports(self.cache, router.id) if p.id != router.gw_port_id]
        gw = made[-1] if made else self.gateway_port(new)
        if gw is not None:
            ports.append(gw)  # the gateway the update leaves (it may have replaced it)
        cidrs = [c for p in ports for _, c in self._cidrs(p)]
        ips = {ip for p in ports for _, ip in p.fixed_ips}
        for i, (_, nexthop) in enumerate(routes):
            reason = ""
            if not _in_any(nexthop, cidrs):
                reason = "the nexthop is not connected with router"
            elif nexthop in ips:
                reason = "the nexthop is used by router"
            if reason:
                shown = [{"destination": d, "nexthop": n} for d, n in routes]
                raise InvalidArgument(
                    f"Invalid format for routes: {shown}, {reason}",
                    reason="InvalidRoutes",
                    field=f"router.routes[{i}].nexthop",
                )


def _check_gw_policy(ctx: Context, gw: Mapping[str, Any]) -> None:
    # Neutron's policy: only admins choose SNAT mode or the gateway's addresses.
    if "enable_snat" in gw:
        ctx.require_admin("setting external_gateway_info.enable_snat")
    if gw.get("external_fixed_ips"):
        ctx.require_admin("setting external_gateway_info.external_fixed_ips")


def _check_not_gateway_ips(fixed: list[Pair], subnets: list[Subnet]) -> None:
    gateways = {s.gateway_ip for s in subnets if s.gateway_ip}
    for i, (_, ip) in enumerate(fixed):
        if ip and ip in gateways:
            raise bad_request(
                "router",
                f"External IP {ip} is the same as the gateway IP",
                f"{GW_FIELD}.external_fixed_ips[{i}].ip_address",
            )


def _check_interface_request(subnet_id: str, port_id: str, removing: bool = False) -> None:
    if subnet_id and port_id and not removing:
        raise bad_request("router", "Cannot specify both subnet-id and port-id", "port_id")
    if not subnet_id and not port_id:
        raise bad_request("router", "Either subnet_id or port_id must be specified", "subnet_id")


def _check_routes_format(routes: list[Pair]) -> list[Pair]:
    out: list[Pair] = []
    for i, (destination, nexthop) in enumerate(routes):
        try:
            dest = ipaddress.ip_network(destination, strict=True)
        except ValueError:
            raise InvalidArgument(
                f"'{destination}' is not a valid IP subnet",
                field=f"router.routes[{i}].destination",
            ) from None
        try:
            hop = ipaddress.ip_address(nexthop)
        except ValueError:
            raise InvalidArgument(
                f"'{nexthop}' is not a valid IP address", field=f"router.routes[{i}].nexthop"
            ) from None
        if dest.version != hop.version:
            raise InvalidArgument(
                f"nexthop {nexthop} is not of the IP version of {destination}",
                field=f"router.routes[{i}].nexthop",
            )
        route = (str(dest), str(hop))
        if route in out:
            raise InvalidArgument(
                f"Duplicate hostroute '{destination}'", field=f"router.routes[{i}]"
            )
        out.append(route)
    return out


def _subnets_of(cache: Any, port: Port) -> list[Subnet]:
    out = []
    for subnet_id, _ in port.fixed_ips:
        subnet = cache.get(Subnet, subnet_id)
        if subnet is not None and subnet not in out:
            out.append(subnet)
    return out


def _in_any(ip: str, cidrs: list[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(
        addr.version == net.version and addr in net
        for net in (ipaddress.ip_network(c) for c in cidrs)
    )


def _no_interface_on(router: Router, subnet_id: str) -> NotFound:
    return NotFound(
        f"Router {router.id} has no interface on subnet {subnet_id}",
        reason="RouterInterfaceNotFoundForSubnet",
    )


def _info(router: Router, port: Port, subnet_ids: list[str]) -> InterfaceInfo:
    return InterfaceInfo(
        router_id=router.id,
        project_id=router.project_id,
        network_id=port.network_id,
        port_id=port.id,
        subnet_ids=subnet_ids,
    )
