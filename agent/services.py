"""The agent's L3 and DHCP services: the controller's router / DHCP network specs
turned into the drivers' models (drivers/l3, drivers/dhcp), converged after L2."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from baryon.v1 import agent_pb2
from drivers.base import ApplyError
from drivers.dhcp import DhcpDriver
from drivers.dhcp.model import DhcpHost, DhcpNetworkSpec, DhcpPort, DhcpSubnet, HostRoute
from drivers.l3 import L3Driver
from drivers.l3.changes import AnnounceAddresses, L3Change
from drivers.l3.model import FloatingIp, RouterPort, RouterSpec, StaticRoute
from drivers.l3.naming import router_id_of
from drivers.linuxbridge.naming import bridge_name

log = logging.getLogger(__name__)


def router_port(p: agent_pb2.HostServicePort) -> RouterPort:
    return RouterPort(
        port_id=p.port_id,
        network_id=p.network_id,
        mac=p.mac_address,
        ips=tuple(p.ips),
        mtu=p.mtu,
        bridge=bridge_name(p.network_id),
    )


def router_spec(r: agent_pb2.HostRouter) -> RouterSpec:
    return RouterSpec(
        id=r.id,
        admin_state_up=r.admin_state_up,
        interfaces=tuple(router_port(p) for p in r.interfaces),
        gateway=router_port(r.gateway) if r.HasField("gateway") else None,
        gateway_nexthop=r.gateway_nexthop or None,
        enable_snat=r.enable_snat,
        routes=tuple(StaticRoute(x.destination, x.nexthop) for x in r.routes),
        floating_ips=tuple(
            FloatingIp(f.floating_ip_address, f.fixed_ip_address) for f in r.floating_ips
        ),
    )


def dhcp_spec(d: agent_pb2.HostDhcpNetwork) -> DhcpNetworkSpec:
    return DhcpNetworkSpec(
        network_id=d.network_id,
        bridge=bridge_name(d.network_id),
        mtu=d.mtu,
        dhcp_port=DhcpPort(d.port.port_id, d.port.mac_address, tuple(d.port.ips)),
        subnets=tuple(
            DhcpSubnet(
                cidr=s.cidr,
                gateway=s.gateway_ip or None,
                dns_servers=tuple(s.dns_nameservers),
                host_routes=tuple(HostRoute(h.destination, h.nexthop) for h in s.host_routes),
            )
            for s in d.subnets
        ),
        hosts=tuple(DhcpHost(h.mac_address, h.ip_address, h.hostname or None) for h in d.hosts),
    )


@dataclass
class ServiceResult:
    """What one converge of the services did: whether anything changed (converge
    again soon: the L2 driver wires the new taps) and the status report."""

    changed: bool = False
    report: agent_pb2.ServiceStatusReport = field(default_factory=agent_pb2.ServiceStatusReport)


class Services:
    # A router's gratuitous ARPs are sent again on this many following converges: when
    # the router was just built its taps may not have been in their bridges yet (the
    # L2 driver wires them on the next round), and a switch that still sends its MAC
    # to the node the router left must learn where it is now.
    REANNOUNCE = 3

    def __init__(self, l3: L3Driver | None, dhcp: DhcpDriver | None) -> None:
        self.l3 = l3
        self.dhcp = dhcp
        self._announce: dict[AnnounceAddresses, int] = {}

    async def start(self) -> None:
        if self.l3 is not None:
            await self.l3.start()
        if self.dhcp is not None:
            await self.dhcp.start(supervise_interval=1.0)

    async def close(self) -> None:
        if self.l3 is not None:
            await self.l3.close()
        if self.dhcp is not None:
            await self.dhcp.close()

    async def converge(
        self,
        routers: dict[str, agent_pb2.HostRouter],
        dhcp_networks: dict[str, agent_pb2.HostDhcpNetwork],
    ) -> ServiceResult:
        result = ServiceResult()
        if self.l3 is not None:
            await self._reannounce()
            await self._converge_l3(routers, result)
        if self.dhcp is not None:
            specs: dict[str, DhcpNetworkSpec] = {}
            for net_id, d in dhcp_networks.items():
                try:
                    specs[net_id] = dhcp_spec(d)
                except ValueError as err:
                    log.error("ignoring DHCP of network %s: %s", net_id, err)
            try:
                plan = await self.dhcp.sync(specs, remove_stale=True)
                result.changed |= bool(plan)
            except ApplyError as err:
                log.warning("DHCP: %s", err)
                result.changed = True
        return result

    async def _reannounce(self) -> None:
        assert self.l3 is not None
        for change, left in list(self._announce.items()):
            if left <= 1:
                del self._announce[change]
            else:
                self._announce[change] = left - 1
            try:
                await change.apply(self.l3)
            except Exception as exc:
                log.debug("%s: %r", change, exc)

    async def _converge_l3(
        self, routers: dict[str, agent_pb2.HostRouter], result: ServiceResult
    ) -> None:
        assert self.l3 is not None
        specs: dict[str, RouterSpec] = {}
        failed: set[str] = set()
        for router_id, r in routers.items():
            try:
                specs[router_id] = router_spec(r)
            except ValueError as err:
                log.error("ignoring router %s: %s", router_id, err)
                failed.add(router_id)
        try:
            plan = await self.l3.sync(specs, remove_stale=True)
            result.changed |= bool(plan)
            for change in plan:
                if isinstance(change, AnnounceAddresses):
                    self._announce[change] = self.REANNOUNCE
            result.changed |= bool(self._announce)
        except ApplyError as err:
            log.warning("L3: %s", err)
            result.changed = True
            for change, _ in err.failures:
                if isinstance(change, L3Change):
                    rid = router_id_of(self.l3.netns_prefix, change.namespace)
                    if rid is not None:
                        failed.add(rid)
        report = result.report
        for router_id in sorted(routers):
            ok = router_id not in failed
            report.routers.append(
                agent_pb2.RouterStatus(router_id=router_id, status="ACTIVE" if ok else "ERROR")
            )
            if ok:
                report.active_floating_ips.extend(f.id for f in routers[router_id].floating_ips)
