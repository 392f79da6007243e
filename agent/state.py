"""The agent's copy of its host's desired state, fed by Snapshots and Deltas."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from baryon.v1 import agent_pb2
from drivers.model import HostState, NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec

log = logging.getLogger(__name__)

VtepKey = tuple[str, str]  # (network id, tunnel ip)


def network_spec(n: agent_pb2.HostNetwork) -> NetworkSpec:
    return NetworkSpec(
        id=n.id,
        network_type=n.network_type,
        segmentation_id=n.segmentation_id or None,
        physical_network=n.physical_network or None,
        mtu=n.mtu,
    )


def port_spec(p: agent_pb2.HostPort) -> PortSpec:
    return PortSpec(
        id=p.id,
        network_id=p.network_id,
        mac=p.mac_address,
        admin_state_up=p.admin_state_up,
        mtu=p.mtu,
        fixed_ips=tuple(p.fixed_ips),
        security_group_ids=tuple(p.security_groups),
        port_security_enabled=p.port_security_enabled,
        allowed_address_pairs=tuple((a.ip_address, a.mac_address) for a in p.allowed_address_pairs),
    )


def security_group_spec(g: agent_pb2.HostSecurityGroup) -> SecurityGroupSpec:
    return SecurityGroupSpec(
        id=g.id,
        stateful=g.stateful,
        rules=tuple(
            RuleSpec(
                direction=r.direction,
                ethertype=r.ethertype,
                protocol=r.protocol or None,
                port_range_min=r.port_range_min if r.HasField("port_range_min") else None,
                port_range_max=r.port_range_max if r.HasField("port_range_max") else None,
                remote_ip_prefix=r.remote_ip_prefix or None,
                remote_group_id=r.remote_group_id or None,
            )
            for r in g.rules
        ),
    )


class DesiredState:
    def __init__(self) -> None:
        self.revision = 0
        # True once a Snapshot was applied: the state is then complete.
        self.complete = False
        self.networks: dict[str, NetworkSpec] = {}
        self.ports: dict[str, PortSpec] = {}
        self.vteps: dict[VtepKey, frozenset[str]] = {}
        self.security_groups: dict[str, SecurityGroupSpec] = {}
        self.sg_members: dict[str, frozenset[str]] = {}
        # L3 / DHCP services: the controller's specs, converted when converging.
        self.routers: dict[str, agent_pb2.HostRouter] = {}
        self.dhcp_networks: dict[str, agent_pb2.HostDhcpNetwork] = {}
        self._cached: HostState | None = None

    def apply_snapshot(self, snap: agent_pb2.Snapshot) -> None:
        self.networks.clear()
        self.ports.clear()
        self.vteps.clear()
        self.security_groups.clear()
        self.sg_members.clear()
        self._upsert_networks(snap.state.networks)
        self._upsert_ports(snap.state.ports)
        for v in snap.state.remote_vteps:
            self.vteps[(v.network_id, v.tunnel_ip)] = frozenset(v.mac_addresses)
        self._upsert_groups(snap.state.security_groups)
        for m in snap.state.security_group_members:
            self.sg_members[m.security_group_id] = frozenset(m.addresses)
        self.routers = {r.id: r for r in snap.state.routers}
        self.dhcp_networks = {d.network_id: d for d in snap.state.dhcp_networks}
        self.revision = snap.revision
        self.complete = True
        self._cached = None

    def apply_delta(self, delta: agent_pb2.Delta) -> None:
        for net_id in delta.delete_networks:
            self.networks.pop(net_id, None)
        self._upsert_networks(delta.upsert_networks)
        for port_id in delta.delete_ports:
            self.ports.pop(port_id, None)
        self._upsert_ports(delta.upsert_ports)
        if delta.replace_remote_vteps:
            self.vteps.clear()
        for k in delta.delete_remote_vteps:
            self.vteps.pop((k.network_id, k.tunnel_ip), None)
        for v in delta.upsert_remote_vteps:
            self.vteps[(v.network_id, v.tunnel_ip)] = frozenset(v.mac_addresses)
        if delta.replace_security_groups:
            self.security_groups.clear()
            self.sg_members.clear()
        for group_id in delta.delete_security_groups:
            self.security_groups.pop(group_id, None)
        self._upsert_groups(delta.upsert_security_groups)
        for group_id in delta.delete_security_group_members:
            self.sg_members.pop(group_id, None)
        for m in delta.upsert_security_group_members:
            self.sg_members[m.security_group_id] = frozenset(m.addresses)
        if delta.replace_services:
            self.routers.clear()
            self.dhcp_networks.clear()
        for router_id in delta.delete_routers:
            self.routers.pop(router_id, None)
        for r in delta.upsert_routers:
            self.routers[r.id] = r
        for net_id in delta.delete_dhcp_networks:
            self.dhcp_networks.pop(net_id, None)
        for d in delta.upsert_dhcp_networks:
            self.dhcp_networks[d.network_id] = d
        self.revision = max(self.revision, delta.revision)
        self._cached = None

    def _upsert_networks(self, items: Iterable[agent_pb2.HostNetwork]) -> None:
        for n in items:
            try:
                self.networks[n.id] = network_spec(n)
            except ValueError as err:
                log.error("ignoring network %s: %s", n.id, err)

    def _upsert_ports(self, items: Iterable[agent_pb2.HostPort]) -> None:
        for p in items:
            try:
                self.ports[p.id] = port_spec(p)
            except ValueError as err:
                log.error("ignoring port %s: %s", p.id, err)

    def _upsert_groups(self, items: Iterable[agent_pb2.HostSecurityGroup]) -> None:
        for g in items:
            try:
                self.security_groups[g.id] = security_group_spec(g)
            except ValueError as err:
                log.error("ignoring security group %s: %s", g.id, err)

    def host_state(self) -> HostState:
        if self._cached is None:
            vteps: dict[str, dict[str, frozenset[str]]] = {}
            for (net_id, ip), macs in self.vteps.items():
                if net_id in self.networks:
                    vteps.setdefault(net_id, {})[ip] = macs
            self._cached = HostState.build(
                networks=self.networks.values(),
                ports=[p for p in self.ports.values() if p.network_id in self.networks],
                remote_vteps=vteps,
                security_groups=self.security_groups.values(),
                sg_members=self.sg_members,
            )
        return self._cached
