"""The agent's firewall step: security groups enforced next to the L2 driver.

``--firewall nftables`` (Linux bridge only) runs drivers.firewall.NftFirewall in the
node's namespace. Call order (see NftFirewall): firewall before the L2 sync, so a new
port's rules exist before its tap joins a bridge, and again after it when the L2 sync
created bridges (br_netfilter can only be turned on for an existing bridge).
"""

from __future__ import annotations

import logging
from typing import Any

from drivers.linuxbridge.naming import bridge_name
from drivers.model import HostState

log = logging.getLogger(__name__)

FIREWALLS = ("none", "nftables")


class NftablesFirewall:
    def __init__(self, netns: str | None) -> None:
        from drivers.firewall import NftFirewall

        self.fw: Any = NftFirewall(netns)
        self._again = False

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
            result = await self.fw.sync(desired, self.bridges(desired))
        except FirewallError as err:
            log.error("firewall: %s", err)
            return True
        for port_id, problem in dict(result.problems).items():
            log.warning("firewall: port %s: %s", port_id, problem)
        return bool(result.bridges_missing)
