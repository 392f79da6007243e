"""What each resource contributes to the etcd index keys and the in-memory indexes.

Index keys live in etcd next to the resources and are written in the same
transaction. "Unique" keys are created with a create_revision == 0 compare, so
two controllers can never both take the same IP, MAC, segment, default group or
rule; "member" keys exist so a transaction can compare a whole prefix (e.g. "no
port was added to this network since I looked").

The cache keeps the same relations in memory (derived from the resources, not
from the index keys) for validation and filtered lists.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

from controller.model import (
    DhcpBinding,
    FloatingIP,
    Network,
    Port,
    Resource,
    RouterBinding,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)

# Services whose network ports are created by the controller and go away with
# their network or subnet (Neutron's AUTO_DELETE_PORT_OWNERS).
AUTO_DELETE_OWNERS = frozenset({"network:dhcp", "network:distributed"})

# Ports the L3 services create and own (device_id = the router or floating IP).
ROUTER_INTERFACE = "network:router_interface"
ROUTER_GATEWAY = "network:router_gateway"
FLOATINGIP_OWNER = "network:floatingip"
L3_OWNERS = frozenset({ROUTER_INTERFACE, ROUTER_GATEWAY, FLOATINGIP_OWNER})


def index_keys(obj: Resource) -> Iterator[tuple[str, bool]]:
    """(key below the index prefix, unique) pairs for a stored resource."""
    if obj.quota_slot >= 0:
        yield f"q/{obj.project_id}/{obj.KIND}/{obj.quota_slot}", True
    if isinstance(obj, Port):
        for subnet_id, ip in obj.fixed_ips:
            yield f"ip/{subnet_id}/{ip}", True
        yield f"mac/{obj.network_id}/{obj.mac_address}", True
        yield f"netport/{obj.network_id}/{obj.id}", False
        for sg in obj.security_groups:
            yield f"sgport/{sg}/{obj.id}", False
        if obj.device_id and obj.device_owner in (ROUTER_INTERFACE, ROUTER_GATEWAY):
            # "no interface was added to this router since I looked"
            yield f"rtrport/{obj.device_id}/{obj.id}", False
    elif isinstance(obj, Subnet):
        yield f"netsubnet/{obj.network_id}/{obj.id}", False
    elif isinstance(obj, Network):
        seg = segment_of(obj)
        if seg is not None:
            yield f"seg/{seg[0]}/{seg[1] or '-'}/{seg[2]}", True
    elif isinstance(obj, SecurityGroup):
        if obj.is_default:
            yield f"sgdefault/{obj.project_id}", True
    elif isinstance(obj, SecurityGroupRule):
        yield f"sgrule/{obj.security_group_id}/{obj.dedup_key}", True
        if obj.remote_group_id:
            yield f"sgref/{obj.remote_group_id}/{obj.id}", False
    elif isinstance(obj, FloatingIP):
        if obj.port_id:
            # Neutron's unique (floating_network_id, fixed_port_id, fixed_ip_address).
            key = f"{obj.port_id}/{obj.fixed_ip_address}/{obj.floating_network_id}"
            yield f"fipassoc/{key}", True
        if obj.router_id:
            yield f"fiprtr/{obj.router_id}/{obj.id}", False
    elif isinstance(obj, DhcpBinding):
        # An agent serves a network at most once.
        yield f"dhcpagent/{obj.network_id}/{obj.agent_id}", True


def segment_of(net: Network) -> tuple[str, str, int] | None:
    """The exclusive segment a network holds, if its type has one."""
    t = net.provider_network_type
    if t in ("vlan", "flat"):
        return t, net.provider_physical_network, net.provider_segmentation_id
    if t in ("vxlan", "gre"):
        return t, "", net.provider_segmentation_id
    return None


def relations(obj: Resource) -> Iterator[tuple[str, Hashable]]:
    """In-memory index entries: (relation name, key) → set of resource ids."""
    yield f"project:{obj.KIND}", obj.project_id
    if obj.quota_slot >= 0:
        yield "quota_slot", (obj.KIND, obj.project_id, obj.quota_slot)
    if isinstance(obj, Port):
        yield "net_ports", obj.network_id
        for subnet_id, ip in obj.fixed_ips:
            yield "ip", (subnet_id, ip)
            yield "subnet_ports", subnet_id
        yield "mac", (obj.network_id, obj.mac_address)
        for sg in obj.security_groups:
            yield "sg_ports", sg
        if obj.device_id:
            yield "device", obj.device_id
        if obj.binding_host_id:
            yield "host_ports", obj.binding_host_id
    elif isinstance(obj, Subnet):
        yield "net_subnets", obj.network_id
    elif isinstance(obj, Network):
        seg = segment_of(obj)
        if seg is not None:
            yield "segment", seg
    elif isinstance(obj, SecurityGroup):
        if obj.is_default:
            yield "default_sg", obj.project_id
    elif isinstance(obj, SecurityGroupRule):
        yield "sg_rules", obj.security_group_id
        yield "rule", (obj.security_group_id, obj.dedup_key)
        if obj.remote_group_id:
            yield "sg_refs", obj.remote_group_id
    elif isinstance(obj, FloatingIP):
        if obj.port_id:
            yield "fip_port", obj.port_id
            yield "fip_assoc", (obj.port_id, obj.fixed_ip_address, obj.floating_network_id)
        if obj.router_id:
            yield "fip_router", obj.router_id
    elif isinstance(obj, RouterBinding):
        yield "host_routers", obj.host
    elif isinstance(obj, DhcpBinding):
        yield "host_dhcp", obj.host
        yield "net_dhcp", obj.network_id
