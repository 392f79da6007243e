"""DHCP lease and router failover through the real controller and agents.

A tuned private etcd, an in-process controller (scheduling leader), four "node"
namespaces on a VXLAN underlay plus physnet1 (tests/support/netns.py) and an external
namespace on it; ``baryon agent`` processes: node1-3 run ``l2,dhcp,l3``, node4 only
``l2`` and hosts the workloads (so a dying router host never takes a workload along).

1. DHCP lease: CreatePort (bound to node4) -> plug (drivers.plug, a veth into a new
   workload namespace) -> the port turns ACTIVE (node4's agent wired the tap) ->
   busybox udhcpc (hook script of ours) gets the lease from the dnsmasq the DHCP
   agent runs for the network. Times: CreatePort -> lease, plug -> lease (the
   target: <= 250 ms), and udhcpc alone.
2. Router failover: a 20 ms ping runs from a workload on one subnet to one on the
   other, through the router. The router host's agent is SIGKILLed and the node
   isolated (its NICs drop every frame: a dead host); the leader reschedules the
   router once the agent's liveness lease expires (agent_lease_ttl) and the new
   host builds it. Time: SIGKILL -> first ping reply through the new router (the
   target: <= 3 s). The dead node then comes back (its agent restarts and removes
   its stale router) and the next repetition kills the router's new host.

    .venv/bin/python -m bench.l3_failover [--leases 10] [--failovers 3] [--ttl 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

from baryon.v1 import port_pb2, router_pb2
from controller.auth import Context, TokenTable
from controller.model import DhcpBinding, RouterBinding
from controller.server import Controller
from drivers.plug import plug
from tests.support.controller import ADMIN_TOKEN, TOKENS, Client, config
from tests.support.dhcp_client import dhcp_lease, install_script
from tests.support.etcd import private_etcd, scratch_dir
from tests.support.l3 import L3
from tests.support.netns import NamespacePool, Node, build_underlay, run
from tests.support.routing import isolate_node

ROOT = Path(__file__).resolve().parent.parent
AGENT_TOKEN = "tok-bench-agent"
EXT_GW = "203.0.113.1"
REPLY_RE = re.compile(rb"seq=\d+")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Agents:
    def __init__(self, target: str, pool: NamespacePool, state: Path, poll: float) -> None:
        self.target = target
        self.pool = pool
        self.state = state
        self.poll = poll
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.started: list[asyncio.subprocess.Process] = []

    async def start(self, node: Node, services: str) -> None:
        log = os.open(self.state / f"{node.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "agent",
                "--controller", self.target, "--host", node.name, "--token", AGENT_TOKEN,
                "--netns", node.ns, "--tunnel-ip", node.tunnel_ip,
                "--poll-interval", str(self.poll), "--services", services,
                "--physical-interface-mappings", "physnet1:eth1",
                "--netns-prefix", f"{self.pool.prefix}{node.name}-",
                "--state-dir", str(self.state / node.name),
                "--firewall", "none",  # L3/DHCP failover alone
                cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            os.close(log)
        self.procs[node.name] = proc
        self.started.append(proc)

    async def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def kill_all(self) -> None:
        for proc in self.started:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.kill_dnsmasqs()

    def kill_dnsmasqs(self) -> None:
        """dnsmasq outlives a SIGKILLed agent: kill every one by its PID file."""
        for pidfile in self.state.glob("*/dhcp/*/pid"):
            try:
                pid = int(pidfile.read_text().strip())
                if b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass


async def read_replies(stdout: asyncio.StreamReader, replies: list[float]) -> None:
    """Record when each ping reply line arrives (busybox ping flushes every line)."""
    while line := await stdout.readline():
        if REPLY_RE.search(line):
            replies.append(time.time())


async def until(what: str, probe: Any, limit: float = 15.0, step: float = 0.005) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(step)


async def run_bench(leases: int, failovers: int, ttl: int, poll: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        "create_lease": [], "plug_lease": [], "udhcpc": [], "failover": [],
    }  # fmt: skip
    pool = NamespacePool("bfo")
    state = scratch_dir("bfostate")
    os.chmod(state, 0o755)  # dnsmasq (user nobody) reads its files below
    tokens = dict(TOKENS)
    tokens[AGENT_TOKEN] = Context("service", frozenset({"agent"}))
    async with private_etcd("bfo") as etcd:
        cfg = config("/bench/", agent_lease_ttl=ttl, leader_lease_ttl=ttl)
        ctl = Controller(cfg, TokenTable(tokens), [etcd.endpoint], "127.0.0.1:0")
        await ctl.start()
        target = f"127.0.0.1:{ctl.port}"
        channel = grpc.aio.insecure_channel(target)
        agents = Agents(target, pool, state, poll)
        try:
            await _run(results, pool, ctl, channel, agents, leases, failovers, str(state))
        except BaseException:
            for p in sorted(state.glob("*.log")):
                print(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            await agents.kill_all()
            await channel.close()
            await ctl.stop()
            await pool.cleanup()
            shutil.rmtree(state, ignore_errors=True)
    return results


async def _run(
    results: dict[str, list[float]],
    pool: NamespacePool,
    ctl: Controller,
    channel: grpc.aio.Channel,
    agents: Agents,
    leases: int,
    failovers: int,
    tmp: str,
) -> None:
    assert ctl.store is not None
    cache = ctl.store.cache
    admin = Client(channel, ADMIN_TOKEN)
    l3 = L3(SimpleNamespace(channel=channel), admin)  # type: ignore[arg-type]
    underlay = await build_underlay(pool, 4, physnet=True)
    nodes = {n.name: n for n in underlay.nodes}
    ext = await pool.create("ext")
    await run("ip", "-n", ext, "link", "add", "eth0", "type", "veth", "peer", "name", "pext",
              "netns", underlay.ns)  # fmt: skip
    await run("ip", "-n", underlay.ns, "link", "set", "pext", "master", "ph0", "up")
    await run("ip", "-n", ext, "addr", "add", f"{EXT_GW}/24", "dev", "eth0")
    await run("ip", "-n", ext, "link", "set", "eth0", "up")
    for name in ("node1", "node2", "node3"):
        await agents.start(nodes[name], "l2,dhcp,l3")
    await agents.start(nodes["node4"], "l2")

    extnet = await admin.network(
        name="ext", external=True, provider_network_type="flat",
        provider_physical_network="physnet1",
    )  # fmt: skip
    await admin.subnet(extnet.id, "203.0.113.0/24", gateway_ip=EXT_GW, enable_dhcp=False)
    net_a = await admin.network(name="a")
    sub_a = await admin.subnet(net_a.id, "10.10.1.0/24")
    net_b = await admin.network(name="b")
    sub_b = await admin.subnet(net_b.id, "10.10.2.0/24", enable_dhcp=False)
    router = await l3.router(
        name="r", external_gateway_info=router_pb2.ExternalGatewayInfo(network_id=extnet.id)
    )
    await l3.add_interface(router.id, subnet_id=sub_a.id)
    await l3.add_interface(router.id, subnet_id=sub_b.id)

    async def dhcp_ready() -> bool:
        return bool(cache.related(DhcpBinding, "net_dhcp", net_a.id))

    await until("DHCP scheduled", dhcp_ready)
    script = install_script(tmp)

    async def new_workload(net_id: str, role: str, static: bool) -> tuple[str, port_pb2.Port]:
        ns = await pool.create(role)
        t0 = time.perf_counter()
        port = await admin.port(net_id, name=role, binding_host_id="node4")
        prefix = [(ip.ip_address, 24) for ip in port.fixed_ips.ips] if static else None
        gw = None
        if static:
            gw = "10.10.1.1" if net_id == net_a.id else "10.10.2.1"
        t_plug = time.perf_counter()
        await plug(port.id, port.mac_address, 1450, netns=ns, node_netns=nodes["node4"].ns,
                   fixed_ips=prefix, gateway=gw)  # fmt: skip
        t_plugged = time.perf_counter()
        if static:
            return ns, port

        async def active() -> bool:
            got = await admin.get_port(port.id)
            return got.status == "ACTIVE"

        await until("port ACTIVE", active)
        lease = None
        while lease is None:
            lease = await dhcp_lease(pool, ns, script, os.path.join(tmp, f"{role}.lease"))
        done = time.perf_counter()
        assert lease["ip"] == port.fixed_ips.ips[0].ip_address
        results["create_lease"].append((done - t0) * 1000)
        results["plug_lease"].append((done - t_plugged) * 1000)
        results["udhcpc"].append(lease.seconds * 1000)
        del t_plug
        return ns, port

    wa_ns = ""
    for i in range(leases):
        ns, _ = await new_workload(net_a.id, f"wa{i}", static=False)
        wa_ns = wa_ns or ns
    _, pb = await new_workload(net_b.id, "wb", static=True)
    ip_b = pb.fixed_ips.ips[0].ip_address

    async def reaches() -> bool:
        res = await run(
            "ip", "netns", "exec", wa_ns, "busybox", "ping", "-c1", "-W1", ip_b, check=False
        )  # fmt: skip
        return res.ok

    await until("a reaches b through the router", reaches, 20, 0.05)
    for _ in range(failovers):
        binding = cache.get(RouterBinding, router.id)
        assert binding is not None
        host = binding.host
        pinger = await pool.spawn(wa_ns, "busybox", "ping", "-i", "0.02", "-W", "1", ip_b)
        assert pinger.stdout is not None
        replies: list[float] = []
        reader = asyncio.create_task(read_replies(pinger.stdout, replies))
        await asyncio.sleep(0.3)
        await agents.kill(host)
        await isolate_node(SimpleNamespace(node_ns=lambda n: nodes[n].ns), host, True)  # type: ignore[arg-type]
        t_kill = time.time()
        # The first reply after the kill, through the new router (replies in flight at
        # the kill arrive within a few ms: skip 100 ms).
        recovered = None
        deadline = time.monotonic() + 15
        while recovered is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            later = [t for t in replies if t - t_kill > 0.1]
            recovered = later[0] if later else None
        os.kill(pinger.pid, signal.SIGKILL)
        await pinger.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if recovered is None:
            raise TimeoutError("traffic did not recover after the failover")
        results["failover"].append((recovered - t_kill) * 1000)
        b2 = cache.get(RouterBinding, router.id)
        print(f"router {host} -> {b2.host if b2 else '?'}: {(recovered - t_kill):.2f} s")
        # The node comes back; its agent removes its stale router.
        await isolate_node(SimpleNamespace(node_ns=lambda n: nodes[n].ns), host, False)  # type: ignore[arg-type]
        await agents.start(nodes[host], "l2,dhcp,l3")
        await asyncio.sleep(2.0)


ROWS = [
    ("create_lease", "DHCP: CreatePort -> lease"),
    ("plug_lease", "DHCP: plug -> lease (target <= 250)"),
    ("udhcpc", "DHCP: udhcpc alone"),
    ("failover", "router failover: SIGKILL -> traffic (target <= 3000)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=1, help="agent_lease_ttl (s)")
    parser.add_argument("--poll", type=float, default=0.1, help="agents' --poll-interval")
    parser.add_argument("--json", help="also write the raw figures (ms) here")
    args = parser.parse_args()
    results = asyncio.run(run_bench(args.leases, args.failovers, args.ttl, args.poll))
    print(f"agent_lease_ttl {args.ttl} s, agent poll interval {args.poll} s")
    width = max(len(label) for _, label in ROWS)
    print(f"{'measure (ms)':<{width}}  {'n':>3}  {'p50':>7}  {'p90':>7}  {'max':>7}  {'mean':>7}")
    print("-" * (width + 42))
    for key, label in ROWS:
        values = results[key]
        if not values:
            continue
        print(
            f"{label:<{width}}  {len(values):>3}  {pct(values, 0.5):>7.1f}  "
            f"{pct(values, 0.9):>7.1f}  {max(values):>7.1f}  {statistics.fmean(values):>7.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
