"""Floating IPs: an address on an external network (held by a network:floatingip
port) mapped to a fixed IP of an internal port through a router (Neutron l3_db)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from controller.auth import Context
from controller.config import Config
from controller.errors import FailedPrecondition, NotFound, ResourceExhausted
from controller.indexes import FLOATINGIP_OWNER, ROUTER_INTERFACE
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
    disassociated,
    new_port,
)
from controller.services.ports import PortService
from controller.store import Store, Txn

CREATE_FIELDS = frozenset(
    {"floating_network_id", "floating_ip_address", "subnet_id", "port_id", "fixed_ip_address"}
)
UPDATE_FIELDS = frozenset({"port_id", "fixed_ip_address"})
KIND = "floating_ip"  # the request field


class FloatingIPService(Service):
    def __init__(self, store: Store, cfg: Config, ports: PortService) -> None:
        super().__init__(store, cfg)
        self.ports = ports

    def _find(self, ctx: Context, id_: str) -> FloatingIP:
        fip = self.cache.get(FloatingIP, id_) if id_ else None
        if fip is None or not self.visible(ctx, fip):
            if not id_:
                self.find(ctx, FloatingIP, id_)  # InvalidArgument: id is required
            raise NotFound(
                f"Floating IP {id_} could not be found",
                reason="FloatingIPNotFound",
                resource_id=id_,
            )
        return fip

    # -- create / read
    async def create(self, ctx: Context, attrs: Mapping[str, Any]) -> FloatingIP:
        reject_unknown(attrs, CREATE_FIELDS, KIND)
        if attrs.get("floating_ip_address"):
            # Neutron's policy create_floatingip:floating_ip_address is admin only.
            ctx.require_admin("choosing floating_ip_address")
        if attrs.get("fixed_ip_address") and not attrs.get("port_id"):
            raise bad_request(
                "floatingip",
                "fixed_ip_address cannot be specified without a port_id",
                f"{KIND}.fixed_ip_address",
            )

        def build(txn: Txn) -> FloatingIP:
            net = self.find(
                ctx,
                Network,
                attrs.get("floating_network_id", ""),
                f"{KIND}.floating_network_id",
                network_visible,
            )
            if not net.external:
                raise bad_request(
                    "floatingip",
                    f"Network {net.id} is not a valid external network",
                    f"{KIND}.floating_network_id",
                )
            common = self.common(ctx, attrs, KIND)
            project = common["project_id"]
            common["quota_slot"] = self.quota_slot(txn, project, FloatingIP.KIND)
            fip = FloatingIP(**common, floating_network_id=net.id)
            wanted = self._address_request(net, attrs)
            port = new_port(
                self.ports,
                txn,
                net,
                project_id="",
                device_id=fip.id,
                device_owner=FLOATINGIP_OWNER,
                fixed_ips=[wanted] if any(wanted) else self._allocate(txn, net),
                allocated=not any(wanted),
                field=f"{KIND}.floating_ip_address",
                exact=True,
            )
            subnet_id, address = port.fixed_ips[0]
            fip = dataclasses.replace(
                fip, floating_port_id=port.id, floating_ip_address=address, subnet_id=subnet_id
            )
            if attrs.get("port_id"):
                assoc: dict[str, Any] = self._associate(ctx, txn, fip, attrs["port_id"], attrs)
                fip = dataclasses.replace(fip, **assoc)
            txn.create(port)
            txn.create(fip)
            return fip

        fip, _ = await self.store.commit(build)
        return fip

    def _address_request(self, net: Network, attrs: Mapping[str, Any]) -> Pair:
        """(subnet_id, ip) for the floating port: IPv4 only, as Neutron allocates them."""
        subnet_id: str = attrs.get("subnet_id", "")
        ip: str = attrs.get("floating_ip_address", "")
        subnets = sorted(
            self.cache.related(Subnet, "net_subnets", net.id), key=lambda s: (s.created_at, s.id)
        )
        if subnet_id:
            subnet = next((s for s in subnets if s.id == subnet_id), None)
            if subnet is None:
                raise bad_request(
                    "floatingip",
                    f"Subnet {subnet_id} is not on network {net.id}",
                    f"{KIND}.subnet_id",
                )
            if subnet.ip_version != 4:
                raise bad_request(
                    "floatingip", f"Subnet {subnet_id} is not an IPv4 subnet", f"{KIND}.subnet_id"
                )
            return subnet_id, ip
        v4 = [s for s in subnets if s.ip_version == 4]
        if not v4:
            raise bad_request(
                "floatingip",
                f"Network {net.id} does not contain any IPv4 subnet",
                f"{KIND}.floating_network_id",
            )
        if ip:
            return "", ip
        return "", ""

    def _allocate(self, txn: Txn, net: Network) -> list[Pair]:
        """An address from the first IPv4 subnet with room (reserved in txn)."""
        subnets = sorted(
            self.cache.related(Subnet, "net_subnets", net.id), key=lambda s: (s.created_at, s.id)
        )
        for subnet in subnets:
            if subnet.ip_version != 4:
                continue
            ip = self.ports._allocate_from(txn, subnet)
            if ip is not None:
                txn.depends_on(subnet)
                return [(subnet.id, ip)]
        raise ResourceExhausted(
            f"No more IP addresses available on network {net.id}.",
            reason="IpAddressGenerationFailure",
        )

    async def get(self, ctx: Context, id_: str) -> FloatingIP:
        await self.store.sync()
        return self._find(ctx, id_)

    async def list_page(self, ctx: Context, q: ListQuery) -> tuple[list[FloatingIP], str]:
        await self.store.sync()
        return self.page(ctx, self.cache.all(FloatingIP), q)

    # -- association
    def _associate(
        self, ctx: Context, txn: Txn, fip: FloatingIP, port_id: str, attrs: Mapping[str, Any]
    ) -> dict[str, str]:
        """Neutron's _get_assoc_data: the fixed IP, and the router that reaches it."""
        port = self.find(ctx, Port, port_id, f"{KIND}.port_id", self.ports.visible)
        if port.project_id != fip.project_id and not ctx.is_admin:
            raise bad_request(
                "floatingip",
                f"Cannot create floating IP and bind it to Port {port.id}, since that port is"
                f" owned by a different tenant",
                f"{KIND}.port_id",
            )
        fixed_ip: str = attrs.get("fixed_ip_address", "")
        if fixed_ip:
            match = [(s, ip) for s, ip in port.fixed_ips if ip == fixed_ip]
            if not match:
                raise bad_request(
                    "floatingip",
                    f"Port {port.id} does not have fixed ip {fixed_ip}",
                    f"{KIND}.fixed_ip_address",
                )
        else:
            match = [(s, ip) for s, ip in port.fixed_ips if ":" not in ip]
            if not match:
                raise bad_request(
                    "floatingip",
                    f"Cannot add floating IP to port {port.id} that has no fixed IPv4 addresses",
                    f"{KIND}.port_id",
                )
            if len(match) > 1:
                raise bad_request(
                    "floatingip",
                    f"Port {port.id} has multiple fixed IPv4 addresses.  Must provide a specific"
                    " IPv4 address when assigning a floating IP",
                    f"{KIND}.fixed_ip_address",
                )
        subnet_id, fixed_ip = match[0]
        txn.depends_on(port)
        router, interface = self._router_for(port, subnet_id, fip.floating_network_id)
        txn.depends_on(router)
        txn.depends_on(interface)
        key = (port.id, fixed_ip, fip.floating_network_id)
        holders = self.cache.ids("fip_assoc", key) - {fip.id}
        unchanged = key == (fip.port_id, fip.fixed_ip_address, fip.floating_network_id)
        if holders or (not unchanged and not txn.reserve(("fipassoc", *key))):
            raise FailedPrecondition(
                f"Cannot associate floating IP {fip.floating_ip_address} ({fip.id}) with port"
                f" {port.id} using fixed IP {fixed_ip}, as that fixed IP already has a floating"
                f" IP on external network {fip.floating_network_id}.",
                reason="FloatingIPPortAlreadyAssociated",
                floating_ip_id=min(holders) if holders else "",
            )
        return {"port_id": port.id, "fixed_ip_address": fixed_ip, "router_id": router.id}

    def _router_for(self, port: Port, subnet_id: str, ext_net_id: str) -> tuple[Router, Port]:
        """A router with an interface on the subnet and a gateway on the external network,
        preferring the one that holds the subnet's gateway IP (Neutron's
        get_router_for_floatingip)."""
        subnet = self.cache.get(Subnet, subnet_id)
        candidates: list[tuple[bool, str, Router, Port]] = []
        for iface in self.cache.related(Port, "subnet_ports", subnet_id):
            if iface.device_owner != ROUTER_INTERFACE:
                continue
            router = self.cache.get(Router, iface.device_id)
            if router is None or router.gw_network_id != ext_net_id:
                continue
            ips = {ip for s, ip in iface.fixed_ips if s == subnet_id}
            is_gateway = subnet is not None and subnet.gateway_ip in ips
            candidates.append((not is_gateway, router.id, router, iface))
        if not candidates:
            raise NotFound(
                f"External network {ext_net_id} is not reachable from subnet {subnet_id}."
                f"  Therefore, cannot associate Port {port.id} with a Floating IP.",
                reason="ExternalGatewayForFloatingIPNotFound",
            )
        _, _, router, iface = min(candidates, key=lambda c: (c[0], c[1]))
        return router, iface

    # -- update / delete
    async def update(
        self, ctx: Context, id_: str, attrs: Mapping[str, Any], if_revision: int
    ) -> FloatingIP:
        check_update_fields(attrs, UPDATE_FIELDS, KIND)

        def build(txn: Txn) -> FloatingIP:
            old = self._find(ctx, id_)
            check_revision(old, if_revision)
            changes: dict[str, Any] = {
                k: v for k, v in attrs.items() if k not in ("port_id", "fixed_ip_address")
            }
            port_id = attrs.get("port_id", old.port_id if "fixed_ip_address" in attrs else None)
            if port_id == "":
                if attrs.get("fixed_ip_address"):
                    raise bad_request(
                        "floatingip",
                        "fixed_ip_address cannot be specified without a port_id",
                        f"{KIND}.fixed_ip_address",
                    )
                changes.update(disassociated())
            elif port_id is not None:
                changes.update(self._associate(ctx, txn, old, port_id, attrs))
            new = bump(old, changes)
            txn.update(old, new)
            return new

        fip, _ = await self.store.commit(build)
        return fip

    async def delete(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            fip = self._find(ctx, id_)
            check_revision(fip, if_revision)
            port = self.cache.get(Port, fip.floating_port_id)
            if port is not None:
                txn.delete(port)
            txn.delete(fip)

        await self.store.commit(build)
