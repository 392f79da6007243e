"""What one host needs, computed from the store cache, and the deltas between two views.

A host needs the ports bound to it (successfully), their networks, and for tunnel
networks the remote VTEPs: the tunnel IPs of the other live agents with ports on the
same network, with the MACs of those ports (l2population).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from baryon.v1 import agent_pb2
from controller.indexes import ROUTER_INTERFACE
from controller.model import (
    Agent,
    DhcpBinding,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterBinding,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
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
    routers: dict[str, agent_pb2.HostRouter] = field(default_factory=dict)
    dhcp: dict[str, agent_pb2.HostDhcpNetwork] = field(default_factory=dict)

    def to_proto(self) -> agent_pb2.HostState:
        return agent_pb2.HostState(
            networks=[self.networks[k] for k in sorted(self.networks)],
            ports=[self.ports[k] for k in sorted(self.ports)],
            remote_vteps=[vtep_pb(k, self.vteps[k]) for k in sorted(self.vteps)],
            security_groups=[self.sgs[k] for k in sorted(self.sgs)],
            security_group_members=[members_pb(k, self.members[k]) for k in sorted(self.members)],
            routers=[self.routers[k] for k in sorted(self.routers)],
            dhcp_networks=[self.dhcp[k] for k in sorted(self.dhcp)],
        )


def members_pb(group_id: str, addresses: Iterable[str]) -> agent_pb2.SecurityGroupMembers:
    return agent_pb2.SecurityGroupMembers(security_group_id=group_id, addresses=sorted(addresses))


def vtep_pb(key: VtepKey, macs: Iterable[str]) -> agent_pb2.RemoteVtep:
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
        # Router and DHCP ports (network:*) are trusted by the firewall.
        port_security_enabled=port.port_security_enabled
        and not port.device_owner.startswith("network:"),
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


def _prefixed(cache: Cache, port: Port, v4_only: bool = False) -> list[str]:
    """The port's IPs as "address/prefixlen" (subnets it is on that still exist)."""
    out = []
    for subnet_id, ip in port.fixed_ips:
        subnet = cache.get(Subnet, subnet_id)
        if subnet is None or (v4_only and subnet.ip_version != 4):
            continue
        out.append(f"{ip}/{ipaddress.ip_network(subnet.cidr).prefixlen}")
    return out


def service_port_pb(cache: Cache, port: Port, net: Network) -> agent_pb2.HostServicePort:
    return agent_pb2.HostServicePort(
        port_id=port.id,
        network_id=port.network_id,
        mac_address=port.mac_address,
        ips=_prefixed(cache, port),
        mtu=net.mtu,
    )


def router_pb(cache: Cache, router: Router) -> agent_pb2.HostRouter:
    msg = agent_pb2.HostRouter(
        id=router.id,
        admin_state_up=router.admin_state_up,
        enable_snat=router.enable_snat,
        routes=[agent_pb2.HostStaticRoute(destination=d, nexthop=n) for d, n in router.routes],
    )
    ports = sorted(
        (p for p in cache.related(Port, "device", router.id) if p.device_owner == ROUTER_INTERFACE),
        key=lambda p: p.id,
    )
    for port in ports:
        net = cache.get(Network, port.network_id)
        if net is not None and port.fixed_ips:
            msg.interfaces.append(service_port_pb(cache, port, net))
    gw = cache.get(Port, router.gw_port_id) if router.gw_port_id else None
    gw_net = cache.get(Network, gw.network_id) if gw is not None else None
    if gw is not None and gw_net is not None and gw.fixed_ips:
        msg.gateway.CopyFrom(service_port_pb(cache, gw, gw_net))
        for subnet_id, _ in gw.fixed_ips:
            subnet = cache.get(Subnet, subnet_id)
            if subnet is not None and subnet.ip_version == 4 and subnet.gateway_ip:
                msg.gateway_nexthop = subnet.gateway_ip
                break
        if any(":" not in ip for _, ip in gw.fixed_ips):
            fips = sorted(cache.related(FloatingIP, "fip_router", router.id), key=lambda f: f.id)
            for fip in fips:
                if fip.port_id and fip.fixed_ip_address:
                    msg.floating_ips.append(
                        agent_pb2.HostFloatingIp(
                            id=fip.id,
                            floating_ip_address=fip.floating_ip_address,
                            fixed_ip_address=fip.fixed_ip_address,
                        )
                    )
    return msg


def dhcp_hostname(ip: str) -> str:
    """Neutron's default DNS name of a port: host-<address with dashes>."""
    return "host-" + ip.replace(".", "-").replace(":", "-")


def dhcp_pb(cache: Cache, net: Network, port: Port) -> agent_pb2.HostDhcpNetwork:
    subnets = sorted(
        (
            s
            for s in cache.related(Subnet, "net_subnets", net.id)
            if s.enable_dhcp and s.ip_version == 4
        ),
        key=lambda s: s.cidr,
    )
    served = {s.id for s in subnets}
    msg = agent_pb2.HostDhcpNetwork(
        network_id=net.id,
        mtu=net.mtu,
        port=agent_pb2.HostServicePort(
            port_id=port.id,
            network_id=net.id,
            mac_address=port.mac_address,
            ips=[
                f"{ip}/{ipaddress.ip_network(s.cidr).prefixlen}"
                for s in subnets
                for subnet_id, ip in port.fixed_ips
                if subnet_id == s.id
            ],
            mtu=net.mtu,
        ),
        subnets=[
            agent_pb2.HostDhcpSubnet(
                cidr=s.cidr,
                gateway_ip=s.gateway_ip,
                dns_nameservers=s.dns_nameservers,
                host_routes=[
                    agent_pb2.HostStaticRoute(destination=d, nexthop=n) for d, n in s.host_routes
                ],
            )
            for s in subnets
        ],
    )
    hosts = []
    for p in cache.related(Port, "net_ports", net.id):
        for subnet_id, ip in p.fixed_ips:
            if subnet_id in served:
                hosts.append((p.mac_address, ip))
    for mac, ip in sorted(hosts):
        msg.hosts.append(
            agent_pb2.HostDhcpHost(mac_address=mac, ip_address=ip, hostname=dhcp_hostname(ip))
        )
    return msg


def compute(
    cache: Cache,
    host: str,
    tunnels: dict[str, str] | None = None,
    shared: dict[tuple[str, str], Any] | None = None,
) -> View:
    """The view of `host` as of the cache's revision.

    `shared`: a memo of the parts every host sees alike (security groups and their
    member sets), for computing many hosts' views at one cache revision; the messages
    in it are shared between views and must not be modified.
    """
    view = View()
    memo: dict[tuple[str, str], Any] = {} if shared is None else shared
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
        pb = memo.get(("sg", group_id))
        if pb is None:
            pb = memo[("sg", group_id)] = security_group_pb(cache, sg)
        view.sgs[group_id] = pb
        remote.update(r.remote_group_id for r in pb.rules if r.remote_group_id)
    for group_id in remote:
        members = memo.get(("members", group_id))
        if members is None:
            members = memo[("members", group_id)] = group_members(cache, group_id)
        view.members[group_id] = members
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
    for rb in cache.related(RouterBinding, "host_routers", host):
        router = cache.get(Router, rb.router_id)
        if router is not None:
            view.routers[router.id] = router_pb(cache, router)
    for db in cache.related(DhcpBinding, "host_dhcp", host):
        net = cache.get(Network, db.network_id)
        dport = cache.get(Port, db.port_id)
        if net is not None and dport is not None and db.network_id not in view.dhcp:
            view.dhcp[net.id] = dhcp_pb(cache, net, dport)
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
            delta.upsert_remote_vteps.append(vtep_pb(key, macs))
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
            delta.upsert_security_group_members.append(members_pb(k, m))
    delta.delete_security_group_members.extend(sorted(old.members.keys() - new.members.keys()))
    for k, r in new.routers.items():
        if old.routers.get(k) != r:
            delta.upsert_routers.append(r)
    delta.delete_routers.extend(sorted(old.routers.keys() - new.routers.keys()))
    for k, d in new.dhcp.items():
        if old.dhcp.get(k) != d:
            delta.upsert_dhcp_networks.append(d)
    delta.delete_dhcp_networks.extend(sorted(old.dhcp.keys() - new.dhcp.keys()))
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
        or delta.upsert_routers
        or delta.delete_routers
        or delta.upsert_dhcp_networks
        or delta.delete_dhcp_networks
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
        revision=revision,
        replace_remote_vteps=True,
        replace_security_groups=True,
        replace_services=True,
    )
    for net_id in sorted((touched_networks | host_networks) & new.networks.keys()):
        delta.upsert_networks.append(new.networks[net_id])
    delta.delete_networks.extend(sorted(host_networks - new.networks.keys()))
    for port_id in sorted(new.ports):
        p = new.ports[port_id]
        if port_id in host_ports or p.network_id in touched_networks:
            delta.upsert_ports.append(p)
    delta.delete_ports.extend(sorted(host_ports - new.ports.keys()))
    delta.upsert_remote_vteps.extend(vtep_pb(k, new.vteps[k]) for k in sorted(new.vteps))
    delta.upsert_security_groups.extend(new.sgs[k] for k in sorted(new.sgs))
    delta.upsert_security_group_members.extend(
        members_pb(k, new.members[k]) for k in sorted(new.members)
    )
    delta.upsert_routers.extend(new.routers[k] for k in sorted(new.routers))
    delta.upsert_dhcp_networks.extend(new.dhcp[k] for k in sorted(new.dhcp))
    return delta
