"""Desired state of the routers one L3 host service runs (immutable, hashable)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from drivers.model import normalize_mac
from drivers.nsdev import check_id


def _interface(value: str) -> str:
    return str(ipaddress.ip_interface(value))


@dataclass(frozen=True, slots=True)
class RouterPort:
    """One router port: ips are "address/prefixlen"; bridge: the network's bridge on
    this host (the L2 driver's name for it)."""

    port_id: str
    network_id: str
    mac: str
    ips: tuple[str, ...]
    mtu: int
    bridge: str

    def __post_init__(self) -> None:
        check_id("port", self.port_id)
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        object.__setattr__(self, "ips", tuple(_interface(ip) for ip in self.ips))
        if self.mtu < 68:
            raise ValueError(f"router port {self.port_id}: mtu {self.mtu} below 68")

    @property
    def ipv4(self) -> tuple[ipaddress.IPv4Interface, ...]:
        out = []
        for ip in self.ips:
            iface = ipaddress.ip_interface(ip)
            if isinstance(iface, ipaddress.IPv4Interface):
                out.append(iface)
        return tuple(out)


@dataclass(frozen=True, slots=True, order=True)
class StaticRoute:
    destination: str
    nexthop: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "destination", str(ipaddress.ip_network(self.destination)))
        object.__setattr__(self, "nexthop", str(ipaddress.ip_address(self.nexthop)))


@dataclass(frozen=True, slots=True, order=True)
class FloatingIp:
    """1:1 NAT: floating_ip (on the external network) <-> fixed_ip (an internal port)."""

    floating_ip: str
    fixed_ip: str

    def __post_init__(self) -> None:
        fip = ipaddress.ip_address(self.floating_ip)
        fixed = ipaddress.ip_address(self.fixed_ip)
        if fip.version != 4 or fixed.version != 4:
            raise ValueError("floating IPs are IPv4 only")
        object.__setattr__(self, "floating_ip", str(fip))
        object.__setattr__(self, "fixed_ip", str(fixed))


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """A router as the L3 service needs it.

    gateway: the port on the external network (None: no gateway, hence no NAT);
    gateway_nexthop: the external network's gateway (the default route), if any.
    enable_snat: internal traffic leaving by the gateway is SNATed to the gateway IP.
    admin_state_up False: the router's devices are set down (no traffic), nothing else.
    """

    id: str
    admin_state_up: bool = True
    interfaces: tuple[RouterPort, ...] = ()
    gateway: RouterPort | None = None
    gateway_nexthop: str | None = None
    enable_snat: bool = True
    routes: tuple[StaticRoute, ...] = ()
    floating_ips: tuple[FloatingIp, ...] = ()

    def __post_init__(self) -> None:
        check_id("router", self.id)
        object.__setattr__(self, "interfaces", tuple(self.interfaces))
        object.__setattr__(self, "routes", tuple(sorted(set(self.routes))))
        object.__setattr__(self, "floating_ips", tuple(sorted(set(self.floating_ips))))
        if self.gateway_nexthop is not None:
            object.__setattr__(
                self, "gateway_nexthop", str(ipaddress.ip_address(self.gateway_nexthop))
            )
        ids = [p.port_id for p in self.all_ports]
        if len(set(ids)) != len(ids):
            raise ValueError(f"router {self.id}: a port is listed twice")
        fips = [f.floating_ip for f in self.floating_ips]
        if len(set(fips)) != len(fips):
            raise ValueError(f"router {self.id}: a floating IP is mapped twice")
        if self.floating_ips and (self.gateway is None or not self.gateway.ipv4):
            raise ValueError(f"router {self.id}: floating IPs need an IPv4 gateway")

    @property
    def all_ports(self) -> tuple[RouterPort, ...]:
        return self.interfaces + ((self.gateway,) if self.gateway is not None else ())

    @property
    def gateway_ip(self) -> str | None:
        if self.gateway is None or not self.gateway.ipv4:
            return None
        return str(self.gateway.ipv4[0].ip)
