"""Network namespace fixtures for dataplane tests: uniquely named namespaces, an
underlay joining "node" namespaces, processes started inside namespaces, and a
cleanup that removes all of it (processes by PID, namespaces by name) even when a
test fails.

Safety: nothing here touches the root namespace. Every namespace name starts with
RUN_PREFIX (tests/support/names.py, unique per test run); underlay addresses are
192.0.2.0/24 and live only inside the node namespaces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.names import RUN_PREFIX, unique

NETNS_DIR = "/run/netns"
UNDERLAY_NET = "192.0.2"  # /24, documentation range; node i gets .i (i >= 1)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandError(Exception):
    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(f"{' '.join(result.argv)} -> {result.returncode}: {result.stderr.strip()}")


async def run(*argv: str, check: bool = True, time_limit: float = 15.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    result = Result(tuple(argv), proc.returncode or 0, out.decode(), err.decode())
    if check and not result.ok:
        raise CommandError(result)
    return result


async def ns_run(ns: str, *argv: str, check: bool = True, time_limit: float = 15.0) -> Result:
    return await run("ip", "netns", "exec", ns, *argv, check=check, time_limit=time_limit)


def list_run_namespaces(prefix: str = RUN_PREFIX) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


class NamespacePool:
    """Creates namespaces named <RUN_PREFIX><tag>_<n>-<role>, starts processes in them,
    and removes everything in cleanup()."""

    def __init__(self, tag: str) -> None:
        self.prefix = unique(tag) + "-"
        self.namespaces: list[str] = []
        self.processes: list[asyncio.subprocess.Process] = []

    async def create(self, role: str) -> str:
        name = self.prefix + role
        await run("ip", "netns", "add", name)
        self.namespaces.append(name)
        await run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    async def spawn(self, ns: str, *argv: str) -> asyncio.subprocess.Process:
        """Start argv inside ns (ip netns exec execs it: same PID), tracked for cleanup."""
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            ns,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.processes.append(proc)
        return proc

    async def cleanup(self) -> None:
        for proc in self.processes:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
        self.processes.clear()
        for name in reversed(self.namespaces):
            await run("ip", "netns", "del", name, check=False)
        self.namespaces.clear()
        # Anything else created under this pool's prefix (by code under test).
        for name in list_run_namespaces(self.prefix):
            await run("ip", "netns", "del", name, check=False)


@dataclass
class Node:
    """A "host": a namespace with eth0 on the underlay (tunnel_ip) and optionally
    eth1 on a second, "physical" L2 segment (for flat/vlan provider networks)."""

    name: str
    ns: str
    tunnel_ip: str
    physical_interfaces: dict[str, str] = field(default_factory=dict)


@dataclass
class Underlay:
    ns: str
    nodes: list[Node]


async def _ip(ns: str, *argv: str) -> None:
    await run("ip", "-n", ns, *argv)


async def _ipv6_off(ns: str, devices: Sequence[str]) -> None:
    args = [f"net.ipv6.conf.{d}.disable_ipv6=1" for d in devices]
    await ns_run(ns, "sysctl", "-q", "-w", *args)


async def build_underlay(pool: NamespacePool, count: int, *, physnet: bool = False) -> Underlay:
    """`count` node namespaces joined by a bridge in an underlay namespace.

    Node i (1-based) has eth0 = 192.0.2.i/24; with physnet=True also eth1 (left down,
    no address) on a separate bridge, to be mapped as physical network "physnet1".
    """
    ul = await pool.create("underlay")
    await _ip(ul, "link", "add", "ul0", "type", "bridge")
    await _ip(ul, "link", "add", "ph0", "type", "bridge")
    await _ipv6_off(ul, ["ul0", "ph0"])
    await _ip(ul, "link", "set", "ul0", "up")
    await _ip(ul, "link", "set", "ph0", "up")
    nodes: list[Node] = []
    for i in range(1, count + 1):
        ns = await pool.create(f"node{i}")
        await _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"u{i}", "netns", ul)
        await _ipv6_off(ns, ["eth0"])
        await _ip(ns, "addr", "add", f"{UNDERLAY_NET}.{i}/24", "dev", "eth0")
        await _ip(ns, "link", "set", "eth0", "up")
        await _ip(ul, "link", "set", f"u{i}", "master", "ul0", "up")
        node = Node(name=f"node{i}", ns=ns, tunnel_ip=f"{UNDERLAY_NET}.{i}")
        if physnet:
            peer = f"p{i}"
            await _ip(ns, "link", "add", "eth1", "type", "veth", "peer", "name", peer, "netns", ul)
            await _ipv6_off(ns, ["eth1"])
            await _ip(ul, "link", "set", peer, "master", "ph0", "up")
            node.physical_interfaces["physnet1"] = "eth1"
        nodes.append(node)
    return Underlay(ul, nodes)


async def announce(ns: str, address: str, ifname: str = "eth0") -> None:
    """A gratuitous ARP from workload `ns` for its `address`, as an OS does when an
    interface comes up. Needed when IPAM hands out an address a deleted port had: a
    peer that talked to the old port keeps the old MAC in its ARP cache (REACHABLE for
    up to ~45 s) and pings the new port in vain until it expires."""
    await ns_run(ns, "busybox", "arping", "-U", "-c", "1", "-w", "1", "-I", ifname, address,
                 check=False)  # fmt: skip


async def ping(ns: str, address: str, *, count: int = 1, wait: float = 2.0) -> bool:
    """Whether `address` answers from namespace ns (busybox ping)."""
    result = await ns_run(
        ns,
        "busybox",
        "ping",
        "-c",
        str(count),
        "-W",
        str(max(1, round(wait))),
        "-w",
        str(max(1, round(wait)) + count),
        address,
        check=False,
        time_limit=wait + count + 10,
    )
    return result.ok


@dataclass(frozen=True)
class PingStats:
    transmitted: int
    received: int

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


def parse_ping_stats(output: str) -> PingStats:
    for line in output.splitlines():
        if "packets transmitted" in line:
            parts = line.replace(",", "").split()
            return PingStats(int(parts[0]), int(parts[3]))
    raise ValueError(f"no ping statistics in {output!r}")


_TCP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode() + b"\\n")
    c.close()
"""


async def start_tcp_server(pool: NamespacePool, ns: str, port: int, banner: str) -> None:
    """A TCP server in ns that greets every connection with `banner` (tracked PID)."""
    proc = await pool.spawn(ns, sys.executable, "-c", _TCP_SERVER, str(port), banner)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    if line.strip() != b"ready":
        raise RuntimeError(f"TCP server in {ns} did not start: {line!r}")


async def tcp_banner(ns: str, address: str, port: int, *, wait: int = 2) -> str | None:
    """Connect from ns with busybox nc; the server's banner, or None if unreachable."""
    result = await ns_run(
        ns,
        "busybox",
        "nc",
        "-w",
        str(wait),
        address,
        str(port),
        check=False,
        time_limit=wait + 10,
    )
    text = result.stdout.strip()
    return text if result.ok and text else None
