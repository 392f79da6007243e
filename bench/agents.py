"""Baryon agent benchmark: port convergence with a real agent, and fan-out to 1,000 streams.

One run starts everything it measures and stops it by PID, even on error or SIGTERM
(bench/README.md, "bench/agents.py", says what each figure means):

1. **Convergence.** etcd + a controller process (bench.api's helpers), one node
   namespace (tests/support/netns.build_underlay) managed by a real ``baryon agent``
   process (linuxbridge, VXLAN tunnel IP on the node's underlay veth). Each port is
   created with ``binding_host_id`` = that node, and the workload is plugged right after
   CreatePort returns (a veth into a workload namespace, in this process, with
   ``drivers.plug.plug``: the port id names the tap, so it cannot be plugged before).
   The time is CreatePort call start -> status ACTIVE seen through the API, by a
   GetPort loop (1 ms apart) on a channel of its own. 200 ports one by one, then bursts
   of 200 (all created at once, plugged as their creates return; until all ACTIVE,
   seen by a ListPorts loop).
2. **Fan-out.** A fresh controller; N fake agents (bench/fake_agents.py, another
   process; one channel and TCP connection per stream) connect, then one port per fake
   host is bound on one shared flat network, all in one security group; then ~20
   security group rule creates, each of which every host gets as a Delta. Time from the
   API call to the last stream's receipt (CLOCK_MONOTONIC in both processes), and the
   controller's VmRSS per stream. The bare grpc.aio anchor
   (/work/shared/anchors/grpc_fanout.py) runs in the same run for the ratio.

Nothing is asserted. Run from the repository root, as root:

    .venv/bin/python -m bench.agents [--quick] [--json FILE] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(REPO))
# Names of the namespaces this run creates (tests/support/names.py reads it at import).
os.environ.setdefault("BARYON_TEST_RUN_PREFIX", f"bb{os.getpid() % 0xFFFF:04x}")

import grpc  # noqa: E402
from google.protobuf.field_mask_pb2 import FieldMask  # noqa: E402

from baryon.v1 import (  # noqa: E402
    agent_pb2,
    agent_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    port_pb2,
    port_pb2_grpc,
    security_group_pb2,
    security_group_pb2_grpc,
    subnet_pb2,
    subnet_pb2_grpc,
)
from bench.api import (  # noqa: E402
    RPC_TIMEOUT,
    TOKEN,
    ControllerProc,
    Processes,
    loadavg,
    machine_info,
    percentile,
    proc_cpu_s,
    pyspy_top,
    say,
    vm_kb,
)
from bench.fake_agents import TAG_BASE, raise_nofile  # noqa: E402
from drivers.netlink import RtnlDumper, avoid_forking_for_netns_sockets  # noqa: E402
from drivers.plug import plug  # noqa: E402
from tests.support.netns import NamespacePool, Node, build_underlay, list_run_namespaces  # noqa: E402

ANCHORS_DIR = Path("/work/shared/anchors")
ANCHOR_VENV_PY = Path.home() / ".cache" / "anchorbench" / "venv" / "bin" / "python"
ANCHORS_JSON = Path("/tmp/anchors.json")
NODE_HOST = "bench-node1"
POLL_GAP_S = 0.001
# Bursts poll ListPorts of the DOWN ports (200 at first, ~5 ms of controller CPU):
# every millisecond that kept a core of the controller busy answering the poller.
LIST_POLL_GAP_S = 0.005
ACTIVE_TIMEOUT_S = 15.0
PLUG_CONCURRENCY = 8
CHANNELS = 4

TARGETS = {
    "one_by_one_p50_ms": 15.0,
    "one_by_one_p99_ms": 50.0,
    "burst_all_active_ms": 400.0,
    "fanout_p99_over_bare_p99": 1.5,
    "fanout_kb_per_stream": 100.0,
}
# From /work/shared/anchors/README.md ("Numbers measured on 2026-11-25", this machine).
OVN_README = {
    "source": "anchor, measured earlier on this machine (/work/shared/anchors/README.md)",
    "lsp_to_up_p50_ms": 20.0,
    "lsp_to_up_p99_ms": 65.0,
    "burst_all_up_ms": "430-540",
}


# ----------------------------------------------------------------------------- processes


class BenchProcesses(Processes):
    """bench.api's Processes (etcd, controllers) plus the agent, the fake agents, the
    anchor, py-spy and the namespaces: all killed / removed by PID or name."""

    def __init__(self) -> None:
        super().__init__()
        self.children: list[int] = []
        self.ns_prefixes: list[str] = []

    def spawn(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        setpriv = shutil.which("setpriv")
        if setpriv:  # dies with us even if we are SIGKILLed
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=kw.pop("stdin", subprocess.DEVNULL),
                stdout=kw.pop("stdout", f),
                stderr=f,
                start_new_session=True,
                **kw,
            )
        self.children.append(proc.pid)
        return proc

    def kill_child(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
        if pid in self.children:
            self.children.remove(pid)

    def cleanup(self) -> None:
        for pid in list(self.children):
            self.kill_child(pid)
        for prefix in self.ns_prefixes:
            for name in list_run_namespaces(prefix):
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self.ns_prefixes.clear()
        super().cleanup()


# ----------------------------------------------------------------------------- API


class Api:
    def __init__(self, target: str) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(target, options=opts) for _ in range(CHANNELS)]
        # The status poller has a channel (TCP connection) of its own.
        self.poll_channel = grpc.aio.insecure_channel(target, options=opts)
        self.md = (("authorization", f"Bearer {TOKEN}"),)
        ch = self.channels[0]
        self.nets = network_pb2_grpc.NetworkServiceStub(ch)
        self.subnets = subnet_pb2_grpc.SubnetServiceStub(ch)
        self.sgs = security_group_pb2_grpc.SecurityGroupServiceStub(ch)
        self.agents = agent_pb2_grpc.AgentServiceStub(ch)
        self.ports = [port_pb2_grpc.PortServiceStub(c) for c in self.channels]
        self.poll = port_pb2_grpc.PortServiceStub(self.poll_channel)

    async def close(self) -> None:
        for c in [*self.channels, self.poll_channel]:
            await c.close()

    async def network(self, name: str, cidr: str, **fields: Any) -> network_pb2.Network:
        net = await self.nets.CreateNetwork(
            network_pb2.CreateNetworkRequest(network=network_pb2.Network(name=name, **fields)),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )
        await self.subnets.CreateSubnet(
            subnet_pb2.CreateSubnetRequest(
                subnet=subnet_pb2.Subnet(network_id=net.id, cidr=cidr, name=f"{name}-sub")
            ),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )
        return net

    async def create_port(self, i: int, **fields: Any) -> port_pb2.Port:
        return await self.ports[i % len(self.ports)].CreatePort(
            port_pb2.CreatePortRequest(port=port_pb2.Port(**fields)),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )

    async def delete_port(self, i: int, port_id: str) -> None:
        await self.ports[i % len(self.ports)].DeletePort(
            port_pb2.DeletePortRequest(id=port_id), metadata=self.md, timeout=RPC_TIMEOUT
        )

    async def wait_agent_alive(self, host: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = await self.agents.ListAgents(
                agent_pb2.ListAgentsRequest(host=host), metadata=self.md, timeout=RPC_TIMEOUT
            )
            if any(a.alive for a in resp.agents):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the agent of {host} did not come up in {timeout}s")

    async def wait_active(self, port_id: str, timeout: float = ACTIVE_TIMEOUT_S) -> float | None:
        """Monotonic time the port was first seen ACTIVE (GetPort, POLL_GAP_S apart)."""
        req = port_pb2.GetPortRequest(id=port_id)
        deadline = time.monotonic() + timeout
        while True:
            resp = await self.poll.GetPort(req, metadata=self.md, timeout=RPC_TIMEOUT)
            now = time.monotonic()
            if resp.status == "ACTIVE":
                return now
            if now > deadline:
                return None
            await asyncio.sleep(POLL_GAP_S)


async def concurrently(n: int, items: list[Any], fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(i: int, item: Any) -> Any:
        async with sem:
            return await fn(i, item)

    return list(await asyncio.gather(*(one(i, x) for i, x in enumerate(items))))


def summary(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50": round(percentile(s, 50), 2),
        "p90": round(percentile(s, 90), 2),
        "p99": round(percentile(s, 99), 2),
        "max": round(s[-1], 2) if s else 0.0,
        "min": round(s[0], 2) if s else 0.0,
    }


# ----------------------------------------------------------------------------- 1. convergence


@dataclass
class Node1:
    node: Node
    pool: NamespacePool
    agent_pid: int = 0
    plug_ms: list[float] = field(default_factory=list)


# Netlink sockets of the namespaces the benchmark plugs into, kept open across plugs
# as a compute host's plugging service would (plug(node_nl=, workload_nl=)). A
# namespace's socket is closed before the namespace is deleted: an open socket would
# keep the namespace, and its veths, alive.
_SOCKETS: dict[str, RtnlDumper] = {}


def _socket(ns: str) -> RtnlDumper:
    nl = _SOCKETS.get(ns)
    if nl is None:
        nl = _SOCKETS[ns] = RtnlDumper(ns)
    return nl


def _close_socket(ns: str) -> None:
    nl = _SOCKETS.pop(ns, None)
    if nl is not None:
        nl.close()


async def _plug(node: Node, wl: str, port: port_pb2.Port, mtu: int, ifname: str) -> float:
    t = time.monotonic()
    await plug(
        port.id,
        port.mac_address,
        mtu,
        netns=wl,
        ifname=ifname,
        node_netns=node.ns,
        node_nl=_socket(node.ns),
        workload_nl=_socket(wl),
    )
    return (time.monotonic() - t) * 1000


async def one_by_one(
    api: Api,
    node: Node,
    net: network_pb2.Network,
    wl: str,
    n: int,
    first: int,
    budget_s: float = 1e9,
) -> tuple[list[dict[str, float]], int]:
    rows: list[dict[str, float]] = []
    missed = 0
    stop_at = time.monotonic() + budget_s
    for k in range(n):
        if time.monotonic() > stop_at:
            say(f"one by one: time budget of {budget_s:.0f} s used up after {k} ports")
            break
        i = first + k
        t0 = time.monotonic()
        port = await api.create_port(i, network_id=net.id, name=f"c{i}", binding_host_id=NODE_HOST)
        t1 = time.monotonic()
        # Poll only once the workload is plugged: the port cannot be ACTIVE before its
        # device exists, and GetPort every millisecond from this process slowed the
        # plug itself down (3 ms alone, 8 ms with the poller interleaved).
        plug_ms = await _plug(node, wl, port, net.mtu, f"w{i}")
        t2 = time.monotonic()
        t3 = await api.wait_active(port.id)
        if t3 is None:
            missed += 1
            continue
        rows.append(
            {
                "create_to_active_ms": (t3 - t0) * 1000,
                "create_rpc_ms": (t1 - t0) * 1000,
                "plug_ms": plug_ms,
                "plugged_to_active_ms": (t3 - t2) * 1000,
            }
        )
    return rows, missed


async def poll_active(
    api: Api,
    net_id: str,
    known: Callable[[], Iterable[str]],
    n: int,
    active_at: dict[str, float],
    deadline: float,
    each: bool = True,
) -> None:
    """Note when each known port of the network stops being DOWN, until n have: the
    poll lists only the DOWN ports (the list shrinks as they come up, so the poller
    costs the controller little), then one full list checks they are ACTIVE.
    each=False: only the time the last one did matters, so each poll asks for one DOWN
    port (page_size 1): nearly free for the controller."""
    size = 1000 if each else 1
    req = port_pb2.ListPortsRequest(network_id=net_id, status="DOWN", page_size=size)
    while time.monotonic() < deadline and len(active_at) < n:
        resp = await api.poll.ListPorts(req, metadata=api.md, timeout=RPC_TIMEOUT)
        now = time.monotonic()
        down = {p.id for p in resp.ports}
        if not each and down:
            await asyncio.sleep(LIST_POLL_GAP_S)
            continue
        for port_id in known():
            if port_id not in down and port_id not in active_at:
                active_at[port_id] = now
        if len(active_at) < n:
            await asyncio.sleep(LIST_POLL_GAP_S)
    full = port_pb2.ListPortsRequest(network_id=net_id, page_size=1000)
    resp = await api.poll.ListPorts(full, metadata=api.md, timeout=RPC_TIMEOUT)
    for p in resp.ports:
        if p.status != "ACTIVE":
            active_at.pop(p.id, None)  # ERROR, say: not up


async def burst(
    api: Api, node: Node, pool: NamespacePool, n: int, tag: str, cidr: str
) -> dict[str, Any]:
    net = await api.network(f"burst-{tag}", cidr)
    wl = await pool.create(f"wlb{tag}")
    created: dict[str, float] = {}
    active_at: dict[str, float] = {}
    plug_sem = asyncio.Semaphore(PLUG_CONCURRENCY)
    plug_done: list[float] = []
    t0 = time.monotonic()

    async def one(i: int) -> str:
        port = await api.create_port(
            i, network_id=net.id, name=f"b{tag}-{i}", binding_host_id=NODE_HOST
        )
        created[port.id] = time.monotonic()
        async with plug_sem:
            await _plug(node, wl, port, net.mtu, f"b{i}")
        plug_done.append(time.monotonic())
        return str(port.id)

    poll_task = asyncio.create_task(
        poll_active(api, net.id, created.keys, n, active_at, t0 + ACTIVE_TIMEOUT_S)
    )
    ids = await asyncio.gather(*(one(i) for i in range(n)))
    await poll_task
    out: dict[str, Any] = {"ports": n, "active": len(active_at)}
    if len(active_at) >= n:
        last = max(active_at.values())
        out["all_active_ms"] = round((last - t0) * 1000, 1)
        out["all_created_ms"] = round((max(created.values()) - t0) * 1000, 1)
        out["all_plugged_ms"] = round((max(plug_done) - t0) * 1000, 1)
        out["plugged_to_all_active_ms"] = round((last - max(plug_done)) * 1000, 1)
        out["first_active_ms"] = round((min(active_at.values()) - t0) * 1000, 1)
    out["_ids"] = ids
    out["_wl"] = wl
    return out


async def burst_bind_plugged(
    api: Api,
    node: Node,
    pool: NamespacePool,
    n: int,
    tag: str,
    cidr: str,
    profile: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """The OVN burst's shape: ports and veths exist first (untimed); then all n ports are
    bound to the node at once (UpdatePort binding_host_id), until all are ACTIVE."""
    net = await api.network(f"bind-{tag}", cidr)
    wl = await pool.create(f"wlp{tag}")

    async def make(i: int, _: Any) -> port_pb2.Port:
        port = await api.create_port(i, network_id=net.id, name=f"p{tag}-{i}")
        await _plug(node, wl, port, net.mtu, f"p{i}")
        return port

    ports = await concurrently(PLUG_CONCURRENCY, [None] * n, make)
    await asyncio.sleep(0.5)
    active_at: dict[str, float] = {}
    mask = FieldMask(paths=["binding_host_id"])
    profiler = profile() if profile is not None else None
    t0 = time.monotonic()

    async def bind(i: int, port: port_pb2.Port) -> None:
        await api.ports[i % len(api.ports)].UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=port.id, binding_host_id=NODE_HOST), update_mask=mask
            ),
            metadata=api.md,
            timeout=RPC_TIMEOUT,
        )

    ids = [p.id for p in ports]
    poll_task = asyncio.create_task(
        poll_active(api, net.id, lambda: ids, n, active_at, t0 + ACTIVE_TIMEOUT_S, each=False)
    )
    await asyncio.gather(*(bind(i, p) for i, p in enumerate(ports)))
    t_bound = time.monotonic()
    await poll_task
    out: dict[str, Any] = {"ports": n, "active": len(active_at)}
    if profiler is not None:
        out["_profiler"] = profiler
    if len(active_at) >= n:
        out["all_active_ms"] = round((max(active_at.values()) - t0) * 1000, 1)
        out["all_bind_calls_ms"] = round((t_bound - t0) * 1000, 1)
    await concurrently(16, [p.id for p in ports], lambda i, pid: api.delete_port(i, pid))
    await _ns_del(wl)
    return out


async def convergence(args: argparse.Namespace, procs: BenchProcesses, rep: dict[str, Any]) -> None:
    ctl = procs.start_controller("/bench-conv/")
    await ctl.wait_ready()
    pool = NamespacePool("bn")
    procs.ns_prefixes.append(pool.prefix)
    api = Api(ctl.target)
    try:
        underlay = await build_underlay(pool, 1)
        node = underlay.nodes[0]
        argv = [sys.executable, "-m", "cli.main", "agent", "--controller", ctl.target]
        argv += ["--host", NODE_HOST, "--token", TOKEN, "--netns", node.ns]
        argv += ["--tunnel-ip", node.tunnel_ip, "--poll-interval", str(args.agent_poll_interval)]
        # Convergence of the L2 wiring alone (the figures in bench/README.md are without
        # the firewall; drop this to measure the default, which enforces security groups).
        level = "DEBUG" if args.agent_log else "WARNING"
        argv += ["--log-level", level, "--firewall", "none"]
        agent_log = args.agent_log or procs.workdir / "agent.log"
        agent = procs.spawn(argv, agent_log)
        await api.wait_agent_alive(NODE_HOST)
        say(f"agent up (pid {agent.pid}, netns {node.ns}); one by one: {args.ports} ports ...")
        net = await api.network("conv", "10.1.0.0/16")
        wl = await pool.create("wl1")
        # Warm-up (not counted): the first port also creates the bridge and VXLAN device.
        await one_by_one(api, node, net, wl, 5, 0)
        profiler = start_pyspy(procs, args, agent.pid, "agent-one-by-one")
        cpu0 = {"agent": proc_cpu_s(agent.pid), "controller": proc_cpu_s(ctl.pid)}
        t = time.monotonic()
        rows, missed = await one_by_one(api, node, net, wl, args.ports, 5, args.budget)
        wall = time.monotonic() - t
        cpu1 = {"agent": proc_cpu_s(agent.pid), "controller": proc_cpu_s(ctl.pid)}
        obo: dict[str, Any] = {
            "ports": args.ports,
            "measured": len(rows),
            "timed_out": missed,
            "seconds": round(wall, 1),
            "agent_poll_interval_s": args.agent_poll_interval,
        }
        for key in ("create_to_active_ms", "create_rpc_ms", "plug_ms", "plugged_to_active_ms"):
            obo[key] = summary([r[key] for r in rows])
        q = max(len(rows) // 4, 1)
        obo["first_quarter_p50_ms"] = summary([r["create_to_active_ms"] for r in rows[:q]])["p50"]
        obo["last_quarter_p50_ms"] = summary([r["create_to_active_ms"] for r in rows[-q:]])["p50"]
        obo["cpu_ms_per_port"] = {
            k: round(sum(cpu1[k]) * 1000 - sum(cpu0[k]) * 1000, 1) / max(args.ports, 1)
            for k in cpu0
        }
        rep["one_by_one"] = obo
        if profiler is not None:
            rep.setdefault("profiles", {})["agent_one_by_one"] = await stop_pyspy(
                procs, profiler, max(args.ports, 1)
            )

        # Empty the node (like the OVN burst's empty chassis): delete the ports, and the
        # workload namespace, which removes their veths in one batch.
        ids = [p.id for p in (await list_ports(api, net.id))]
        await concurrently(16, ids, lambda i, pid: api.delete_port(i, pid))
        await _ns_del(wl)
        await asyncio.sleep(max(1.5 * args.agent_poll_interval, 0.5))
        bursts = []
        for b in range(0 if args.no_bursts else args.bursts):
            say(f"burst {b + 1}/{args.bursts}: {args.burst} ports at once ...")
            res = await burst(api, node, pool, args.burst, str(b), f"10.{10 + b}.0.0/16")
            ids = res.pop("_ids")
            wl_b = res.pop("_wl")
            bursts.append(res)
            await concurrently(16, ids, lambda i, pid: api.delete_port(i, pid))
            await _ns_del(wl_b)
            await asyncio.sleep(max(1.5 * args.agent_poll_interval, 0.5))
        say(f"bind burst: {args.burst} ports created and plugged first, then bound at once ...")
        rep["bind_burst"] = await burst_bind_plugged(
            api,
            node,
            pool,
            args.burst,
            "0",
            "10.30.0.0/16",
            lambda: start_pyspy(procs, args, ctl.pid, "controller-bind-burst"),
        )
        prof = rep["bind_burst"].pop("_profiler", None)
        if prof is not None:
            rep.setdefault("profiles", {})["controller_bind_burst"] = await stop_pyspy(
                procs, prof, args.burst
            )
        done = [b["all_active_ms"] for b in bursts if "all_active_ms" in b]
        rep["burst"] = {
            "runs": bursts,
            "all_active_ms_median": round(sorted(done)[len(done) // 2], 1) if done else None,
        }
        procs.kill_child(agent.pid)
    finally:
        await api.close()
        for ns in list(_SOCKETS):
            _close_socket(ns)
        await pool.cleanup()
        ctl.stop(grace=5.0)


async def list_ports(api: Api, net_id: str) -> list[port_pb2.Port]:
    out: list[port_pb2.Port] = []
    token = ""
    while True:
        resp = await api.ports[0].ListPorts(
            port_pb2.ListPortsRequest(network_id=net_id, page_size=1000, page_token=token),
            metadata=api.md,
            timeout=RPC_TIMEOUT,
        )
        out.extend(resp.ports)
        token = resp.next_page_token
        if not token:
            return out


async def _ns_del(name: str) -> None:
    _close_socket(name)
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "del", name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await proc.wait()


# ----------------------------------------------------------------------------- 2. fan-out


class FakeFleet:
    """The fake-agent process and the events it prints (bench/fake_agents.py)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.connected = asyncio.Event()
        self.connect_s = 0.0
        self.ports = asyncio.Event()
        self.tags: dict[int, tuple[int, int, int]] = {}
        self.tag_events: dict[int, asyncio.Event] = {}
        self.errors: list[str] = []
        self.reader = asyncio.create_task(self._read())

    def tag_event(self, k: int) -> asyncio.Event:
        return self.tag_events.setdefault(k, asyncio.Event())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            parts = line.decode().split()
            if not parts:
                continue
            if parts[0] == "CONNECTED":
                self.connect_s = float(parts[2])
                self.connected.set()
            elif parts[0] == "PORTS":
                self.ports.set()
            elif parts[0] == "TAG":
                k = int(parts[1])
                self.tags[k] = (int(parts[2]), int(parts[3]), int(parts[4]))
                self.tag_event(k).set()
            elif parts[0] == "ERR":
                self.errors.append(" ".join(parts[1:]))

    async def stop(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.write(b"quit\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 8)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        self.reader.cancel()


async def fanout(args: argparse.Namespace, procs: BenchProcesses, rep: dict[str, Any]) -> None:
    ctl: ControllerProc = procs.start_controller("/bench-fan/")
    await ctl.wait_ready()
    api = Api(ctl.target)
    fleet: FakeFleet | None = None
    out: dict[str, Any] = {"streams": args.streams}
    rep["fanout"] = out
    try:
        net = await api.network(
            "fan",
            "10.200.0.0/16",
            provider_network_type="flat",
            provider_physical_network="physnet1",
        )
        sg = await api.sgs.CreateSecurityGroup(
            security_group_pb2.CreateSecurityGroupRequest(
                security_group=security_group_pb2.SecurityGroup(name="bench-fanout")
            ),
            metadata=api.md,
            timeout=RPC_TIMEOUT,
        )
        await asyncio.sleep(1.0)
        rss_before = vm_kb(ctl.pid)
        say(f"fan-out: connecting {args.streams} fake agent streams ...")
        argv = [sys.executable, "-m", "bench.fake_agents", "--target", ctl.target]
        argv += ["--token", TOKEN, "--hosts", str(args.streams), "--prefix", "fan"]
        if args.no_ack:
            argv.append("--no-ack")
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        log = open(procs.workdir / "fake_agents.log", "ab")  # noqa: ASYNC230
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        procs.children.append(proc.pid)
        fleet = FakeFleet(proc)
        await asyncio.wait_for(fleet.connected.wait(), 90)
        out["connect_all_s"] = fleet.connect_s
        await asyncio.sleep(2.0)  # let session set-up (records, leases) settle
        rss_connected = vm_kb(ctl.pid)
        # What holding the streams costs with nothing changing (lease keepalives, pings).
        c0 = sum(proc_cpu_s(ctl.pid))
        await asyncio.sleep(2.0)
        out["controller_idle_cores"] = round((sum(proc_cpu_s(ctl.pid)) - c0) / 2.0, 2)
        say(f"fan-out: {args.streams} connected in {fleet.connect_s:.1f} s; binding ports ...")
        t = time.monotonic()

        async def bind(i: int, _: Any) -> None:
            await api.create_port(
                i,
                network_id=net.id,
                name=f"fan{i}",
                binding_host_id=f"fan{i:04d}",
                security_groups=port_pb2.SecurityGroupIdList(ids=[sg.id]),
            )

        await concurrently(32, list(range(args.streams)), bind)
        out["bind_ports_s"] = round(time.monotonic() - t, 2)
        await asyncio.wait_for(fleet.ports.wait(), 90)
        out["bind_ports_until_all_streams_have_them_s"] = round(time.monotonic() - t, 2)
        await asyncio.sleep(1.0)
        rss_ports = vm_kb(ctl.pid)
        say(f"fan-out: ports bound in {out['bind_ports_s']} s; {args.changes} changes ...")
        profiler = start_pyspy(procs, args, ctl.pid, "controller-fanout")
        all_ms: list[float] = []
        med_ms: list[float] = []
        first_ms: list[float] = []
        api_ms: list[float] = []
        cpu_s = 0.0
        warm = 2
        for k in range(warm + args.changes):
            tag = TAG_BASE + k
            ev = fleet.tag_event(tag)
            c0 = sum(proc_cpu_s(ctl.pid))
            t0 = time.monotonic_ns()
            await api.sgs.CreateSecurityGroupRule(
                security_group_pb2.CreateSecurityGroupRuleRequest(
                    security_group_rule=security_group_pb2.SecurityGroupRule(
                        security_group_id=sg.id,
                        direction="ingress",
                        protocol="tcp",
                        port_range_min=tag,
                        port_range_max=tag,
                    )
                ),
                metadata=api.md,
                timeout=RPC_TIMEOUT,
            )
            t1 = time.monotonic_ns()
            await asyncio.wait_for(ev.wait(), 60)
            c1 = sum(proc_cpu_s(ctl.pid))
            first, median, last = fleet.tags[tag]
            if k >= warm:
                all_ms.append((last - t0) / 1e6)
                med_ms.append((median - t0) / 1e6)
                first_ms.append((first - t0) / 1e6)
                api_ms.append((t1 - t0) / 1e6)
                cpu_s += c1 - c0
            await asyncio.sleep(args.change_interval)
        if profiler is not None:
            rep.setdefault("profiles", {})["controller_fanout"] = await stop_pyspy(
                procs, profiler, max(args.changes, 1)
            )
        out["changes"] = args.changes
        out["all_received_ms"] = summary(all_ms)
        out["median_stream_received_ms"] = summary(med_ms)
        out["first_stream_received_ms"] = summary(first_ms)
        out["api_call_ms"] = summary(api_ms)
        out["controller_cpu_us_per_delivery"] = round(
            cpu_s * 1e6 / max(args.changes * args.streams, 1), 1
        )
        out["controller_rss_mb"] = {
            "before_streams": round(rss_before / 1024, 1),
            "streams_connected": round(rss_connected / 1024, 1),
            "ports_bound": round(rss_ports / 1024, 1),
            "end": round(vm_kb(ctl.pid) / 1024, 1),
        }
        out["kb_per_stream"] = round((rss_connected - rss_before) / args.streams, 1)
        out["kb_per_stream_with_port"] = round((rss_ports - rss_before) / args.streams, 1)
        out["stream_errors"] = len(fleet.errors)
        out["stream_error_samples"] = fleet.errors[:5]
    finally:
        if fleet is not None:
            await fleet.stop()
            procs.children = [p for p in procs.children if p != fleet.proc.pid]
        await api.close()
        ctl.stop(grace=5.0)


# ----------------------------------------------------------------------------- anchors


async def grpc_anchor(args: argparse.Namespace, procs: BenchProcesses) -> dict[str, Any]:
    """The bare grpc.aio fan-out anchor, run now (same N, same number of pushes)."""
    script = ANCHORS_DIR / "grpc_fanout.py"
    python = str(ANCHOR_VENV_PY) if ANCHOR_VENV_PY.exists() else sys.executable
    if not script.exists():
        return {"error": f"{script} not found"}
    out_file = procs.workdir / "grpc_anchor.json"
    argv = [python, str(script), "--streams", str(args.streams), "--pushes", str(args.changes)]
    argv += ["--json", str(out_file)]
    say(f"bare grpc.aio anchor: {args.streams} streams, {args.changes} pushes ...")
    proc = procs.spawn(argv, procs.workdir / "grpc_anchor.log")
    try:
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 120)
    except TimeoutError:
        procs.kill_child(proc.pid)
        return {"error": "timed out"}
    if proc.pid in procs.children:
        procs.children.remove(proc.pid)
    try:
        data = json.loads(out_file.read_text())
        res = data["results"][0]
    except (OSError, ValueError, KeyError, IndexError) as err:
        log = (procs.workdir / "grpc_anchor.log").read_text(errors="replace")[-800:]
        return {"error": f"{err!r}: {log}"}
    return {
        "python": python,
        "streams": res["streams"],
        "all_received_ms": res["all_received_ms"],
        "median_stream_received_ms": res["median_stream_received_ms"],
        "server_rss_per_stream_kb": res["server_rss_per_stream_kb"],
        "server_cpu_us_per_delivery": res["server_cpu_us_per_delivery"],
        "connect_all_s": res["connect_all_s"],
    }


def ovn_anchor() -> dict[str, Any]:
    """OVN figures: /tmp/anchors.json when it has a successful ovn run, else the README's."""
    try:
        data = json.loads(ANCHORS_JSON.read_text())
        s = data["summary"]
        return {
            "source": f"{ANCHORS_JSON} (anchor run on this machine)",
            "lsp_to_up_p50_ms": s["ovn.port_up.lsp_to_up_p50_ms"]["median"],
            "lsp_to_up_p99_ms": s["ovn.port_up.lsp_to_up_p99_ms"]["median"],
            "burst_all_up_ms": s["ovn.burst.all_up_ms"]["median"],
        }
    except (OSError, ValueError, KeyError, TypeError):
        return dict(OVN_README)


# ----------------------------------------------------------------------------- profiling


def start_pyspy(
    procs: BenchProcesses, args: argparse.Namespace, pid: int, what: str
) -> tuple[subprocess.Popen[bytes], Path] | None:
    if not args.profile:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(tempfile.gettempdir()) / f"baryon-{what}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    argv = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    argv += ["--output", str(out), "--nonblocking"]
    proc = procs.spawn(argv, procs.workdir / f"pyspy-{what}.log")
    time.sleep(0.3)  # let it attach
    return proc, out


async def stop_pyspy(
    procs: BenchProcesses, prof: tuple[subprocess.Popen[bytes], Path], ops: int
) -> dict[str, Any]:
    proc, out = prof
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
    except TimeoutError:
        procs.kill_child(proc.pid)
    if proc.pid in procs.children:
        procs.children.remove(proc.pid)
    if not out.exists():
        return {"error": "py-spy wrote no file"}
    res = pyspy_top(out, ops, top=20)
    res["note"] = "py-spy thread time per operation (us/op = per port or per change)"
    return res


# ----------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, procs: BenchProcesses, rep: dict[str, Any]) -> None:
    if args.phase in ("all", "convergence"):
        await convergence(args, procs, rep)
    if args.phase in ("all", "fanout"):
        await fanout(args, procs, rep)
        rep["grpc_anchor"] = await grpc_anchor(args, procs)


def _f(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nBaryon agent benchmark  {r['started']}  ({m['cpus']} CPU {m['cpu_model']}, "
        f"python {m['python']}, grpcio {m['grpcio']}, etcd {m['etcd']})"
    )
    print(
        f"load: loadavg before {m['loadavg_before']}  after {r.get('loadavg_after')}  "
        f"cpu busy before start {m['cpu_busy_pct_before']}%   wall {r.get('wall_s')} s"
    )
    ovn = r["ovn_anchor"]
    rows: list[tuple[str, str, str, str]] = []
    obo = r.get("one_by_one")
    if obo:
        c = obo["create_to_active_ms"]
        rows.append(
            (
                f"CreatePort -> ACTIVE, one by one ({c['n']})  p50",
                _f(c["p50"]),
                "<= 15",
                f"OVN ~{ovn['lsp_to_up_p50_ms']}",
            )
        )
        rows.append(("  p99", _f(c["p99"]), "<= 50", f"OVN ~{ovn['lsp_to_up_p99_ms']}"))
        rows.append(("  max", _f(c["max"]), "", ""))
        rows.append(
            (
                "  p50 first / last quarter",
                f"{_f(obo['first_quarter_p50_ms'])} / {_f(obo['last_quarter_p50_ms'])}",
                "",
                "OVN ~10-14 / ~26-38",
            )
        )
        for key, label in (
            ("create_rpc_ms", "  CreatePort RPC p50/p99"),
            ("plug_ms", "  plug (veth, in-process) p50/p99"),
            ("plugged_to_active_ms", "  plugged -> ACTIVE p50/p99"),
        ):
            rows.append((label, f"{_f(obo[key]['p50'])} / {_f(obo[key]['p99'])}", "", ""))
        cpu = obo["cpu_ms_per_port"]
        rows.append(
            (
                "  CPU ms/port agent / controller (+polls)",
                f"{_f(cpu['agent'], '.2f')} / {_f(cpu['controller'], '.2f')}",
                "",
                "",
            )
        )
        if obo["timed_out"]:
            rows.append(("  not ACTIVE within 15 s", str(obo["timed_out"]), "", ""))
    b = r.get("burst")
    if b:
        for i, run_ in enumerate(b["runs"]):
            rows.append(
                (
                    f"burst {run_['ports']} CreatePort+plug #{i + 1}: all ACTIVE",
                    _f(run_.get("all_active_ms")),
                    "<= 400",
                    f"OVN {ovn['burst_all_up_ms']}",
                )
            )
            rows.append(
                (
                    "  created / plugged / 1st ACTIVE / plugged->all",
                    f"{_f(run_.get('all_created_ms'), '.0f')} / "
                    f"{_f(run_.get('all_plugged_ms'), '.0f')} / "
                    f"{_f(run_.get('first_active_ms'), '.0f')} / "
                    f"{_f(run_.get('plugged_to_all_active_ms'), '.0f')}",
                    "",
                    "",
                )
            )
        rows.append(("CreatePort+plug burst, median", _f(b["all_active_ms_median"]), "<= 400", ""))
    bb = r.get("bind_burst")
    if bb:
        rows.append(
            (
                f"burst {bb['ports']} bound at once (OVN's shape): all ACTIVE",
                _f(bb.get("all_active_ms")),
                "<= 400",
                f"OVN {ovn['burst_all_up_ms']}",
            )
        )
    f = r.get("fanout")
    g = r.get("grpc_anchor", {})
    if f and "all_received_ms" in f:
        a = f["all_received_ms"]
        n = f["streams"]
        gp = g.get("all_received_ms", {}) if "error" not in g else {}
        rows.append(
            (
                f"fan-out to {n} streams, last received p50",
                _f(a["p50"]),
                "",
                f"bare grpc {_f(gp.get('p50'))}",
            )
        )
        ratio = a["p99"] / gp["p99"] if gp.get("p99") else None
        rows.append(
            (
                "  last received p99 (ratio to bare)",
                f"{_f(a['p99'])} ({_f(ratio, '.2f')}x)",
                "<= 1.5x bare",
                f"bare grpc {_f(gp.get('p99'))}",
            )
        )
        rows.append(
            (
                "  median stream p50 / API call p50",
                f"{_f(f['median_stream_received_ms']['p50'])} / {_f(f['api_call_ms']['p50'])}",
                "",
                f"bare {_f(g.get('median_stream_received_ms', {}).get('p50'))}",
            )
        )
        rows.append(
            (
                "  controller KB per stream",
                _f(f["kb_per_stream"]),
                "<= 100",
                f"bare grpc {_f(g.get('server_rss_per_stream_kb'))}",
            )
        )
        rows.append(
            ("  KB per stream incl. its bound port", _f(f["kb_per_stream_with_port"]), "", "")
        )
        rows.append(
            (
                "  controller CPU us per delivery",
                _f(f["controller_cpu_us_per_delivery"]),
                "",
                f"bare grpc {_f(g.get('server_cpu_us_per_delivery'))}",
            )
        )
        rows.append(
            (
                "  connect all / bind 1 port per host (s)",
                f"{_f(f['connect_all_s'])} / {_f(f['bind_ports_s'])}",
                "",
                f"bare connect {_f(g.get('connect_all_s'))}",
            )
        )
        rows.append(
            ("  controller cores busy, streams idle", _f(f.get("controller_idle_cores")), "", "")
        )
        if f.get("stream_errors"):
            rows.append(("  stream errors", str(f["stream_errors"]), "", ""))
    if r.get("grpc_anchor", {}).get("error"):
        rows.append(("bare grpc anchor", "error: " + r["grpc_anchor"]["error"][:60], "", ""))
    print()
    print(f"{'figure (ms unless noted)':<46} {'measured':>18}   {'target':<13} comparison")
    print(f"{'-' * 46} {'-' * 18}   {'-' * 13} {'-' * 24}")
    for a_, b_, c_, d_ in rows:
        print(f"{a_:<46} {b_:>18}   {c_:<13} {d_}")
    print(
        f"\nOVN figures: {ovn['source']}. Bare grpc: {ANCHORS_DIR / 'grpc_fanout.py'} run now "
        f"({g.get('python', '-')}); its time starts at the server's enqueue, ours at the API call."
    )
    for name, prof in r.get("profiles", {}).items():
        if "by_self" not in prof:
            print(f"\nprofile {name}: {prof}")
            continue
        print(f"\nprofile {name} ({prof['file']}, {prof['samples']} samples, {prof['note']}):")
        print(f"  {'%':>6} {'us/op':>9}  inclusive")
        for row in prof["by_cumulative"][:14]:
            print(f"  {row['pct']:6.1f} {row['us_per_port']:9.1f}  {row['function']}")
        print(f"  {'%':>6} {'us/op':>9}  self")
        for row in prof["by_self"][:12]:
            print(f"  {row['pct']:6.1f} {row['us_per_port']:9.1f}  {row['function']}")
    if r.get("error"):
        print(f"\nERROR: {r['error']}")
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.agents", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small numbers (< 60 s)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to FILE")
    p.add_argument("--ports", type=int, default=None, help="ports one by one (200; quick 20)")
    p.add_argument("--burst", type=int, default=200, help="ports per burst (200)")
    p.add_argument("--bursts", type=int, default=None, help="bursts (3; quick 1)")
    p.add_argument("--streams", type=int, default=None, help="fake agents (1000; quick 300)")
    p.add_argument("--changes", type=int, default=None, help="timed changes (20; quick 10)")
    p.add_argument("--change-interval", type=float, default=0.1, metavar="S")
    p.add_argument(
        "--agent-poll-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="the real agent's --poll-interval (its default, 1.0)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="S",
        help="time budget of the one-by-one phase (100 s; quick 15 s)",
    )
    p.add_argument(
        "--no-ack", action="store_true", help="fake agents do not ack (to see what acks cost)"
    )
    p.add_argument("--phase", choices=("all", "convergence", "fanout"), default="all")
    p.add_argument("--no-bursts", action="store_true", help="skip the create+plug bursts")
    p.add_argument(
        "--agent-log", type=Path, default=None, help="keep the real agent's DEBUG log in FILE"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the agent during one-by-one and the controller during the fan-out",
    )
    args = p.parse_args(argv)
    if args.ports is None:
        args.ports = 20 if args.quick else 200
    if args.budget is None:
        args.budget = 15.0 if args.quick else 100.0
    if args.bursts is None:
        args.bursts = 1 if args.quick else 3
    if args.streams is None:
        args.streams = 300 if args.quick else 1000
    if args.changes is None:
        args.changes = 10 if args.quick else 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rep: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "targets": TARGETS,
        "ovn_anchor": ovn_anchor(),
    }
    if os.geteuid() != 0:
        print("bench.agents needs root (network namespaces)", file=sys.stderr)
        return 2
    raise_nofile()  # inherited by the controller: 1,000 agent connections
    avoid_forking_for_netns_sockets()  # this process holds grpc objects: never fork
    # SIGTERM: unwind like Ctrl-C so every child is killed by PID.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    procs = BenchProcesses()
    t0 = time.monotonic()
    code = 0
    try:
        say("starting etcd ...")
        procs.start_etcd()
        asyncio.run(run(args, procs, rep))
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    except Exception as err:  # report what we have, then fail
        say(f"error: {err!r}")
        rep["error"] = repr(err)
        code = 1
    finally:
        procs.cleanup()
    rep["loadavg_after"] = loadavg()
    rep["wall_s"] = round(time.monotonic() - t0, 1)
    print_report(rep)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
        say(f"JSON written to {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
