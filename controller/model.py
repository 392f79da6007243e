"""Domain resources as the controller stores them.

They are plain slotted dataclasses (not protobuf messages) so the domain core
does not depend on the wire format; `controller.api.convert` translates.
Lists of pairs are tuples so they round-trip through JSON unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import orjson

Pair = tuple[str, str]


@dataclass(slots=True)
class Resource:
    KIND: ClassVar[str] = ""
    # Fields holding lists of pairs; decoded back to tuples.
    PAIR_FIELDS: ClassVar[tuple[str, ...]] = ()

    id: str
    project_id: str
    name: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    revision_number: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    # The project quota slot this resource holds (-1: not counted); see Service.quota_slot.
    quota_slot: int = -1


@dataclass(slots=True)
class Network(Resource):
    KIND: ClassVar[str] = "network"

    admin_state_up: bool = True
    status: str = "ACTIVE"
    shared: bool = False
    external: bool = False
    mtu: int = 1500
    provider_network_type: str = ""
    provider_physical_network: str = ""
    provider_segmentation_id: int = 0
    port_security_enabled: bool = True


@dataclass(slots=True)
class Subnet(Resource):
    KIND: ClassVar[str] = "subnet"
    PAIR_FIELDS: ClassVar[tuple[str, ...]] = ("allocation_pools", "host_routes")

    network_id: str = ""
    ip_version: int = 4
    cidr: str = ""
    gateway_ip: str = ""  # "" = no gateway
    allocation_pools: list[Pair] = field(default_factory=list)
    dns_nameservers: list[str] = field(default_factory=list)
    host_routes: list[Pair] = field(default_factory=list)
    enable_dhcp: bool = True
    ipv6_ra_mode: str = ""
    ipv6_address_mode: str = ""


@dataclass(slots=True)
class Port(Resource):
    KIND: ClassVar[str] = "port"
    PAIR_FIELDS: ClassVar[tuple[str, ...]] = ("fixed_ips", "allowed_address_pairs")

    network_id: str = ""
    admin_state_up: bool = True
    status: str = "DOWN"
    mac_address: str = ""
    fixed_ips: list[Pair] = field(default_factory=list)  # (subnet_id, ip_address)
    device_id: str = ""
    device_owner: str = ""
    security_groups: list[str] = field(default_factory=list)
    port_security_enabled: bool = True
    allowed_address_pairs: list[Pair] = field(default_factory=list)  # (ip_address, mac)
    binding_host_id: str = ""
    binding_vif_type: str = "unbound"
    binding_vif_details: dict[str, str] = field(default_factory=dict)
    binding_vnic_type: str = "normal"
    binding_profile: dict[str, str] = field(default_factory=dict)
    status_reason: str = ""  # as the bound host's agent reported it


@dataclass(slots=True)
class SecurityGroup(Resource):
    KIND: ClassVar[str] = "security_group"

    stateful: bool = True
    is_default: bool = False


@dataclass(slots=True)
class SecurityGroupRule(Resource):
    KIND: ClassVar[str] = "security_group_rule"

    security_group_id: str = ""
    direction: str = "ingress"
    ethertype: str = "IPv4"
    protocol: str = ""
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str = ""
    remote_group_id: str = ""
    # sgrules.rule_digest: equal for rules Neutron treats as duplicates in one group.
    dedup_key: str = ""


@dataclass(slots=True)
class Agent(Resource):
    """A node agent's registration (controller.agents); id from (agent_type, host)."""

    KIND: ClassVar[str] = "agent"

    host: str = ""
    agent_type: str = ""
    mechanism: str = ""
    supported_network_types: list[str] = field(default_factory=list)
    physical_network_mappings: dict[str, str] = field(default_factory=dict)
    tunnel_ip: str = ""
    version: str = ""
    services: list[str] = field(default_factory=list)
    started_at: float = 0.0
    last_seen: float = 0.0
    applied_revision: int = 0
    session: str = ""  # the connection that wrote it last


@dataclass(slots=True)
class AgentLiveness(Resource):
    """Exists while the agent (same id) holds its liveness lease."""

    KIND: ClassVar[str] = "agent_alive"

    session: str = ""


@dataclass(slots=True)
class Router(Resource):
    """A logical router. Its gateway and interfaces are ports with device_id = its id."""

    KIND: ClassVar[str] = "router"
    PAIR_FIELDS: ClassVar[tuple[str, ...]] = ("routes",)

    admin_state_up: bool = True
    status: str = "ACTIVE"
    gw_network_id: str = ""  # "" = no gateway
    gw_port_id: str = ""
    enable_snat: bool = True
    routes: list[Pair] = field(default_factory=list)  # (destination, nexthop)


@dataclass(slots=True)
class FloatingIP(Resource):
    """A floating IP; its address is held by a network:floatingip port (floating_port_id)."""

    KIND: ClassVar[str] = "floatingip"

    floating_network_id: str = ""
    floating_ip_address: str = ""
    subnet_id: str = ""
    floating_port_id: str = ""
    port_id: str = ""
    fixed_ip_address: str = ""
    router_id: str = ""
    status: str = "DOWN"


@dataclass(slots=True)
class RouterBinding(Resource):
    """The L3 agent a router is scheduled to (id = the router's id); written by the
    scheduling leader only (controller.scheduler)."""

    KIND: ClassVar[str] = "router_binding"

    router_id: str = ""
    agent_id: str = ""
    host: str = ""


@dataclass(slots=True)
class DhcpBinding(Resource):
    """One DHCP agent slot of a network (id = "<network id>.<slot>"), with the DHCP
    port it serves from; written by the scheduling leader only."""

    KIND: ClassVar[str] = "dhcp_binding"

    network_id: str = ""
    slot: int = 0
    agent_id: str = ""
    host: str = ""
    port_id: str = ""


@dataclass(slots=True)
class Leader(Resource):
    """The scheduling leader (id "scheduler"); attached to the holder's etcd lease."""

    KIND: ClassVar[str] = "leader"

    holder: str = ""


R = TypeVar("R", bound=Resource)

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (
        Network,
        Subnet,
        Port,
        SecurityGroup,
        SecurityGroupRule,
        Agent,
        AgentLiveness,
        Router,
        FloatingIP,
        RouterBinding,
        DhcpBinding,
        Leader,
    )
}


def encode(obj: Resource) -> bytes:
    return orjson.dumps(obj)


def decode(cls: type[R], raw: bytes) -> R:
    data: dict[str, Any] = orjson.loads(raw)
    for name in cls.PAIR_FIELDS:
        data[name] = [tuple(p) for p in data.get(name, ())]
    return cls(**data)


def clone(obj: R, **changes: Any) -> R:
    return dataclasses.replace(obj, **changes)
