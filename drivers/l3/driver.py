"""The L3 host service: one namespace per router, wired like a port into the networks'
bridges, with forwarding, static routes and NAT (SNAT, floating IPs, hairpin).

Converges in the drivers' three steps: ``read_actual()`` (netlink + nft read-back of
every router namespace with this agent's prefix), the pure ``diff()`` (planner.py),
``apply()`` of idempotent changes. ``sync(routers, remove_stale=...)`` ties them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from drivers import nsdev
from drivers.base import ApplyError, Change, Plan
from drivers.firewall.nft import NftError, NftExecutor, make_executor
from drivers.l3 import nat, planner
from drivers.l3.actual import L3Actual, RouterActual
from drivers.l3.changes import L3Change
from drivers.l3.model import RouterSpec
from drivers.l3.naming import TAP_PREFIX, namespace_name, router_id_of
from drivers.netlink import dump_links, netns_exists, netns_path, open_iproute

log = logging.getLogger(__name__)


def _ns_inode(ns: str) -> int | None:
    try:
        return os.stat(netns_path(ns)).st_ino
    except FileNotFoundError:
        return None


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
        # ns -> (inode of /run/netns/ns when opened, socket / nft executor)
        self._iprs: dict[str, tuple[int, Any]] = {}
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
        inode = _ns_inode(ns)
        cached = self._iprs.get(ns)
        if cached is not None and cached[0] == inode:
            return cached[1]
        if cached is not None:
            cached[1].close()
        ipr = open_iproute(ns)
        self._iprs[ns] = (inode or 0, ipr)
        return ipr

    async def nft(self, ns: str, script: str, *, json: bool = False) -> str:
        inode = _ns_inode(ns)
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
        cached = self._iprs.pop(ns, None)
        if cached is not None:
            cached[1].close()
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
        failures: list[tuple[Change, BaseException]] = []
        failed_ns: set[str] = set()
        for change in plan:
            if not isinstance(change, L3Change):
                raise TypeError(f"not an L3 change: {change!r}")
            if change.namespace in failed_ns:
                continue
            try:
                await change.apply(self)
            except Exception as exc:
                log.warning("change failed: %s: %r", change, exc)
                failures.append((change, exc))
                if not netns_exists(change.namespace):
                    failed_ns.add(change.namespace)
        if failures:
            raise ApplyError(failures)

    async def sync(
        self, desired: Mapping[str, RouterSpec] | Iterable[RouterSpec], *, remove_stale: bool
    ) -> Plan:
        """Converge; returns the plan that was applied (empty: nothing to do).

        remove_stale=False keeps routers the desired state does not mention (an agent
        that just restarted and does not know all its routers yet)."""
        async with self._lock:
            plan = self.diff(desired, await self.read_actual())
            if not remove_stale:
                plan = plan.without_stale_removals()
            if plan:
                log.debug("applying %d change(s): %s", len(plan), plan.describe())
                await self.apply(plan)
            return plan


def _by_id(desired: Mapping[str, RouterSpec] | Iterable[RouterSpec]) -> dict[str, RouterSpec]:
    if isinstance(desired, Mapping):
        out = dict(desired)
        for key, spec in out.items():
            if key != spec.id:
                raise ValueError(f"routers[{key!r}] holds router {spec.id!r}")
        return out
    out = {}
    for spec in desired:
        if spec.id in out:
            raise ValueError(f"router {spec.id} listed twice")
        out[spec.id] = spec
    return out
