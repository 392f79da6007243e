"""The agent's firewall step: security groups enforced next to the L2 driver.

``--firewall nftables`` runs drivers.firewall.NftFirewall in the node's namespace.
Call order (see NftFirewall): firewall before the L2 sync, so a new port's rules exist
before its tap joins a bridge, and again after it when the L2 sync created bridges
(br_netfilter can only be turned on for an existing bridge).

Linux bridge mechanism: one bridge per network (``brq<net>``). Open vSwitch mechanism
(OvsDriver with ``hybrid_plug=True``): Neutron's hybrid plug, a Linux bridge per port
(``qbr<port>``) between the tap and br-int; the driver's ``port_bridges(desired)`` says
which, and only those ports are handed to the firewall (a port without port security
is plugged straight into br-int: no bridge, nothing to filter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from drivers.linuxbridge.naming import bridge_name
from drivers.model import HostState

log = logging.getLogger(__name__)

FIREWALLS = ("none", "nftables")

PortBridges = Callable[[HostState], Mapping[str, str]]


class NftablesFirewall:
    """port_bridges: None for the Linux bridge mechanism (a bridge per network), or the
    OVS driver's ``port_bridges`` (hybrid plug: a bridge per port)."""

    def __init__(self, netns: str | None, *, port_bridges: PortBridges | None = None) -> None:
        from drivers.firewall import NftFirewall

        self.fw: Any = NftFirewall(netns)
        self.port_bridges = port_bridges
        self._again = False

    @classmethod
    def for_driver(cls, netns: str | None, driver: object) -> NftablesFirewall:
        """The firewall for a mechanism driver: per-port bridges when the driver plugs
        ports the hybrid way (OvsDriver(hybrid_plug=True)), per-network ones otherwise."""
        try:
            from drivers.ovs import OvsDriver
        except ImportError:  # no ovsdbapp: not an OVS host
            return cls(netns)
        if isinstance(driver, OvsDriver):
            if not driver.config.hybrid_plug:
                raise ValueError("the nftables firewall on OVS needs OvsDriver(hybrid_plug=True)")
            return cls(netns, port_bridges=driver.port_bridges)
        return cls(netns)

    async def start(self) -> None:
        """Call before any gRPC channel exists: opening a netlink socket in a namespace
        forks a helper the first time it is used, and forking a process with live gRPC
        threads can hang (platform notes). One query here opens it for good."""
        await self.fw.start()
        await self.fw.br_netfilter_state("lo")

    async def close(self) -> None:
        await self.fw.close()

    @staticmethod
    def bridges(desired: HostState) -> dict[str, str]:
        used = {p.network_id for p in desired.ports.values()}
        return {n: bridge_name(n) for n in desired.networks if n in used}

    async def before_l2(self, desired: HostState) -> None:
        self._again = await self._sync(desired)

    async def after_l2(self, desired: HostState) -> None:
        if self._again:
            self._again = await self._sync(desired)

    async def _sync(self, desired: HostState) -> bool:
        """One firewall sync; whether bridges were missing (sync again after L2)."""
        from drivers.firewall import FirewallError

        try:
            if self.port_bridges is None:
                result = await self.fw.sync(desired, self.bridges(desired))
            else:
                per_port = dict(self.port_bridges(desired))
                # Only the hybrid-plugged ports sit behind a bridge of their own.
                ports = {k: p for k, p in desired.ports.items() if k in per_port}
                result = await self.fw.sync(
                    replace(desired, ports=ports), {}, port_bridges=per_port
                )
        except FirewallError as err:
            log.error("firewall: %s", err)
            return True
        for port_id, problem in dict(result.problems).items():
            log.warning("firewall: port %s: %s", port_id, problem)
        return bool(result.bridges_missing)
