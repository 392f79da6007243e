"""Configuration of the Linux bridge driver on one host."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.model import FrozenDict

VXLAN_DEFAULT_PORT = 4789


@dataclass(frozen=True)
class LinuxBridgeConfig:
    """netns: the namespace the driver manages as "the host" (None: the current one).
    physical_interface_mappings: physical network name -> interface carrying it.
    tunnel_ip: local VTEP address (None: no VXLAN on this host)."""

    netns: str | None = None
    physical_interface_mappings: Mapping[str, str] = field(default_factory=lambda: FrozenDict())
    tunnel_ip: str | None = None
    vxlan_port: int = VXLAN_DEFAULT_PORT

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "physical_interface_mappings", FrozenDict(self.physical_interface_mappings)
        )
        if self.tunnel_ip is not None:
            address = ipaddress.ip_address(self.tunnel_ip)
            if address.version != 4:
                raise ValueError("tunnel_ip: only IPv4 VTEP addresses are supported")
            object.__setattr__(self, "tunnel_ip", str(address))
