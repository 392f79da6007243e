"""Ports: MAC and IP allocation, security groups, bindings. The hot path of the API."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from controller import ipam
from controller.auth import Context
from controller.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from controller.model import Network, Pair, Port, SecurityGroup, Subnet
from controller.services import binding, l3
from controller.services.base import (
    ListQuery,
    Service,
    bump,
    check_revision,
    check_update_fields,
    network_visible,
    reject_unknown,
)
from controller.services.security_groups import SecurityGroupService
from controller.store import Store, Txn

CREATE_FIELDS = frozenset(
    {
        "network_id",
        "admin_state_up",
        "mac_address",
        "fixed_ips",
        "device_id",
        "device_owner",
        "security_groups",
        "port_security_enabled",
        "allowed_address_pairs",
        "binding_host_id",
        "binding_vnic_type",
        "binding_profile",
    }
)
UPDATE_FIELDS = CREATE_FIELDS - {"network_id"}
ADMIN_FIELDS = ("binding_host_id", "binding_profile")
VNIC_TYPES = frozenset(
    {
        "normal",
        "direct",
        "macvtap",
        "baremetal",
        "direct-physical",
        "virtio-forwarder",
        "smart-nic",
        "vdpa",
        "remote-managed",
    }
)
MAX_ALLOWED_ADDRESS_PAIRS = 10
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
ROUTER_OWNERS = frozenset(
    {
        "network:router_interface",
        "network:router_gateway",
        "network:router_interface_distributed",
        "network:ha_router_replicated_interface",
    }
)


class PortService(Service):
    def __init__(self, store: Store, cfg: Any, sgs: SecurityGroupService) -> None:
        super().__init__(store, cfg)
        self.sgs = sgs
        self._plans: dict[tuple[str, int], tuple[ipam.SubnetPlan, ipam.PoolAllocator]] = {}
        base = cfg.base_mac.lower().split(":")
        self._mac_prefix = ":".join(base[:3])

    def visible(self, ctx: Context, obj: Any) -> bool:
        if ctx.is_admin or obj.project_id == ctx.project_id:
            return True
        net = self.cache.get(Network, obj.network_id)
        return net is not None and net.project_id == ctx.project_id

    # -- create
    async def create(self, ctx: Context, attrs: Mapping[str, Any]) -> Port:
        reject_unknown(attrs, CREATE_FIELDS, "port")
        for name in ADMIN_FIELDS:
            if attrs.get(name):
                ctx.require_admin(f"setting {name}")
        self._check_static(attrs)

        def build(txn: Txn) -> Port:
            net = self.find(
                ctx, Network, attrs.get("network_id", ""), "port.network_id", network_visible
            )
            owner_or_admin = ctx.is_admin or net.project_id == ctx.project_id
            if not owner_or_admin:
                self._require_network_owner_fields(attrs)
            common = self.common(ctx, attrs, "port")
            project = common["project_id"]
            common["quota_slot"] = self.quota_slot(txn, project, "port")
            port_security = attrs.get("port_security_enabled", net.port_security_enabled)
            sgs = self._security_groups(ctx, txn, attrs, project, port_security)
            self._check_port_security(port_security, sgs, attrs.get("allowed_address_pairs"))
            mac = self._mac(txn, net, attrs.get("mac_address", ""))
            fixed_ips = self._fixed_ips(txn, net, attrs, attrs.get("device_owner", ""), mac)
            txn.depends_on(net)
            port = Port(
                **common,
                network_id=net.id,
                admin_state_up=attrs.get("admin_state_up", True),
                status="DOWN",
                mac_address=mac,
                fixed_ips=fixed_ips,
                device_id=attrs.get("device_id", ""),
                device_owner=attrs.get("device_owner", ""),
                security_groups=sgs,
                port_security_enabled=port_security,
                allowed_address_pairs=_pairs(attrs.get("allowed_address_pairs", []), mac),
                binding_host_id=attrs.get("binding_host_id", ""),
                **binding.port_fields(self.cache, net, attrs.get("binding_host_id", "")),
                binding_vnic_type=attrs.get("binding_vnic_type") or "normal",
                binding_profile=dict(attrs.get("binding_profile", {})),
            )
            txn.create(port)
            return port

        port, _ = await self.store.commit(build)
        return port

    def _check_static(self, attrs: Mapping[str, Any]) -> None:
        """Checks that need no datastore state."""
        vnic = attrs.get("binding_vnic_type")
        if vnic is not None and vnic not in VNIC_TYPES:
            raise InvalidArgument(
                f"{vnic!r} is not a valid vnic type ({', '.join(sorted(VNIC_TYPES))})",
                field="port.binding_vnic_type",
            )
        for name in ("device_id", "device_owner"):
            if len(attrs.get(name) or "") > 255:
                raise InvalidArgument(f"{name} exceeds 255 characters", field=f"port.{name}")
        pairs = attrs.get("allowed_address_pairs")
        if pairs is not None:
            if len(pairs) > MAX_ALLOWED_ADDRESS_PAIRS:
                raise InvalidArgument(
                    f"The number of allowed address pair exceeds the maximum"
                    f" {MAX_ALLOWED_ADDRESS_PAIRS}.",
                    reason="AllowedAddressPairExhausted",
                    field="port.allowed_address_pairs",
                )
            seen: set[Pair] = set()
            for i, (ip, mac) in enumerate(pairs):
                if not _is_ip_or_cidr(ip):
                    raise InvalidArgument(
                        f"{ip!r} is not a valid IP address or CIDR",
                        field=f"port.allowed_address_pairs[{i}].ip_address",
                    )
                if mac and not MAC_RE.match(mac.lower()):
                    raise InvalidArgument(
                        f"{mac!r} is not a valid MAC address",
                        field=f"port.allowed_address_pairs[{i}].mac_address",
                    )
                if (ip, mac) in seen:
                    raise InvalidArgument(
                        "Request contains duplicate address pair",
                        reason="DuplicateAddressPairInRequest",
                        field=f"port.allowed_address_pairs[{i}]",
                    )
                seen.add((ip, mac))
        fips = attrs.get("fixed_ips")
        if fips is not None and len(fips) > self.cfg.max_fixed_ips_per_port:
            raise InvalidArgument(
                "Exceeded maximum amount of fixed ips per port"
                f" ({self.cfg.max_fixed_ips_per_port})",
                field="port.fixed_ips",
            )

    def _require_network_owner_fields(self, attrs: Mapping[str, Any]) -> None:
        """Neutron's policy: only the network owner (or admin) picks MACs, IPs, network owners."""
        if attrs.get("mac_address"):
            raise PermissionDenied(
                "only the network owner may choose a MAC address", reason="PolicyNotAuthorized"
            )
        if any(ip for _, ip in attrs.get("fixed_ips") or ()):
            raise PermissionDenied(
                "only the network owner may choose fixed IP addresses",
                reason="PolicyNotAuthorized",
            )
        if (attrs.get("device_owner") or "").startswith("network:"):
            raise PermissionDenied(
                "only the network owner may create network:* ports", reason="PolicyNotAuthorized"
            )

    def _security_groups(
        self, ctx: Context, txn: Txn, attrs: Mapping[str, Any], project: str, port_security: bool
    ) -> list[str]:
        if "security_groups" not in attrs:
            if not port_security or (attrs.get("device_owner") or "").startswith("network:"):
                return []
            sg = self.sgs.default_group(txn, project)
            if self.cache.get(SecurityGroup, sg.id) is not None:
                txn.depends_on(sg)
            return [sg.id]
        ids: list[str] = list(dict.fromkeys(attrs["security_groups"]))
        for i, sg_id in enumerate(ids):
            sg = self.find(
                ctx, SecurityGroup, sg_id, f"port.security_groups[{i}]", self.sgs.visible
            )
            txn.depends_on(sg)
        return ids

    @staticmethod
    def _check_port_security(
        enabled: bool, sgs: list[str], pairs: list[Pair] | None, updating: bool = False
    ) -> None:
        if enabled:
            return
        if sgs:
            if updating:
                raise FailedPrecondition(
                    "Port has security group associated. Cannot disable port security or ip"
                    " address until security group is removed",
                    reason="PortSecurityPortHasSecurityGroup",
                )
            raise InvalidArgument(
                "Port security must be enabled and port must have an IP address in order to"
                " use security groups.",
                reason="PortSecurityAndIPRequiredForSecurityGroups",
                field="port.security_groups",
            )
        if pairs:
            raise FailedPrecondition(
                "Port Security must be enabled in order to have allowed address pairs on a port.",
                reason="AddressPairAndPortSecurityRequired",
            )

    # -- MAC
    def _mac(self, txn: Txn, net: Network, requested: str) -> str:
        if requested:
            mac = requested.lower()
            if not MAC_RE.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
                raise InvalidArgument(
                    f"'{requested}' is not a valid unicast MAC address", field="port.mac_address"
                )
            if self.cache.has("mac", (net.id, mac)) or not txn.reserve(("mac", net.id, mac)):
                raise AlreadyExists(
                    f"Unable to complete operation for network {net.id}. The mac address {mac}"
                    " is in use.",
                    reason="MacAddressInUse",
                    field="port.mac_address",
                )
            return mac
        rng = self.store.rng
        for _ in range(16):
            n = rng.getrandbits(24)
            mac = f"{self._mac_prefix}:{n >> 16:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"
            if not self.cache.has("mac", (net.id, mac)) and txn.reserve(("mac", net.id, mac)):
                return mac
        raise ResourceExhausted(
            "Unable to generate a unique MAC address", reason="MacAddressGenerationFailure"
        )

    # -- IPs
    def plan(self, subnet: Subnet) -> tuple[ipam.SubnetPlan, ipam.PoolAllocator]:
        """The subnet's IPAM plan and allocator, rebuilt only when the subnet changes."""
        key = (subnet.id, subnet.revision_number)
        got = self._plans.get(key)
        if got is None:
            if len(self._plans) > 4096:
                self._plans.clear()
            plan = ipam.plan_from_stored(
                cidr=subnet.cidr,
                gateway_ip=subnet.gateway_ip,
                allocation_pools=subnet.allocation_pools,
                ipv6_ra_mode=subnet.ipv6_ra_mode or None,
                ipv6_address_mode=subnet.ipv6_address_mode or None,
            )
            got = self._plans[key] = (plan, plan.allocator())
        return got

    def _taken(self, txn: Txn, subnet_id: str, ip: str) -> bool:
        return self.cache.has("ip", (subnet_id, ip)) or ("ip", subnet_id, ip) in txn.store.reserved

    def _take(self, txn: Txn, subnet: Subnet, ip: str, field: str) -> None:
        if self._taken(txn, subnet.id, ip) or not txn.reserve(("ip", subnet.id, ip)):
            raise AlreadyExists(
                f"Unable to complete operation for network {subnet.network_id}. The IP address"
                f" {ip} is in use.",
                reason="IpAddressInUse",
                field=field,
            )

    def _allocate_from(self, txn: Txn, subnet: Subnet) -> str | None:
        alloc = self.plan(subnet)[1]
        version = subnet.ip_version

        def used(n: int) -> bool:
            return self._taken(txn, subnet.id, ipam.int_to_ip(n, version))

        n = alloc.pick(used, self.store.rng)
        if n is None:
            return None
        ip = ipam.int_to_ip(n, version)
        txn.reserve(("ip", subnet.id, ip))
        return ip

    def _fixed_ips(
        self, txn: Txn, net: Network, attrs: Mapping[str, Any], owner: str, mac: str
    ) -> list[Pair]:
        subnets = sorted(
            self.cache.related(Subnet, "net_subnets", net.id), key=lambda s: (s.created_at, s.id)
        )
        if "fixed_ips" not in attrs:
            return self._default_ips(txn, net, subnets, mac)
        return self._requested_ips(txn, net, subnets, attrs["fixed_ips"], owner, mac, [])

    def _default_ips(self, txn: Txn, net: Network, subnets: list[Subnet], mac: str) -> list[Pair]:
        """Neutron's default: one address from the first IPv4 subnet with room, and one from
        every IPv6 subnet (EUI-64 for SLAAC / stateless subnets)."""
        out: list[Pair] = []
        v4 = [s for s in subnets if s.ip_version == 4]
        for s in v4:
            ip = self._allocate_from(txn, s)
            if ip is not None:
                txn.depends_on(s)
                out.append((s.id, ip))
                break
        else:
            if v4:
                raise ResourceExhausted(
                    f"No more IP addresses available on network {net.id}.",
                    reason="IpAddressGenerationFailure",
                )
        for s in subnets:
            if s.ip_version != 6:
                continue
            if s.ipv6_address_mode in ("slaac", "dhcpv6-stateless"):
                ip = ipam.eui64_address(s.cidr, mac)
                self._take(txn, s, ip, "port.fixed_ips")
            else:
                got = self._allocate_from(txn, s)
                if got is None:
                    raise ResourceExhausted(
                        f"No more IP addresses available for subnet {s.id}.",
                        reason="IpAddressGenerationFailure",
                    )
                ip = got
            txn.depends_on(s)
            out.append((s.id, ip))
        return out

    def _requested_ips(
        self,
        txn: Txn,
        net: Network,
        subnets: list[Subnet],
        requested: list[Pair],
        owner: str,
        mac: str,
        keep: list[Pair],
    ) -> list[Pair]:
        by_id = {s.id: s for s in subnets}
        out: list[Pair] = []
        kept = set(keep)
        for i, (subnet_id, ip) in enumerate(requested):
            field = f"port.fixed_ips[{i}]"
            if subnet_id:
                subnet = by_id.get(subnet_id)
                if subnet is None:
                    raise InvalidArgument(
                        f"Subnet {subnet_id} is not on network {net.id}",
                        reason="InvalidInput",
                        field=f"{field}.subnet_id",
                    )
            else:
                if not ip:
                    raise InvalidArgument("a fixed IP needs subnet_id or ip_address", field=field)
                found = [s for s in subnets if _contains(self.plan(s)[0], ip)]
                if not found:
                    raise InvalidArgument(
                        f"IP address {ip} is not a valid IP for any subnet on network {net.id}",
                        reason="InvalidIpForNetwork",
                        field=f"{field}.ip_address",
                    )
                subnet = found[0]
            if ip:
                value = ipam.check_requested_ip(
                    self.plan(subnet)[0],
                    ip,
                    router_port=owner in ROUTER_OWNERS,
                    subnet_id=subnet.id,
                    field=f"{field}.ip_address",
                )
                ip = ipam.int_to_ip(value, subnet.ip_version)
                if (subnet.id, ip) in out:
                    raise InvalidArgument(
                        f"Duplicate IP address {ip} in request", field=f"{field}.ip_address"
                    )
                if (subnet.id, ip) not in kept:
                    self._take(txn, subnet, ip, f"{field}.ip_address")
            elif subnet.ip_version == 6 and subnet.ipv6_address_mode in (
                "slaac",
                "dhcpv6-stateless",
            ):
                ip = ipam.eui64_address(subnet.cidr, mac)
                if (subnet.id, ip) not in kept:
                    self._take(txn, subnet, ip, field)
            else:
                got = self._allocate_from(txn, subnet)
                if got is None:
                    raise ResourceExhausted(
                        f"No more IP addresses available for subnet {subnet.id}.",
                        reason="IpAddressGenerationFailure",
                    )
                ip = got
            txn.depends_on(subnet)
            out.append((subnet.id, ip))
        return out

    # -- read
    async def get(self, ctx: Context, id_: str) -> Port:
        await self.store.sync()
        return self.find(ctx, Port, id_)

    async def list_page(self, ctx: Context, q: ListQuery) -> tuple[list[Port], str]:
        await self.store.sync()
        objs: Any = self.cache.all(Port)
        for rel, key in (
            ("net_ports", q.equals.get("network_id")),
            ("device", q.equals.get("device_id")),
            ("host_ports", q.equals.get("binding_host_id")),
        ):
            if key:
                objs = self.cache.related(Port, rel, key)
                break
        return self.page(ctx, objs, q)

    # -- update
    async def update(
        self, ctx: Context, id_: str, attrs: Mapping[str, Any], if_revision: int
    ) -> Port:
        check_update_fields(attrs, UPDATE_FIELDS, "port")
        for name in ADMIN_FIELDS:
            if name in attrs:
                ctx.require_admin(f"setting {name}")
        if "mac_address" in attrs:
            ctx.require_admin("changing mac_address")
        self._check_static(attrs)

        def build(txn: Txn) -> Port:
            old = self.find(ctx, Port, id_)
            check_revision(old, if_revision)
            net = self.cache.get(Network, old.network_id)
            assert net is not None
            if not (ctx.is_admin or net.project_id == ctx.project_id):
                self._require_network_owner_fields(attrs)
            changes: dict[str, Any] = dict(attrs)
            if "mac_address" in attrs and attrs["mac_address"].lower() != old.mac_address:
                if old.binding_vif_type not in ("unbound", "binding_failed"):
                    raise FailedPrecondition(
                        f"Unable to complete operation on port {old.id}, port is already bound",
                        reason="PortBound",
                    )
                changes["mac_address"] = self._mac(txn, net, attrs["mac_address"])
            if "fixed_ips" in attrs:
                subnets = self.cache.related(Subnet, "net_subnets", net.id)
                changes["fixed_ips"] = self._requested_ips(
                    txn,
                    net,
                    subnets,
                    attrs["fixed_ips"],
                    attrs.get("device_owner", old.device_owner),
                    changes.get("mac_address", old.mac_address),
                    old.fixed_ips,
                )
            if "security_groups" in attrs:
                changes["security_groups"] = self._security_groups(
                    ctx, txn, attrs, old.project_id, True
                )
            if "allowed_address_pairs" in attrs:
                changes["allowed_address_pairs"] = _pairs(
                    attrs["allowed_address_pairs"], changes.get("mac_address", old.mac_address)
                )
            port_security = changes.get("port_security_enabled", old.port_security_enabled)
            self._check_port_security(
                port_security,
                changes.get("security_groups", old.security_groups),
                changes.get("allowed_address_pairs", old.allowed_address_pairs),
                updating=True,
            )
            if "binding_host_id" in attrs:
                changes.update(binding.port_fields(self.cache, net, attrs["binding_host_id"]))
                changes["status"] = "DOWN"
                changes["status_reason"] = ""
            new = bump(old, changes)
            txn.update(old, new)
            return new

        port, _ = await self.store.commit(build)
        return port

    async def delete(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            port = self.find(ctx, Port, id_)
            check_revision(port, if_revision)
            l3.on_port_delete(self.cache, txn, port)  # ServicePortInUse; clears floating IPs
            txn.delete(port)

        await self.store.commit(build)


def _contains(plan: ipam.SubnetPlan, ip: str) -> bool:
    try:
        value, version = ipam.parse_ip(ip)
    except ValueError:
        return False
    return version == plan.ip_version and plan.contains(value)


def _is_ip_or_cidr(text: str) -> bool:
    try:
        if "/" in text:
            ipam.parse_cidr(text)
        else:
            ipam.parse_ip(text)
    except ValueError:
        return False
    return True


def _pairs(pairs: list[Pair], port_mac: str) -> list[Pair]:
    """Neutron stores an address pair given without a MAC with the port's own MAC."""
    return [(ip, (mac or port_mac).lower()) for ip, mac in pairs]
