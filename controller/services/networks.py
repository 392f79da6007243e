"""Networks: provider segments through the type drivers, sharing, deletion rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.auth import Context
from controller.config import Config
from controller.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from controller.indexes import AUTO_DELETE_OWNERS
from controller.model import Network, Port, Subnet
from controller.services import l3
from controller.services.base import (
    ListQuery,
    Service,
    bump,
    check_revision,
    check_update_fields,
    network_visible,
    reject_unknown,
)
from controller.store import Store, Txn
from controller.typedrivers.base import TypeDriver

CREATE_FIELDS = frozenset(
    {
        "admin_state_up",
        "shared",
        "external",
        "mtu",
        "provider_network_type",
        "provider_physical_network",
        "provider_segmentation_id",
        "port_security_enabled",
    }
)
UPDATE_FIELDS = frozenset({"admin_state_up", "shared", "external", "mtu", "port_security_enabled"})
PROVIDER_FIELDS = (
    "provider_network_type",
    "provider_physical_network",
    "provider_segmentation_id",
)
MIN_MTU = 68


class NetworkService(Service):
    def __init__(self, store: Store, cfg: Config, type_drivers: dict[str, TypeDriver]) -> None:
        super().__init__(store, cfg)
        self.type_drivers = type_drivers

    def visible(self, ctx: Context, obj: Any) -> bool:
        return network_visible(ctx, obj)

    async def create(self, ctx: Context, attrs: Mapping[str, Any]) -> Network:
        reject_unknown(attrs, CREATE_FIELDS, "network")
        provider = {k: attrs[k] for k in PROVIDER_FIELDS if k in attrs}
        if provider:
            ctx.require_admin("setting provider attributes")
        if attrs.get("shared"):
            ctx.require_admin("creating a shared network")
        if attrs.get("external"):
            ctx.require_admin("creating an external network")
        driver, physnet, segid = self._provider_request(provider)

        def build(txn: Txn) -> Network:
            common = self.common(ctx, attrs, "network")
            common["quota_slot"] = self.quota_slot(txn, common["project_id"], "network")
            seg = driver.allocate(self.cache, txn, physnet, segid, self.store.rng)
            max_mtu = driver.mtu(seg.physical_network)
            mtu = attrs.get("mtu", max_mtu)
            self._check_mtu(mtu, max_mtu)
            net = Network(
                **common,
                admin_state_up=attrs.get("admin_state_up", True),
                shared=attrs.get("shared", False),
                external=attrs.get("external", False),
                mtu=mtu,
                provider_network_type=seg.network_type,
                provider_physical_network=seg.physical_network,
                provider_segmentation_id=seg.segmentation_id,
                port_security_enabled=attrs.get("port_security_enabled", True),
            )
            txn.create(net)
            return net

        net, _ = await self.store.commit(build)
        return net

    def _provider_request(
        self, provider: Mapping[str, Any]
    ) -> tuple[TypeDriver, str | None, int | None]:
        ntype = provider.get("provider_network_type")
        physnet = provider.get("provider_physical_network")
        segid = provider.get("provider_segmentation_id")
        if not ntype:
            if physnet is not None or segid is not None:
                raise InvalidArgument(
                    "provider_network_type is required with other provider attributes",
                    reason="InvalidInput",
                    field="network.provider_network_type",
                )
            tenant = self.cfg.ml2.tenant_network_types
            if not tenant:
                raise InvalidArgument(
                    "no tenant network types are configured; give provider attributes",
                    reason="InvalidInput",
                    field="network.provider_network_type",
                )
            return self.type_drivers[tenant[0]], None, None
        driver = self.type_drivers.get(ntype)
        if driver is None:
            raise InvalidArgument(
                f"network type {ntype!r} is not supported (enabled: {sorted(self.type_drivers)})",
                reason="InvalidInput",
                field="network.provider_network_type",
            )
        driver.validate(physnet, segid, "network")
        return driver, physnet, segid

    def _check_mtu(self, mtu: int, max_mtu: int) -> None:
        if not MIN_MTU <= mtu <= max_mtu:
            raise InvalidArgument(
                f"Requested MTU {mtu} is out of range {MIN_MTU}..{max_mtu} for this network type",
                reason="InvalidInput",
                field="network.mtu",
            )

    async def get(self, ctx: Context, id_: str) -> Network:
        await self.store.sync()
        return self.find(ctx, Network, id_)

    async def list_page(self, ctx: Context, q: ListQuery) -> tuple[list[Network], str]:
        await self.store.sync()
        return self.page(ctx, self.cache.all(Network), q)

    async def update(
        self, ctx: Context, id_: str, attrs: Mapping[str, Any], if_revision: int
    ) -> Network:
        if any(k in attrs for k in PROVIDER_FIELDS):
            raise InvalidArgument(
                "Plugin does not support updating provider attributes",
                reason="InvalidInput",
                field=f"network.{next(k for k in PROVIDER_FIELDS if k in attrs)}",
            )
        check_update_fields(attrs, UPDATE_FIELDS, "network")
        if "shared" in attrs or "external" in attrs:
            ctx.require_admin("changing shared or external")

        def build(txn: Txn) -> Network:
            old = self.find(ctx, Network, id_)
            self._require_owner(ctx, old)
            check_revision(old, if_revision)
            if old.external and attrs.get("external") is False:
                l3.check_external_unused(self.cache, txn, old)  # ExternalNetworkInUse
            if "mtu" in attrs:
                driver = self.type_drivers[old.provider_network_type]
                self._check_mtu(attrs["mtu"], driver.mtu(old.provider_physical_network))
            if old.shared and attrs.get("shared") is False:
                others = [
                    p.id
                    for p in self.cache.related(Port, "net_ports", old.id)
                    if p.project_id != old.project_id and p.device_owner not in AUTO_DELETE_OWNERS
                ]
                if others:
                    raise FailedPrecondition(
                        f"Unable to reconfigure sharing settings for network {old.id}."
                        " Multiple tenants are using it.",
                        reason="InvalidSharedSetting",
                    )
                txn.prefix_unchanged(f"netport/{old.id}/")
            new = bump(old, attrs)
            txn.update(old, new)
            return new

        net, _ = await self.store.commit(build)
        return net

    async def delete(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            net = self.find(ctx, Network, id_)
            self._require_owner(ctx, net)
            check_revision(net, if_revision)
            ports = self.cache.related(Port, "net_ports", net.id)
            in_use = sorted(p.id for p in ports if p.device_owner not in AUTO_DELETE_OWNERS)
            if in_use:
                raise FailedPrecondition(
                    f"Unable to complete operation on network {net.id}. There are one or more"
                    f" ports still in use on the network: {', '.join(in_use)}",
                    reason="NetworkInUse",
                    ports=",".join(in_use),
                )
            txn.prefix_unchanged(f"netport/{net.id}/")
            txn.prefix_unchanged(f"netsubnet/{net.id}/")
            for port in ports:
                txn.delete(port)
            for subnet in self.cache.related(Subnet, "net_subnets", net.id):
                txn.delete(subnet)
            txn.delete(net)

        await self.store.commit(build)

    def _require_owner(self, ctx: Context, net: Network) -> None:
        # A shared network is visible to everyone, but only its owner may change it.
        if not ctx.is_admin and net.project_id != ctx.project_id:
            raise PermissionDenied(
                "only the network's owner or an admin may change it", reason="PolicyNotAuthorized"
            )
