"""Configuration of the Open vSwitch driver on one host."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.model import FrozenDict

VXLAN_DEFAULT_PORT = 4789


@dataclass(frozen=True)
class OvsConfig:
    """netns: the namespace ovs-vswitchd runs in, where port devices live (None: current).
    ovsdb: the OVSDB remote, ``unix:/abs/path/db.sock``.
    bridge_mappings: physical network -> an existing OVS bridge holding its NIC.
    tunnel_ip: local VTEP address (None: no VXLAN/GRE on this host); it must sit on the
        internal port of an OVS bridge (userspace tunnels only route out through OVS).
    ovs_rundir: where ovs-vswitchd keeps ``<bridge>.mgmt`` (default: the directory of
        the OVSDB unix socket, as in a standard installation).
    hybrid_plug: ports with port security get Neutron's hybrid plug (tap -> per-port
        Linux bridge qbr -> veth qvb/qvo -> br-int) so a bridge-based firewall
        (drivers.firewall, br_netfilter) can filter them; others are plugged directly.
    """

    ovsdb: str
    netns: str | None = None
    bridge_mappings: Mapping[str, str] = field(default_factory=lambda: FrozenDict())
    tunnel_ip: str | None = None
    datapath_type: str = "netdev"
    integration_bridge: str = "br-int"
    tunnel_bridge: str = "br-tun"
    vxlan_port: int = VXLAN_DEFAULT_PORT
    ovs_rundir: str | None = None
    timeout: float = 10.0
    hybrid_plug: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bridge_mappings", FrozenDict(self.bridge_mappings))
        if not self.ovsdb.startswith("unix:/"):
            raise ValueError(f"ovsdb: expected unix:/absolute/path, got {self.ovsdb!r}")
        if self.tunnel_ip is not None:
            address = ipaddress.ip_address(self.tunnel_ip)
            if address.version != 4:
                raise ValueError("tunnel_ip: only IPv4 VTEP addresses are supported")
            object.__setattr__(self, "tunnel_ip", str(address))
        own = {self.integration_bridge, self.tunnel_bridge}
        if self.integration_bridge == self.tunnel_bridge:
            raise ValueError("integration_bridge and tunnel_bridge must differ")
        for physnet, bridge in self.bridge_mappings.items():
            if bridge in own:
                raise ValueError(f"bridge_mappings[{physnet!r}]: {bridge} is the agent's own")
        if len(set(self.bridge_mappings.values())) != len(self.bridge_mappings):
            raise ValueError("bridge_mappings: one bridge per physical network")

    @property
    def rundir(self) -> str:
        if self.ovs_rundir is not None:
            return self.ovs_rundir
        return os.path.dirname(self.ovsdb[len("unix:") :])

    def mgmt_target(self, bridge: str) -> str:
        """ovs-ofctl's target for `bridge` (no namespace needed: a unix socket)."""
        return f"unix:{os.path.join(self.rundir, bridge)}.mgmt"
