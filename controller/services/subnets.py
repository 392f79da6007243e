"""Subnets: IPAM policy validated by controller.ipam, overlap and in-use rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller import ipam
from controller.auth import Context
from controller.errors import AlreadyExists, FailedPrecondition, PermissionDenied
from controller.indexes import AUTO_DELETE_OWNERS
from controller.model import Network, Port, Subnet
from controller.services.base import (
    ListQuery,
    Service,
    bump,
    check_revision,
    check_update_fields,
    network_visible,
    reject_unknown,
)
from controller.store import Txn

CREATE_FIELDS = frozenset(
    {
        "network_id",
        "ip_version",
        "cidr",
        "gateway_ip",
        "allocation_pools",
        "dns_nameservers",
        "host_routes",
        "enable_dhcp",
        "ipv6_ra_mode",
        "ipv6_address_mode",
    }
)
UPDATE_FIELDS = frozenset(
    {"gateway_ip", "allocation_pools", "dns_nameservers", "host_routes", "enable_dhcp"}
)


class SubnetService(Service):
    def visible(self, ctx: Context, obj: Any) -> bool:
        if ctx.is_admin or obj.project_id == ctx.project_id:
            return True
        net = self.cache.get(Network, obj.network_id)
        return net is not None and (net.shared or net.external)

    def plan(self, attrs: Mapping[str, Any]) -> ipam.SubnetPlan:
        return ipam.validate_subnet(
            cidr=attrs.get("cidr", ""),
            ip_version=attrs.get("ip_version"),
            gateway_ip=attrs.get("gateway_ip"),
            allocation_pools=list(attrs.get("allocation_pools", [])),
            dns_nameservers=list(attrs.get("dns_nameservers", [])),
            host_routes=list(attrs.get("host_routes", [])),
            enable_dhcp=attrs.get("enable_dhcp", True),
            ipv6_ra_mode=attrs.get("ipv6_ra_mode"),
            ipv6_address_mode=attrs.get("ipv6_address_mode"),
            max_dns_nameservers=self.cfg.max_dns_nameservers,
            max_host_routes=self.cfg.max_subnet_host_routes,
        )

    def update_plan(self, old: Subnet, attrs: Mapping[str, Any]) -> ipam.SubnetPlan:
        stored = ipam.plan_from_stored(
            cidr=old.cidr,
            gateway_ip=old.gateway_ip,
            allocation_pools=old.allocation_pools,
            dns_nameservers=old.dns_nameservers,
            host_routes=old.host_routes,
            enable_dhcp=old.enable_dhcp,
            ipv6_ra_mode=old.ipv6_ra_mode or None,
            ipv6_address_mode=old.ipv6_address_mode or None,
        )
        return ipam.validate_subnet_update(
            stored,
            gateway_ip=attrs.get("gateway_ip"),
            allocation_pools=attrs.get("allocation_pools"),
            dns_nameservers=attrs.get("dns_nameservers"),
            host_routes=attrs.get("host_routes"),
            enable_dhcp=attrs.get("enable_dhcp"),
            subnet_id=old.id,
            max_dns_nameservers=self.cfg.max_dns_nameservers,
            max_host_routes=self.cfg.max_subnet_host_routes,
        )

    async def create(self, ctx: Context, attrs: Mapping[str, Any]) -> Subnet:
        reject_unknown(attrs, CREATE_FIELDS, "subnet")
        plan = self.plan(attrs)

        def build(txn: Txn) -> Subnet:
            net = self.find_network(ctx, attrs.get("network_id", ""))
            common = self.common(ctx, attrs, "subnet")
            common["quota_slot"] = self.quota_slot(txn, common["project_id"], "subnet")
            others = self.cache.related(Subnet, "net_subnets", net.id)
            ipam.check_no_overlap(plan.cidr, [(s.id, s.cidr) for s in others], network_id=net.id)
            txn.depends_on(net)
            txn.prefix_unchanged(f"netsubnet/{net.id}/")
            subnet = Subnet(
                **common,
                network_id=net.id,
                ip_version=plan.ip_version,
                cidr=plan.cidr,
                gateway_ip=plan.gateway_ip or "",
                allocation_pools=list(plan.pools),
                dns_nameservers=list(plan.dns_nameservers),
                host_routes=list(plan.host_routes),
                enable_dhcp=attrs.get("enable_dhcp", True),
                ipv6_ra_mode=attrs.get("ipv6_ra_mode") or "",
                ipv6_address_mode=attrs.get("ipv6_address_mode") or "",
            )
            txn.create(subnet)
            return subnet

        subnet, _ = await self.store.commit(build)
        return subnet

    def find_network(self, ctx: Context, network_id: str) -> Network:
        net = self.find(ctx, Network, network_id, "subnet.network_id", network_visible)
        if not ctx.is_admin and net.project_id != ctx.project_id:
            raise PermissionDenied(
                "only the network's owner or an admin may add subnets to it",
                reason="PolicyNotAuthorized",
            )
        return net

    async def get(self, ctx: Context, id_: str) -> Subnet:
        await self.store.sync()
        return self.find(ctx, Subnet, id_)

    async def list_page(self, ctx: Context, q: ListQuery) -> tuple[list[Subnet], str]:
        await self.store.sync()
        net_id = q.equals.get("network_id")
        objs = (
            self.cache.related(Subnet, "net_subnets", net_id) if net_id else self.cache.all(Subnet)
        )
        return self.page(ctx, objs, q)

    async def update(
        self, ctx: Context, id_: str, attrs: Mapping[str, Any], if_revision: int
    ) -> Subnet:
        check_update_fields(attrs, UPDATE_FIELDS, "subnet")

        def build(txn: Txn) -> Subnet:
            old = self.find(ctx, Subnet, id_)
            self._require_owner(ctx, old)
            check_revision(old, if_revision)
            plan = self.update_plan(old, attrs)
            changes: dict[str, Any] = dict(attrs)
            changes["gateway_ip"] = plan.gateway_ip or ""
            changes["allocation_pools"] = list(plan.pools)
            changes["dns_nameservers"] = list(plan.dns_nameservers)
            changes["host_routes"] = list(plan.host_routes)
            new_gw = changes["gateway_ip"]
            if new_gw and new_gw != old.gateway_ip:
                holders = self.cache.ids("ip", (old.id, new_gw))
                if holders:
                    raise AlreadyExists(
                        f"Gateway ip {new_gw} conflicts with allocation to port {min(holders)}",
                        reason="GatewayIpInUse",
                        field="subnet.gateway_ip",
                    )
                txn.prefix_unchanged(f"ip/{old.id}/")
            new = bump(old, changes)
            txn.update(old, new)
            return new

        subnet, _ = await self.store.commit(build)
        return subnet

    async def delete(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            subnet = self.find(ctx, Subnet, id_)
            self._require_owner(ctx, subnet)
            check_revision(subnet, if_revision)
            ports = self.cache.related(Port, "subnet_ports", subnet.id)
            in_use = sorted(p.id for p in ports if p.device_owner not in AUTO_DELETE_OWNERS)
            if in_use:
                raise FailedPrecondition(
                    f"Unable to complete operation on subnet {subnet.id}: One or more ports"
                    f" have an IP allocation from this subnet: {', '.join(in_use)}",
                    reason="SubnetInUse",
                    ports=",".join(in_use),
                )
            txn.prefix_unchanged(f"ip/{subnet.id}/")
            for port in ports:  # service ports just lose their address on it
                kept = [fip for fip in port.fixed_ips if fip[0] != subnet.id]
                txn.update(port, bump(port, {"fixed_ips": kept}))
            txn.delete(subnet)

        await self.store.commit(build)

    def _require_owner(self, ctx: Context, subnet: Subnet) -> None:
        if not ctx.is_admin and subnet.project_id != ctx.project_id:
            raise PermissionDenied(
                "only the subnet's owner or an admin may change it", reason="PolicyNotAuthorized"
            )
