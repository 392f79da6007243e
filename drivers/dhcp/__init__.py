"""DHCP host service (Neutron's DHCP agent, re-implemented): dnsmasq per network."""

from drivers.dhcp.driver import DhcpDriver
from drivers.dhcp.model import DhcpHost, DhcpNetworkSpec, DhcpPort, DhcpSubnet, HostRoute

__all__ = ["DhcpDriver", "DhcpHost", "DhcpNetworkSpec", "DhcpPort", "DhcpSubnet", "HostRoute"]
