"""L3 and DHCP dataplane benchmark (drivers.l3, drivers.dhcp), printed as a table.

1. DHCP lease: a new workload's port is plugged (drivers.plug), the Linux bridge
   drivers sync (wiring + l2population) and busybox udhcpc runs in the workload (hook
   script of our own): time from plug until the address is configured, over N
   workloads on node 2, served by dnsmasq on node 1 across VXLAN. Adding each host
   entry beforehand (a DHCP sync: files + SIGHUP) is timed separately.
2. Router failover (dataplane part): a router with 2 interfaces, a gateway and 5
   floating IPs runs on one node; that node hangs (its NICs drop every frame, links
   stay up, so the external bridge keeps the router's MAC behind it), then the router
   is built from scratch on another node (L2 sync of the new node and of the
   workloads' node for l2population, then L3Driver.sync with another agent prefix).
   Measured: the build time, and the time until traffic through the new router works
   - TCP probes retried every few ms from the external namespace to all 5 floating
   IPs and from a workload to the other subnet. Then the dead node comes back (its
   agent removes its stale router first) and the router fails over again.

Everything runs in namespaces created here (per-run prefix), removed at the end;
processes (dnsmasq, udhcpc, TCP servers) are stopped by PID.

    .venv/bin/python -m bench.l3_dhcp [--leases 20] [--failovers 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import replace

from drivers.dhcp import DhcpDriver, DhcpHost, DhcpNetworkSpec, DhcpPort, DhcpSubnet
from drivers.dhcp import process as dhcp_process
from drivers.l3 import FloatingIp, L3Driver, RouterPort, RouterSpec
from drivers.model import NetworkSpec, PortSpec
from drivers.plug import plug
from drivers.sysctl import _enter_netns
from tests.support.dhcp_client import dhcp_lease, install_script
from tests.support.names import RUN_PREFIX
from tests.support.netns import NamespacePool
from tests.support.routing import (
    EXTERNAL_HOST,
    World,
    build_world,
    close_world,
    isolate_node,
    start_peer_server,
)

PORT = 7000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Prober:
    """From inside a namespace, retry TCP connects to every target until each has
    answered once; records when (perf_counter)."""

    def __init__(self, netns: str, targets: list[tuple[str, int]]) -> None:
        self.netns = netns
        self.done: dict[tuple[str, int], float] = {}
        self._targets = list(targets)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._body, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def _body(self) -> None:
        _enter_netns(self.netns)  # this thread only; it is never reused
        self._ready.set()
        pending = list(self._targets)
        while pending and not self._stop.is_set():
            for target in list(pending):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(0.02)  # a dropped SYN: retry with a new socket
                try:
                    s.connect(target)
                except OSError:
                    continue
                finally:
                    s.close()
                self.done[target] = time.perf_counter()
                pending.remove(target)

    async def wait(self, limit: float) -> None:
        await asyncio.to_thread(self._thread.join, limit)
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5)

    @property
    def all_done(self) -> bool:
        return len(self.done) == len(self._targets)


# -- 1. DHCP lease ---------------------------------------------------------------------


async def bench_leases(pool: NamespacePool, count: int, tmp: str) -> dict[str, list[float]]:
    world = await build_world(pool, 2)
    dhcp = DhcpDriver(pool.prefix + "dh-", world.node_ns("node1"), os.path.join(tmp, "state"))
    script = install_script(tmp)
    out: dict[str, list[float]] = {"lease": [], "udhcpc": [], "host_sync": []}
    try:
        net = world.tenant_network()
        dport = world.add_port(net, "node1", ("10.1.0.2",))
        spec = DhcpNetworkSpec(
            network_id=net.id,
            bridge=world.bridge(net),
            mtu=net.mtu,
            dhcp_port=DhcpPort(dport.id, dport.mac, ("10.1.0.2/16",)),
            subnets=(DhcpSubnet("10.1.0.0/16", "10.1.0.1", ("192.0.2.53",)),),
        )
        await world.sync_l2()
        await dhcp.start()
        await dhcp.sync([spec], remove_stale=True)
        await world.sync_l2()
        for i in range(count):
            ip = f"10.1.1.{i + 10}"
            port = world.add_port(net, "node2", (ip,))
            spec = replace(spec, hosts=(*spec.hosts, DhcpHost(port.mac, ip, f"vm-{i}")))
            t = time.perf_counter()
            await dhcp.sync([spec], remove_stale=True)
            out["host_sync"].append((time.perf_counter() - t) * 1000)
            ns = await pool.create(f"l{i}")
            t0 = time.perf_counter()
            await plug(port.id, port.mac, net.mtu, netns=ns, node_netns=world.node_ns("node2"))
            await world.sync_l2()
            lease = await dhcp_lease(pool, ns, script, os.path.join(tmp, f"lease-{i}"))
            total = (time.perf_counter() - t0) * 1000
            if lease is None or lease["ip"] != ip:
                raise RuntimeError(f"workload {i}: no lease ({lease})")
            out["lease"].append(total)
            out["udhcpc"].append(lease.seconds * 1000)
    finally:
        try:
            if dhcp.node_ipr_open:
                await dhcp.stop_all()
        finally:
            await dhcp.close()
            await close_world(world)
    return out


# -- 2. router failover ----------------------------------------------------------------


def _rport(world: World, net: NetworkSpec, spec: PortSpec, ip: str) -> RouterPort:
    return RouterPort(spec.id, net.id, spec.mac, (ip,), net.mtu, world.bridge(net))


async def bench_failover(pool: NamespacePool, rounds: int) -> dict[str, list[float]]:
    world = await build_world(pool, 3)
    l3s: dict[str, L3Driver] = {}
    out: dict[str, list[float]] = {"l2": [], "l3": [], "traffic": []}
    try:
        net_a, net_b, ext = world.tenant_network(), world.tenant_network(), world.external_network()
        qr_a = world.add_port(net_a, "node1", ("10.0.1.1",))
        qr_b = world.add_port(net_b, "node1", ("10.0.2.1",))
        qg = world.add_port(ext, "node1", ("203.0.113.2",))
        router_ports = [qr_a.id, qr_b.id, qg.id]
        workloads = []
        for i in range(5):
            net, gw, ip = (
                (net_a, "10.0.1.1", f"10.0.1.{11 + i}")
                if i < 3
                else (net_b, "10.0.2.1", f"10.0.2.{11 + i}")
            )
            w = await world.workload(net, "node3", ip, gateway=gw, sync=False)
            await start_peer_server(pool, w.ns, PORT, f"w{i}")
            workloads.append(w)
        router = RouterSpec(
            id="bench-router",
            interfaces=(
                _rport(world, net_a, qr_a, "10.0.1.1/24"),
                _rport(world, net_b, qr_b, "10.0.2.1/24"),
            ),
            gateway=_rport(world, ext, qg, "203.0.113.2/24"),
            gateway_nexthop=EXTERNAL_HOST,
            floating_ips=tuple(
                FloatingIp(f"203.0.113.{20 + i}", w.ip) for i, w in enumerate(workloads)
            ),
        )
        for node in ("node1", "node2"):
            l3s[node] = L3Driver(f"{pool.prefix}{node}-", world.node_ns(node))
            await l3s[node].start()
        await world.sync_l2()
        await l3s["node1"].sync([router], remove_stale=True)
        await world.sync_l2()
        targets_ext = [(f.floating_ip, PORT) for f in router.floating_ips]
        targets_in = [(workloads[4].ip, PORT)]  # A -> B through the router
        check = Prober(world.external_ns, targets_ext)
        check.start()
        await check.wait(5)
        if not check.all_done:
            raise RuntimeError("router not working before the first failover")

        active, standby = "node1", "node2"
        for _ in range(rounds):
            await isolate_node(world, active, True)  # the node hangs
            probes = [Prober(world.external_ns, targets_ext), Prober(workloads[0].ns, targets_in)]
            for p in probes:
                p.start()
            t0 = time.perf_counter()
            for port_id in router_ports:  # the controller rebinds the router's ports
                spec, _ = world.ports[port_id]
                world.ports[port_id] = (spec, standby)
            for node in (standby, "node3"):
                await world.l2[node].sync(world.desired(node), remove_stale=True)
            t1 = time.perf_counter()
            await l3s[standby].sync([router], remove_stale=True)
            await world.l2[standby].sync(world.desired(standby), remove_stale=True)
            t2 = time.perf_counter()
            for p in probes:
                await p.wait(10)
            if not all(p.all_done for p in probes):
                raise RuntimeError(f"traffic did not resume: {[p.done for p in probes]}")
            done = max(max(p.done.values()) for p in probes)
            out["l2"].append((t1 - t0) * 1000)
            out["l3"].append((t2 - t1) * 1000)
            out["traffic"].append((done - t0) * 1000)
            # The dead node comes back: its agent drops the router it no longer hosts.
            await l3s[active].sync([], remove_stale=True)
            await world.l2[active].sync(world.desired(active), remove_stale=True)
            await isolate_node(world, active, False)
            active, standby = standby, active
    finally:
        for driver in l3s.values():
            await driver.close()
        await close_world(world)
    return out


async def run_bench(leases: int, failovers: int) -> dict[str, list[float]]:
    pools = [NamespacePool("dhcpbench"), NamespacePool("l3bench")]
    tmp = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}bench-", dir="/tmp")
    os.chmod(tmp, 0o755)
    try:
        lease = await bench_leases(pools[0], leases, tmp)
        failover = await bench_failover(pools[1], failovers)
    finally:
        for pool in pools:
            await pool.cleanup()
        for root, _, files in os.walk(tmp):  # belt and braces: no dnsmasq left
            if "pid" in files:
                pid = dhcp_process.read_pid(os.path.join(root, "pid"))
                if pid is not None and dhcp_process.cmdline(pid) is not None:
                    await dhcp_process.stop(pid)
        shutil.rmtree(tmp, ignore_errors=True)
    return {**lease, **{f"failover_{k}": v for k, v in failover.items()}}


ROWS = [
    ("lease", "DHCP lease: plug -> address configured"),
    ("udhcpc", "  of which udhcpc (DISCOVER -> configured)"),
    ("host_sync", "DHCP host added (files + SIGHUP sync)"),
    ("failover_l2", "failover: L2 sync (new node + l2pop)"),
    ("failover_l3", "failover: router built (2 ifs, gw, 5 FIPs)"),
    ("failover_traffic", "failover: node lost -> all traffic flows"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=20)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--json", help="also write the raw figures (ms) here")
    args = parser.parse_args()
    results = asyncio.run(run_bench(args.leases, args.failovers))
    width = max(len(label) for _, label in ROWS)
    print(f"{'measure (ms)':<{width}}  {'n':>3}  {'p50':>7}  {'p90':>7}  {'max':>7}  {'mean':>7}")
    print("-" * (width + 42))
    for key, label in ROWS:
        values = results[key]
        print(
            f"{label:<{width}}  {len(values):>3}  {pct(values, 0.5):>7.1f}  "
            f"{pct(values, 0.9):>7.1f}  {max(values):>7.1f}  {statistics.fmean(values):>7.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
