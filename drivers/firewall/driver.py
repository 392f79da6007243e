"""NftFirewall: security groups for the ports of one host's Linux bridges.

Usage (the agent, per host namespace)::

    fw = NftFirewall(netns)
    await fw.start()                        # tables, br_netfilter check (fail closed)
    await fw.sync(desired, {net_id: bridge_name, ...})

``sync`` is cheap when little changed: the ruleset loaded is remembered (read back from
the kernel only at start and after a failure), the plan is a diff, and a remote-group
membership change is one set element in one nft transaction.

Hybrid plugging (OVS hosts, as Neutron's iptables_hybrid): give each port its own Linux
bridge between the workload's tap and OVS (tap -> qbr<port> -> veth qvb/qvo -> br-int)
and pass ``port_bridges={port_id: qbr}`` to ``sync``: the same rules apply, the per-port
bridges of a network share its conntrack zone (tests/test_firewall_dataplane.py).

Call order with the L2 driver: firewall ``sync`` first (the new ports' rules exist
before their taps join a bridge; an unknown tap is dropped anyway), then the L2 sync,
then firewall ``sync`` again if bridges were created (br_netfilter can only be turned
on for an existing bridge; until then the postrouting guard drops the IP traffic of
secured ports on it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from drivers.firewall import planner
from drivers.firewall.actual import Ruleset, parse_ruleset
from drivers.firewall.nft import NftError, NftExecutor, make_executor
from drivers.firewall.planner import FirewallPlan, FlushSpec
from drivers.model import HostState
from drivers.netlink import open_iproute
from drivers.sysctl import run_in_netns

log = logging.getLogger(__name__)

_BRNF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"
_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")
_CONNTRACK_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "icmpv6", 132: "sctp"}
_CONNTRACK_PARALLEL = 8


class FirewallError(Exception):
    pass


@dataclass(frozen=True)
class SyncResult:
    plan: FirewallPlan
    bridges_fixed: tuple[str, ...] = ()  # br_netfilter was off and got turned on
    bridges_missing: tuple[str, ...] = ()  # not created yet: nothing to verify
    conntrack_deleted: int = 0
    problems: Mapping[str, str] = field(default_factory=dict)


class NftFirewall:
    def __init__(
        self,
        netns: str | None,
        *,
        executor: NftExecutor | None = None,
        prefer_library: bool = True,
    ) -> None:
        self.netns = netns
        self._nft: NftExecutor | None = executor
        self._prefer_library = prefer_library
        self._ipr: Any = None
        self._actual: Ruleset | None = None
        self._previous: HostState | None = None
        self._previous_zones: Mapping[str, int] | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Check br_netfilter exists here, then create the tables if they are missing.

        An existing ruleset (a restart) is left exactly as it is: enforcement goes on,
        and the first ``sync`` converges it with a minimal transaction.
        """
        if not await run_in_netns(self.netns, lambda: os.path.exists(_BRNF_SYSCTL)):
            raise FirewallError(
                f"br_netfilter is not available in {self.netns or 'this namespace'}:"
                " security groups cannot be enforced on bridged ports"
            )
        if self._nft is None:
            self._nft = make_executor(self.netns, prefer_library=self._prefer_library)
        if self._ipr is None:
            self._ipr = open_iproute(self.netns)
        async with self._lock:
            actual = await self.read_actual()
            if not actual.skeleton and not actual.chains and not actual.port_from:
                # Nothing of ours yet: empty tables (they filter nothing until a sync
                # registers bridges and ports).
                plan = planner.diff(HostState(), {}, actual)
                await self._run(plan.script())
                actual = plan.result
            self._actual = actual

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._nft is not None:
            await self._nft.close()
            self._nft = None

    async def __aenter__(self) -> NftFirewall:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_nft(self) -> NftExecutor:
        if self._nft is None:
            raise RuntimeError("NftFirewall: call start() first")
        return self._nft

    async def _run(self, script: str) -> None:
        if script:
            await self._require_nft().run(script)

    # -- reading -----------------------------------------------------------------------

    async def read_actual(self) -> Ruleset:
        return parse_ruleset(await self._require_nft().run("list ruleset", json=True))

    @property
    def loaded(self) -> Ruleset | None:
        """The ruleset this instance believes is loaded (None before start)."""
        return self._actual

    # -- planning and applying -----------------------------------------------------------

    def plan(
        self,
        desired: HostState,
        bridges: Mapping[str, str],
        *,
        port_bridges: Mapping[str, str] | None = None,
        remove_stale: bool = True,
    ) -> FirewallPlan:
        if self._actual is None:
            raise RuntimeError("NftFirewall: call start() first")
        return planner.diff(
            desired,
            bridges,
            self._actual,
            previous=self._previous,
            previous_zones=self._previous_zones,
            port_bridges=port_bridges,
            remove_stale=remove_stale,
        )

    async def sync(
        self,
        desired: HostState,
        bridges: Mapping[str, str],
        *,
        port_bridges: Mapping[str, str] | None = None,
        remove_stale: bool = True,
    ) -> SyncResult:
        """Converge: br_netfilter on every bridge, one nft transaction, conntrack cleanup.

        bridges: network id -> bridge name, for the networks with ports on this host.
        port_bridges: port id -> a bridge of the port's own (hybrid plugging: a Linux
        bridge per port between the workload and OVS); the network's zone is shared.
        Raises FirewallError when br_netfilter cannot be turned on for an existing
        bridge (after applying the ruleset: the postrouting guard keeps that bridge's
        secured ports closed) or when the transaction fails (nothing of it applied).
        """
        async with self._lock:
            names = set(bridges.values()) | set((port_bridges or {}).values())
            fixed, missing, broken = await self._ensure_br_netfilter(sorted(names))
            plan = self.plan(desired, bridges, port_bridges=port_bridges, remove_stale=remove_stale)
            script = plan.script()
            if script:
                try:
                    await self._require_nft().run(script)
                except NftError as exc:
                    self._actual = await self.read_actual()
                    raise FirewallError(f"firewall transaction failed: {exc}") from exc
            self._actual = plan.result
            self._previous = desired
            self._previous_zones = dict(plan.network_zones)
            deleted = await self.delete_conntrack(plan.flushes)
            if broken:
                raise FirewallError(
                    "br_netfilter could not be enabled on "
                    + ", ".join(f"{b} ({why})" for b, why in broken)
                    + ": IP traffic of secured ports there is dropped"
                )
            return SyncResult(plan, tuple(fixed), tuple(missing), deleted, plan.problems)

    # -- br_netfilter --------------------------------------------------------------------

    async def br_netfilter_state(self, bridge: str) -> tuple[bool, bool] | None:
        """(nf_call_iptables, nf_call_ip6tables) of a bridge, None if it does not exist."""
        try:
            msgs = await self._ipr.link("get", ifname=bridge)
        except NetlinkError:
            return None
        for msg in msgs:
            if msg.get(("linkinfo", "kind")) != "bridge":
                return None
            data = msg.get(("linkinfo", "data"))
            v4 = data.get("IFLA_BR_NF_CALL_IPTABLES") if data is not None else None
            v6 = data.get("IFLA_BR_NF_CALL_IP6TABLES") if data is not None else None
            return bool(v4), bool(v6)
        return None

    async def _ensure_br_netfilter(
        self, names: list[str]
    ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        fixed: list[str] = []
        missing: list[str] = []
        broken: list[tuple[str, str]] = []
        for name in names:
            state = await self.br_netfilter_state(name)
            if state is None:
                missing.append(name)
                continue
            if state == (True, True):
                continue
            try:
                await self._ipr.link(
                    "set",
                    ifname=name,
                    kind="bridge",
                    br_nf_call_iptables=1,
                    br_nf_call_ip6tables=1,
                )
            except NetlinkError as exc:
                broken.append((name, str(exc)))
                continue
            if await self.br_netfilter_state(name) != (True, True):
                broken.append((name, "still off after setting it"))
                continue
            log.warning("br_netfilter was off on %s in %s: turned on", name, self.netns)
            fixed.append(name)
        return fixed, missing, broken

    # -- conntrack -----------------------------------------------------------------------

    async def delete_conntrack(self, flushes: tuple[FlushSpec, ...] | list[FlushSpec]) -> int:
        """Delete the conntrack entries the specs describe; returns how many went."""
        if not flushes:
            return 0
        sem = asyncio.Semaphore(_CONNTRACK_PARALLEL)

        async def one(spec: FlushSpec) -> int:
            async with sem:
                return await self._conntrack_delete(conntrack_args(spec))

        return sum(await asyncio.gather(*(one(f) for f in flushes)))

    async def _conntrack_delete(self, args: list[str]) -> int:
        argv = ["conntrack", "-D", *args]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        text = err.decode()
        match = _DELETED_RE.search(text)
        if match is None:
            raise FirewallError(f"{' '.join(argv)}: {text.strip()}")
        return int(match.group(1))


def conntrack_args(spec: FlushSpec) -> list[str]:
    """conntrack(8) filter arguments for one FlushSpec (original direction)."""
    args = ["-w", str(spec.zone), "-f", "ipv4" if spec.version == 4 else "ipv6"]
    local_flag, peer_flag = ("-d", "-s") if spec.direction == "ingress" else ("-s", "-d")
    if spec.local is not None:
        args += [local_flag, spec.local]
    if spec.peer is not None:
        args += [peer_flag, spec.peer]
    if spec.protocol is not None and spec.protocol in _CONNTRACK_PROTOCOLS:
        args += ["-p", _CONNTRACK_PROTOCOLS[spec.protocol]]
        if spec.dport is not None:
            args += ["--dport", str(spec.dport)]
    return args
