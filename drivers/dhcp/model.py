"""Desired state of the DHCP service for one network (immutable, hashable)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from drivers.model import normalize_mac
from drivers.nsdev import check_id

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")


@dataclass(frozen=True, slots=True)
class DhcpPort:
    """The network's DHCP port: ips as "address/prefixlen" (one per served subnet)."""

    port_id: str
    mac: str
    ips: tuple[str, ...]

    def __post_init__(self) -> None:
        check_id("port", self.port_id)
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        object.__setattr__(self, "ips", tuple(str(ipaddress.ip_interface(i)) for i in self.ips))


@dataclass(frozen=True, slots=True, order=True)
class HostRoute:
    destination: str
    nexthop: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "destination", str(ipaddress.ip_network(self.destination)))
        object.__setattr__(self, "nexthop", str(ipaddress.ip_address(self.nexthop)))


@dataclass(frozen=True, slots=True)
class DhcpSubnet:
    """gateway None: the subnet has no router (option router sent empty)."""

    cidr: str
    gateway: str | None = None
    dns_servers: tuple[str, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()
    enable_dhcp: bool = True

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.cidr)
        if net.version != 4:
            raise ValueError(f"subnet {self.cidr}: only IPv4 DHCP is supported")
        object.__setattr__(self, "cidr", str(net))
        if self.gateway is not None:
            object.__setattr__(self, "gateway", str(ipaddress.ip_address(self.gateway)))
        object.__setattr__(
            self, "dns_servers", tuple(str(ipaddress.ip_address(d)) for d in self.dns_servers)
        )
        object.__setattr__(self, "host_routes", tuple(self.host_routes))


@dataclass(frozen=True, slots=True, order=True)
class DhcpHost:
    """A static lease: port MAC -> fixed IP (and the hostname handed out)."""

    mac: str
    ip: str
    hostname: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        object.__setattr__(self, "ip", str(ipaddress.ip_address(self.ip)))
        if self.hostname is not None and not _HOSTNAME_RE.match(self.hostname):
            raise ValueError(f"invalid hostname {self.hostname!r}")


@dataclass(frozen=True, slots=True)
class DhcpNetworkSpec:
    """One network's DHCP service on this host. bridge: the network's bridge here;
    lease_time in seconds."""

    network_id: str
    bridge: str
    mtu: int
    dhcp_port: DhcpPort
    subnets: tuple[DhcpSubnet, ...] = ()
    hosts: tuple[DhcpHost, ...] = ()
    lease_time: int = 86400

    def __post_init__(self) -> None:
        check_id("network", self.network_id)
        object.__setattr__(self, "subnets", tuple(self.subnets))
        object.__setattr__(self, "hosts", tuple(sorted(set(self.hosts))))
        if self.mtu < 68:
            raise ValueError(f"network {self.network_id}: mtu {self.mtu} below 68")
        if self.lease_time < 120:
            raise ValueError("lease_time below 120 s")

    @property
    def served_subnets(self) -> tuple[DhcpSubnet, ...]:
        """Subnets with DHCP enabled, sorted by CIDR (their tag is their index here)."""
        return tuple(sorted((s for s in self.subnets if s.enable_dhcp), key=lambda s: s.cidr))
