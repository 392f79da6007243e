"""The L3 host service: one namespace per router, wired like a port into the networks'
bridges, with forwarding, static routes and NAT (SNAT, floating IPs, hairpin).

Converges in the drivers' three steps: ``read_actual()`` (netlink + nft read-back of
every router namespace with this agent's prefix), the pure ``diff()`` (planner.py),
``apply()`` of idempotent changes. ``sync(routers, remove_stale=...)`` ties them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from drivers import nsdev
from drivers.base import Plan, apply_in_order, converge
from drivers.firewall.nft import NftError, NftExecutor, make_executor
from drivers.l3 import nat, planner
from drivers.l3.actual import L3Actual, RouterActual
from drivers.l3.changes import L3Change
from drivers.l3.model import RouterSpec
from drivers.l3.naming import TAP_PREFIX, namespace_name, router_id_of
from drivers.model import specs_by_id
from drivers.netlink import dump_links, netns_exists, open_iproute

log = logging.getLogger(__name__)


class L3Driver:
    """netns_prefix: this agent's part of every namespace name (agents sharing a kernel
    must differ); node_netns: where the networks' bridges live (None: current)."""

    name = "l3"

    def __init__(
        self, netns_prefix: str, node_netns: str | None = None, *, nft_library: bool = True
    ) -> None:
        self.netns_prefix = netns_prefix
        self.node_netns = node_netns
        self._nft_library = nft_library
        self._node_ipr: Any = None
        self._iprs = nsdev.NamespaceSockets()
        # ns -> (inode of /run/netns/ns when opened, nft executor)
        self._nfts: dict[str, tuple[int, NftExecutor]] = {}
        self._lock = asyncio.Lock()

    # -- resources ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._node_ipr is None:
            self._node_ipr = open_iproute(self.node_netns)

    async def close(self) -> None:
        for ns in list(set(self._iprs) | set(self._nfts)):
            await self.forget(ns)
        if self._node_ipr is not None:
            self._node_ipr.close()
            self._node_ipr = None

    async def __aenter__(self) -> L3Driver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def node_ipr(self) -> Any:
        if self._node_ipr is None:
            raise RuntimeError("L3Driver: call start() first")
        return self._node_ipr

    async def ipr(self, ns: str) -> Any:
        """A long-lived socket in `ns`, reopened if the namespace was recreated."""
        return self._iprs.get(ns)

    async def nft(self, ns: str, script: str, *, json: bool = False) -> str:
        inode = nsdev.namespace_inode(ns)
        cached = self._nfts.get(ns)
        if cached is None or cached[0] != inode:
            if cached is not None:
                await self.forget(ns)
            executor = make_executor(ns, prefer_library=self._nft_library)
            self._nfts[ns] = (inode or 0, executor)
        else:
            executor = cached[1]
        return await executor.run(script, json=json)

    async def forget(self, ns: str) -> None:
        self._iprs.close(ns)
        executor = self._nfts.pop(ns, None)
        if executor is not None:
            try:
                await executor[1].close()
            except OSError as exc:  # the namespace is gone already: nothing to free there
                log.debug("closing nft context of %s: %r", ns, exc)

    def namespace(self, router_id: str) -> str:
        return namespace_name(self.netns_prefix, router_id)

    # -- converge -----------------------------------------------------------------------

    async def _read_router(self, router_id: str, ns: str) -> RouterActual:
        ipr = await self.ipr(ns)
        links = await dump_links(ipr)
        by_index = await nsdev.read_addresses(ipr)
        addresses = {lk.name: by_index.get(lk.index, frozenset()) for lk in links}
        routes = await nsdev.read_static_routes(ipr)
        forwarding = await nsdev.ip_forwarding(ns)
        try:
            loaded = nat.parse_ruleset(await self.nft(ns, "list ruleset", json=True))
        except NftError as exc:
            log.warning("reading NAT of %s: %s", ns, exc)
            loaded = nat.LoadedNat()
        return RouterActual(
            router_id=router_id,
            namespace=ns,
            links={lk.name: lk for lk in links},
            addresses=addresses,
            routes=routes,
            forwarding=forwarding,
            nat_digest=loaded.digest,
            nat_fips=loaded.floating_ips,
        )

    async def read_actual(self) -> L3Actual:
        routers: dict[str, RouterActual] = {}
        for ns in nsdev.list_namespaces(self.netns_prefix):
            router_id = router_id_of(self.netns_prefix, ns)
            if router_id is None:
                continue
            try:
                routers[router_id] = await self._read_router(router_id, ns)
            except FileNotFoundError:
                continue  # deleted while we looked
        links = await dump_links(self.node_ipr)
        taps = nsdev.read_taps(links, TAP_PREFIX)
        bridges = frozenset(lk.name for lk in links if lk.kind == "bridge")
        return L3Actual(routers=routers, taps=taps, bridges=bridges)

    def diff(
        self, desired: Mapping[str, RouterSpec] | Iterable[RouterSpec], actual: L3Actual
    ) -> Plan:
        return planner.diff(self.netns_prefix, _by_id(desired), actual)

    async def apply(self, plan: Plan) -> None:
        """Apply every change in order; failures are collected and raised together. A
        change of a router whose namespace could not be made is skipped (it would fail)."""
        failed_ns: set[str] = set()

        def failed(change: L3Change) -> None:
            if not netns_exists(change.namespace):
                failed_ns.add(change.namespace)

        await apply_in_order(
            plan,
            self,
            L3Change,
            "an L3",
            log,
            skip=lambda change: change.namespace in failed_ns,
            failed=failed,
        )

    async def sync(
        self, desired: Mapping[str, RouterSpec] | Iterable[RouterSpec], *, remove_stale: bool
    ) -> Plan:
        """Converge; returns the plan that was applied (empty: nothing to do).

        remove_stale=False keeps routers the desired state does not mention (an agent
        that just restarted and does not know all its routers yet)."""
        async with self._lock:
            return await converge(self, desired, remove_stale=remove_stale, logger=log)


def _by_id(desired: Mapping[str, RouterSpec] | Iterable[RouterSpec]) -> dict[str, RouterSpec]:
    return specs_by_id(desired, lambda spec: spec.id, "router")
