"""What one host needs, computed from the store cache, and the deltas between two views.

A host needs the ports bound to it (successfully), their networks, and for tunnel
networks the remote VTEPs: the tunnel IPs of the other live agents with ports on the
same network, with the MACs of those ports (l2population).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from baryon.v1 import agent_pb2
from controller.model import Agent, Network, Port, SecurityGroup, SecurityGroupRule
from controller.services.binding import BOUND_VIF_TYPES, is_alive
from controller.store import Cache

TUNNEL_TYPES = frozenset({"vxlan", "gre"})
VtepKey = tuple[str, str]  # (network id, tunnel ip)
_AGENT_NS = uuid.UUID("7f0d1c52-5b1e-4c8e-9a43-3f5e0c1ab001")


def agent_id(agent_type: str, host: str) -> str:
    return str(uuid.uuid5(_AGENT_NS, f"{agent_type}@{host}"))


@dataclass
class View:
    """A host's desired state as protobuf parts, keyed for diffing."""

    networks: dict[str, agent_pb2.HostNetwork] = field(default_factory=dict)
    ports: dict[str, agent_pb2.HostPort] = field(default_factory=dict)
    vteps: dict[VtepKey, frozenset[str]] = field(default_factory=dict)
    sgs: dict[str, agent_pb2.HostSecurityGroup] = field(default_factory=dict)
    members: dict[str, frozenset[str]] = field(default_factory=dict)

    def to_proto(self) -> agent_pb2.HostState:
        return agent_pb2.HostState(
            networks=[self.networks[k] for k in sorted(self.networks)],
            ports=[self.ports[k] for k in sorted(self.ports)],
            remote_vteps=[_vtep(k, self.vteps[k]) for k in sorted(self.vteps)],
            security_groups=[self.sgs[k] for k in sorted(self.sgs)],
            security_group_members=[_members(k, self.members[k]) for k in sorted(self.members)],
        )


def _members(group_id: str, addresses: Iterable[str]) -> agent_pb2.SecurityGroupMembers:
    return agent_pb2.SecurityGroupMembers(security_group_id=group_id, addresses=sorted(addresses))


def _vtep(key: VtepKey, macs: Iterable[str]) -> agent_pb2.RemoteVtep:
    return agent_pb2.RemoteVtep(network_id=key[0], tunnel_ip=key[1], mac_addresses=sorted(macs))


def is_bound_to(port: Port, host: str) -> bool:
    return port.binding_host_id == host and port.binding_vif_type in BOUND_VIF_TYPES


def live_tunnel_ips(cache: Cache) -> dict[str, str]:
    """host -> tunnel IP of the live agents that have one."""
    out: dict[str, str] = {}
    for agent in cache.all(Agent):
        if agent.tunnel_ip and is_alive(cache, agent):
            out[agent.host] = agent.tunnel_ip
    return out


def network_pb(net: Network) -> agent_pb2.HostNetwork:
    return agent_pb2.HostNetwork(
        id=net.id,
        network_type=net.provider_network_type or "local",
        segmentation_id=net.provider_segmentation_id,
        physical_network=net.provider_physical_network,
        mtu=net.mtu,
    )


def port_pb(port: Port, net: Network) -> agent_pb2.HostPort:
    return agent_pb2.HostPort(
        id=port.id,
        network_id=port.network_id,
        mac_address=port.mac_address,
        admin_state_up=port.admin_state_up and net.admin_state_up,
        mtu=net.mtu,
        fixed_ips=[ip for _, ip in port.fixed_ips],
        security_groups=port.security_groups,
        port_security_enabled=port.port_security_enabled,
        allowed_address_pairs=[
            agent_pb2.HostAddressPair(ip_address=ip, mac_address=mac)
            for ip, mac in port.allowed_address_pairs
        ],
    )


def security_group_pb(cache: Cache, sg: SecurityGroup) -> agent_pb2.HostSecurityGroup:
    rules = sorted(cache.related(SecurityGroupRule, "sg_rules", sg.id), key=lambda r: r.id)
    return agent_pb2.HostSecurityGroup(
        id=sg.id,
        stateful=sg.stateful,
        rules=[
            agent_pb2.HostSecurityGroupRule(
                direction=r.direction,
                ethertype=r.ethertype,
                protocol=r.protocol or "",
                port_range_min=r.port_range_min,
                port_range_max=r.port_range_max,
                remote_ip_prefix=r.remote_ip_prefix,
                remote_group_id=r.remote_group_id,
            )
            for r in rules
        ],
    )


def group_members(cache: Cache, group_id: str) -> frozenset[str]:
    """Addresses of every port in the group, on any host (fixed IPs and the IPs or
    CIDRs of allowed address pairs)."""
    out: set[str] = set()
    for port in cache.related(Port, "sg_ports", group_id):
        out.update(ip for _, ip in port.fixed_ips)
        out.update(ip for ip, _ in port.allowed_address_pairs)
    return frozenset(out)


def compute(cache: Cache, host: str, tunnels: dict[str, str] | None = None) -> View:
    """The view of `host` as of the cache's revision."""
    view = View()
    if tunnels is None:
        tunnels = live_tunnel_ips(cache)
    for port in cache.related(Port, "host_ports", host):
        if not is_bound_to(port, host):
            continue
        net = cache.get(Network, port.network_id)
        if net is None:
            continue
        view.ports[port.id] = port_pb(port, net)
        if net.id not in view.networks:
            view.networks[net.id] = network_pb(net)
    groups = {g for p in view.ports.values() if p.port_security_enabled for g in p.security_groups}
    remote: set[str] = set()
    for group_id in sorted(groups):
        sg = cache.get(SecurityGroup, group_id)
        if sg is None:
            continue
        pb = view.sgs[group_id] = security_group_pb(cache, sg)
        remote.update(r.remote_group_id for r in pb.rules if r.remote_group_id)
    for group_id in remote:
        view.members[group_id] = group_members(cache, group_id)
    for net_id, net_pb in view.networks.items():
        if net_pb.network_type not in TUNNEL_TYPES:
            continue
        by_ip: dict[str, set[str]] = {}
        for port in cache.related(Port, "net_ports", net_id):
            other = port.binding_host_id
            if not other or other == host or port.binding_vif_type not in BOUND_VIF_TYPES:
                continue
            ip = tunnels.get(other)
            if ip is None:
                continue
            by_ip.setdefault(ip, set()).add(port.mac_address)
        for ip, macs in by_ip.items():
            view.vteps[(net_id, ip)] = frozenset(macs)
    return view


def diff(old: View, new: View, revision: int) -> agent_pb2.Delta | None:
    """The Delta taking an agent from `old` to `new`; None when they are equal."""
    delta = agent_pb2.Delta(revision=revision)
    for k, n in new.networks.items():
        if old.networks.get(k) != n:
            delta.upsert_networks.append(n)
    delta.delete_networks.extend(sorted(old.networks.keys() - new.networks.keys()))
    for k, p in new.ports.items():
        if old.ports.get(k) != p:
            delta.upsert_ports.append(p)
    delta.delete_ports.extend(sorted(old.ports.keys() - new.ports.keys()))
    for key, macs in new.vteps.items():
        if old.vteps.get(key) != macs:
            delta.upsert_remote_vteps.append(_vtep(key, macs))
    for key in sorted(old.vteps.keys() - new.vteps.keys()):
        delta.delete_remote_vteps.append(
            agent_pb2.RemoteVtepKey(network_id=key[0], tunnel_ip=key[1])
        )
    for k, g in new.sgs.items():
        if old.sgs.get(k) != g:
            delta.upsert_security_groups.append(g)
    delta.delete_security_groups.extend(sorted(old.sgs.keys() - new.sgs.keys()))
    for k, m in new.members.items():
        if old.members.get(k) != m:
            delta.upsert_security_group_members.append(_members(k, m))
    delta.delete_security_group_members.extend(sorted(old.members.keys() - new.members.keys()))
    if not (
        delta.upsert_networks
        or delta.delete_networks
        or delta.upsert_ports
        or delta.delete_ports
        or delta.upsert_remote_vteps
        or delta.delete_remote_vteps
        or delta.upsert_security_groups
        or delta.delete_security_groups
        or delta.upsert_security_group_members
        or delta.delete_security_group_members
    ):
        return None
    return delta


def catch_up(
    new: View,
    revision: int,
    touched_networks: set[str],
    host_ports: set[str],
    host_networks: set[str],
) -> agent_pb2.Delta:
    """What an agent that was in sync at some earlier revision missed.

    touched_networks: every network that changed since (or whose VTEPs may have);
    host_ports / host_networks: the ports that changed since while bound to this host
    (before or after the change) and their networks. The VTEP and security group
    tables are sent whole.
    """
    delta = agent_pb2.Delta(
        revision=revision, replace_remote_vteps=True, replace_security_groups=True
    )
    for net_id in sorted((touched_networks | host_networks) & new.networks.keys()):
        delta.upsert_networks.append(new.networks[net_id])
    delta.delete_networks.extend(sorted(host_networks - new.networks.keys()))
    for port_id in sorted(new.ports):
        p = new.ports[port_id]
        if port_id in host_ports or p.network_id in touched_networks:
            delta.upsert_ports.append(p)
    delta.delete_ports.extend(sorted(host_ports - new.ports.keys()))
    delta.upsert_remote_vteps.extend(_vtep(k, new.vteps[k]) for k in sorted(new.vteps))
    delta.upsert_security_groups.extend(new.sgs[k] for k in sorted(new.sgs))
    delta.upsert_security_group_members.extend(
        _members(k, new.members[k]) for k in sorted(new.members)
    )
    return delta
