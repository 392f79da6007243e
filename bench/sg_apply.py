"""Security group dataplane benchmark (drivers.firewall) on one host namespace.

Measures, and prints as a table:

1. a group with 100 rules applied to 200 ports (plan = render + diff, then the nft
   transaction), from empty tables; a re-sync with nothing to do;
2. one rule added to that group (one chain replaced, whatever the number of ports);
3. one remote-group membership change with 200 and with 2,000 members: nft objects
   touched, sync time, and the time until traffic is actually allowed (a prober thread
   inside the client's namespace retries a TCP connect every few ms from the moment
   the sync starts) - and blocked again after the member leaves.

Only two of the 200 ports are real (a client and a server workload plugged into the
bridge); the others exist in the ruleset only. Everything runs in namespaces created
here (per-run prefix) and removed at the end, processes stopped by PID.

    .venv/bin/python -m bench.sg_apply [--members 200,2000] [--repeat 20] [--json FILE] [--cli]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from drivers.firewall import NftFirewall
from drivers.firewall import render as fw_render
from drivers.linuxbridge import LinuxBridgeDriver
from drivers.linuxbridge.naming import bridge_name
from drivers.model import HostState, NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec
from drivers.plug import plug
from drivers.sysctl import _enter_netns
from tests.support.netns import NamespacePool, start_tcp_server

SERVER_PORT = 8080


def hundred_rules(friends: str) -> tuple[RuleSpec, ...]:
    rules: list[RuleSpec] = [
        RuleSpec("ingress", "IPv4", "tcp", SERVER_PORT, SERVER_PORT, None, friends),
        RuleSpec("egress", "IPv4"),
        RuleSpec("egress", "IPv6"),
        RuleSpec("ingress", "IPv4", "icmp", 8, 0, "198.51.100.0/24"),
    ]
    i = 0
    while len(rules) < 100:
        proto = ("tcp", "udp", "sctp")[i % 3]
        rules.append(
            RuleSpec("ingress", "IPv4", proto, 1000 + i, 1000 + i + (i % 7), f"10.{i % 200}.0.0/16")
        )
        i += 1
    return tuple(rules)


def member_ips(count: int) -> frozenset[str]:
    return frozenset(
        f"172.{16 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}" for i in range(count)
    )


class Prober:
    """Retries a TCP connect from inside a namespace; records when one first succeeds."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        self.netns, self.address, self.port = netns, address, port
        self.success_at: float | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._body, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def _body(self) -> None:
        _enter_netns(self.netns)  # this thread only; it is never reused
        self._ready.set()
        while not self._stop.is_set():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.005)  # a dropped SYN: retry with a new socket
            try:
                s.connect((self.address, self.port))
            except OSError:
                s.close()
                continue
            s.close()
            self.success_at = time.perf_counter()
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def can_connect(netns: str, address: str, port: int, timeout: float = 0.3) -> bool:
    out: list[bool] = []

    def body() -> None:
        _enter_netns(netns)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            out.append(True)
        except OSError:
            out.append(False)
        finally:
            s.close()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout + 2)
    return bool(out and out[0])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    if asyncio.iscoroutine(result):
        result = await result
    return (time.perf_counter() - start) * 1000, result


async def run_bench(
    member_counts: list[int], repeat: int, ports: int, cli: bool = False
) -> dict[str, Any]:
    pool = NamespacePool("sgbench")
    results: dict[str, Any] = {"rows": []}
    rows: list[tuple[str, str, str]] = results["rows"]
    fw: NftFirewall | None = None
    l2: LinuxBridgeDriver | None = None
    try:
        node = await pool.create("node")
        l2 = LinuxBridgeDriver(netns=node)
        await l2.start()
        fw = NftFirewall(node, prefer_library=not cli)
        await fw.start()
        net = NetworkSpec(str(uuid.uuid4()), "local", None, None, 1500)
        bridges = {net.id: bridge_name(net.id)}
        friends = SecurityGroupSpec(str(uuid.uuid4()), (RuleSpec("egress", "IPv4"),))
        big = SecurityGroupSpec(str(uuid.uuid4()), hundred_rules(friends.id))
        client_group = SecurityGroupSpec(str(uuid.uuid4()), (RuleSpec("egress", "IPv4"),))

        def port(n: int, groups: tuple[str, ...]) -> PortSpec:
            return PortSpec(
                str(uuid.uuid4()),
                net.id,
                f"fa:16:3e:01:{n >> 8:02x}:{n & 0xFF:02x}",
                True,
                1500,
                (f"10.0.{n // 250}.{n % 250 + 1}",),
                groups,
            )

        server = port(0, (big.id,))
        client = port(1, (client_group.id,))
        others = [port(n, (big.id,)) for n in range(2, ports)]
        all_ports = [server, client, *others]
        server_ns = await pool.create("server")
        client_ns = await pool.create("client")
        for spec, ns in ((server, server_ns), (client, client_ns)):
            await plug(spec.id, spec.mac, 1500, netns=ns, node_netns=node,
                       fixed_ips=[(spec.fixed_ips[0], 16)])  # fmt: skip
        groups = [big, friends, client_group]

        def state(members: frozenset[str], group: SecurityGroupSpec = big) -> HostState:
            return HostState.build(
                [net],
                all_ports,
                security_groups=[group, friends, client_group],
                sg_members={friends.id: members},
            )

        base_members = member_ips(member_counts[0])
        desired = state(base_members)
        # 1. 100 rules x 200 ports, from empty tables (rendering caches cold).
        for fn in (
            fw_render.from_port_chain,
            fw_render.egress_port_chain,
            fw_render.ingress_port_chain,
            fw_render.group_chain_body,
            fw_render.to_port_chain,
        ):
            fn.cache_clear()
        plan_ms, plan = await timed(lambda: fw.plan(desired, bridges))
        rules_total = sum(op.objects for op in plan.ops)
        apply_ms, _ = await timed(lambda: fw.sync(desired, bridges))
        rows.append(
            (
                f"apply 100 rules x {ports} ports (plan, cold)",
                f"{plan_ms:.0f} ms",
                f"{len(plan.lines)} nft commands, {rules_total} objects",
            )
        )
        rows.append(
            (f"apply 100 rules x {ports} ports (plan + nft sync)", f"{apply_ms:.0f} ms", "")
        )
        results["apply_ms"] = apply_ms
        noop_ms, noop = await timed(lambda: fw.sync(desired, bridges))
        rows.append(
            (
                "re-sync, nothing changed",
                f"{noop_ms:.1f} ms",
                f"{noop.plan.objects_touched} objects",
            )
        )
        # Wire the two real ports (L2) and check enforcement works at all.
        await l2.sync(HostState.build([net], [server, client]), remove_stale=True)
        await fw.sync(desired, bridges)
        await start_tcp_server(pool, server_ns, SERVER_PORT, "srv")
        assert not can_connect(client_ns, server.fixed_ips[0], SERVER_PORT), "not enforced"

        # 2. One rule more in the group: one chain replaced.
        more_rules = replace(big, rules=(*big.rules, RuleSpec("ingress", "IPv4", "tcp", 22, 22)))
        rule_ms, rule_res = await timed(lambda: fw.sync(state(base_members, more_rules), bridges))
        rows.append(
            (
                "add 1 rule to the group (all ports)",
                f"{rule_ms:.1f} ms",
                f"{rule_res.plan.objects_touched} objects ({len(rule_res.plan.ops)} chain)",
            )
        )
        await fw.sync(desired, bridges)

        # 3. Membership changes.
        for count in member_counts:
            members = member_ips(count)
            await fw.sync(state(members), bridges)
            add_sync: list[float] = []
            effect: list[float] = []
            del_sync: list[float] = []
            touched: set[int] = set()
            for _ in range(repeat):
                prober = Prober(client_ns, server.fixed_ips[0], SERVER_PORT)
                prober.start()
                t0 = time.perf_counter()
                res = await fw.sync(state(members | {client.fixed_ips[0]}), bridges)
                add_sync.append((time.perf_counter() - t0) * 1000)
                touched.add(res.plan.objects_touched)
                deadline = time.perf_counter() + 2
                while prober.success_at is None and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)
                prober.stop()
                if prober.success_at is None:
                    raise RuntimeError("membership add did not take effect within 2 s")
                effect.append((prober.success_at - t0) * 1000)
                t1 = time.perf_counter()
                res = await fw.sync(state(members), bridges)
                del_sync.append((time.perf_counter() - t1) * 1000)
                touched.add(res.plan.objects_touched)
                if can_connect(client_ns, server.fixed_ips[0], SERVER_PORT, 0.2):
                    raise RuntimeError("membership delete did not block")
            rows.append(
                (
                    f"member add, group of {count}: sync",
                    f"p50 {statistics.median(add_sync):.1f} / max {max(add_sync):.1f} ms",
                    f"objects touched {sorted(touched)}",
                )
            )
            rows.append(
                (
                    f"member add, group of {count}: traffic allowed",
                    f"p50 {statistics.median(effect):.1f} / p95 {pct(effect, 0.95):.1f} ms",
                    "",
                )
            )
            rows.append(
                (
                    f"member delete, group of {count}: sync (+conntrack -D)",
                    f"p50 {statistics.median(del_sync):.1f} / max {max(del_sync):.1f} ms",
                    "blocked again: yes",
                )
            )
            results[f"members_{count}"] = {
                "add_sync_ms": add_sync,
                "effect_ms": effect,
                "delete_sync_ms": del_sync,
                "objects_touched": sorted(touched),
            }
        _ = groups
    finally:
        if fw is not None:
            await fw.close()
        if l2 is not None:
            await l2.close()
        await pool.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="200,2000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ports", type=int, default=200)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--cli", action="store_true", help="load with `ip netns exec NS nft -f -`, not libnftables"
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.members.split(",")]
    results = asyncio.run(run_bench(counts, args.repeat, args.ports, args.cli))
    print("executor:", "nft CLI (ip netns exec)" if args.cli else "libnftables (in-process)")
    rows = results["rows"]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'value':<{vwidth}}  notes")
    print("-" * (width + vwidth + 30))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
