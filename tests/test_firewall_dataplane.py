"""Security groups with nftables (drivers.firewall) on Linux bridge ports, real traffic.

Topology per test: one "node" namespace managed by a LinuxBridgeDriver and an
NftFirewall (local networks: one bridge per network, no underlay needed), workloads
as namespaces plugged with drivers.plug. A small in-test controller (Env) computes the
desired HostState, security groups and remote-group membership included.

Every nft/conntrack/sysctl command runs inside the test's own namespaces.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest
import pytest_asyncio

from drivers.firewall import FirewallError, NftFirewall
from drivers.firewall import planner as fw_planner
from drivers.firewall.actual import EMPTY, parse_ruleset
from drivers.firewall.nft import NftCli
from drivers.firewall.render import (
    group_chain,
    link_local,
    remote_set,
    rule_text,
    set_elements,
)
from drivers.linuxbridge import LinuxBridgeDriver
from drivers.linuxbridge.naming import bridge_name
from drivers.model import HostState, NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec
from drivers.plug import plug
from tests.support.netns import (
    NamespacePool,
    build_underlay,
    list_run_namespaces,
    ns_run,
    parse_ping_stats,
    ping,
    run,
    start_tcp_server,
    tcp_banner,
)

pytestmark = [pytest.mark.timeout(60)]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def new_id() -> str:
    return str(uuid.uuid4())


# -- helper programs run inside workload namespaces ------------------------------------

_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    print(addr[0], addr[1], data.decode(), flush=True)
    if sys.argv[2] == "echo":
        s.sendto(data, addr)
"""

_UDP_ASK = """
import socket, sys
ip, port, sport, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", sport))
s.settimeout(wait)
s.sendto(b"hello", (ip, port))
try:
    data, _ = s.recvfrom(2048)
except OSError:
    sys.exit(1)
print(data.decode())
"""

_UDP_BLAST = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end:
    n += 1
    s.sendto(str(n).encode(), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
print(n, flush=True)
"""

_TCP_ECHO = """
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
def serve(c):
    while True:
        data = c.recv(100)
        if not data:
            return
        c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

_TCP6_BANNER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode() + b"\\n")
    c.close()
"""

_TCP_TALKER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.settimeout(1.0)
n = 0
while True:
    n += 1
    try:
        s.sendall(b"%d\\n" % n)
        if not s.recv(100):
            print("closed", flush=True)
            break
        print("ok", n, flush=True)
    except OSError:
        print("dead", flush=True)
        break
    time.sleep(0.1)
"""


@dataclass
class PortRec:
    spec: PortSpec
    workload: str
    ip: str


@dataclass
class Env:
    """One node: L2 driver + firewall; a mini controller computing the desired state."""

    pool: NamespacePool
    node: str
    l2: LinuxBridgeDriver
    fw: NftFirewall
    networks: dict[str, NetworkSpec] = field(default_factory=dict)
    ports: dict[str, PortRec] = field(default_factory=dict)
    groups: dict[str, SecurityGroupSpec] = field(default_factory=dict)
    extra_members: dict[str, set[str]] = field(default_factory=dict)  # ports elsewhere
    _n: int = 0

    def network(self) -> NetworkSpec:
        net = NetworkSpec(new_id(), "local", None, None, 1500)
        self.networks[net.id] = net
        return net

    def group(self, *rules: RuleSpec, stateful: bool = True) -> SecurityGroupSpec:
        g = SecurityGroupSpec(new_id(), tuple(rules), stateful)
        self.groups[g.id] = g
        return g

    def set_rules(self, group: SecurityGroupSpec, *rules: RuleSpec) -> SecurityGroupSpec:
        g = replace(group, rules=tuple(rules))
        self.groups[g.id] = g
        return g

    async def add_port(
        self,
        net: NetworkSpec,
        ip: str,
        *groups: SecurityGroupSpec,
        port_security: bool = True,
        pairs: tuple[tuple[str, str], ...] = (),
        ip6: str | None = None,
    ) -> PortRec:
        self._n += 1
        spec = PortSpec(
            id=new_id(),
            network_id=net.id,
            mac=f"fa:16:3e:00:00:{self._n:02x}",
            admin_state_up=True,
            mtu=1500,
            fixed_ips=(ip,) if ip6 is None else (ip, ip6),
            security_group_ids=tuple(g.id for g in groups),
            port_security_enabled=port_security,
            allowed_address_pairs=pairs,
        )
        workload = await self.pool.create(f"w{self._n}")
        addresses = [(ip, 24)]
        if ip6 is not None:
            # No duplicate address detection wait (the addresses are usable at once).
            await ns_run(workload, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0")
            addresses.append((ip6, 64))
        await plug(spec.id, spec.mac, 1500, netns=workload, node_netns=self.node,
                   fixed_ips=addresses)  # fmt: skip
        rec = PortRec(spec, workload, ip)
        self.ports[spec.id] = rec
        return rec

    def members(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {g: set(v) for g, v in self.extra_members.items()}
        for rec in self.ports.values():
            for gid in rec.spec.security_group_ids:
                out.setdefault(gid, set()).update(rec.spec.fixed_ips)
                out[gid].update(ip for ip, _ in rec.spec.allowed_address_pairs)
        return {g: frozenset(v) for g, v in out.items()}

    def desired(self) -> HostState:
        return HostState.build(
            networks=self.networks.values(),
            ports=[r.spec for r in self.ports.values()],
            security_groups=self.groups.values(),
            sg_members=self.members(),
        )

    def bridges(self) -> dict[str, str]:
        nets = {r.spec.network_id for r in self.ports.values()}
        return {n: bridge_name(n) for n in nets}

    async def sync(self) -> fw_planner.FirewallPlan:
        """Firewall first (rules before wiring), L2, firewall again (br_netfilter)."""
        first = await self.fw.sync(self.desired(), self.bridges())
        await self.l2.sync(self.desired(), remove_stale=True)
        await self.fw.sync(self.desired(), self.bridges())
        return first.plan

    async def fw_sync(self) -> fw_planner.FirewallPlan:
        return (await self.fw.sync(self.desired(), self.bridges())).plan


@pytest_asyncio.fixture
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    pool = NamespacePool(request.node.name.replace("_", "")[4:18])
    l2: LinuxBridgeDriver | None = None
    fw: NftFirewall | None = None
    made: Env | None = None
    try:
        node = await pool.create("node")
        l2 = LinuxBridgeDriver(netns=node)
        await l2.start()
        fw = NftFirewall(node)
        await fw.start()
        made = Env(pool, node, l2, fw)
        yield made
    finally:
        if made is not None:
            await made.fw.close()  # the test may have replaced it (restart)
        if fw is not None:
            await fw.close()
        if l2 is not None:
            await l2.close()
        await pool.cleanup()
        assert list_run_namespaces(pool.prefix) == []


async def spawn_ready(
    pool: NamespacePool, ns: str, script: str, *args: str
) -> asyncio.subprocess.Process:
    proc = await pool.spawn(ns, sys.executable, "-c", script, *args)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert line.strip() == b"ready", line
    return proc


async def udp_ask(ns: str, ip: str, port: int, *, sport: int = 0, wait: float = 1.0) -> bool:
    """Send one datagram from ns; whether the echo came back."""
    result = await ns_run(
        ns, sys.executable, "-c", _UDP_ASK, ip, str(port), str(sport), str(wait), check=False
    )
    return result.ok


async def drain_lines(proc: asyncio.subprocess.Process, wait: float) -> list[str]:
    """Lines the process printed within `wait` seconds."""
    assert proc.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), left)
        except TimeoutError:
            break
        if not line:
            break
        lines.append(line.decode().strip())
    return lines


def ingress(proto: str | None = None, lo: int | None = None, hi: int | None = None, *,
            prefix: str | None = None, group: str | None = None,
            ethertype: str = "IPv4") -> RuleSpec:  # fmt: skip
    return RuleSpec("ingress", ethertype, proto, lo, hi, prefix, group)


EGRESS_ANY = RuleSpec("egress", "IPv4")
EGRESS_ANY6 = RuleSpec("egress", "IPv6")


# -- pure ------------------------------------------------------------------------------


def test_rule_rendering_and_minimal_plans() -> None:
    assert (
        rule_text(ingress("tcp", 80, 90))
        == "meta nfproto ipv4 meta l4proto 6 th dport 80-90 accept"
    )
    assert rule_text(ingress("udp", 53, 53, prefix="10.1.2.3/24")) == (
        "meta nfproto ipv4 ip saddr 10.1.2.0/24 meta l4proto 17 th dport 53 accept"
    )
    assert rule_text(ingress("icmp", 8, 0)) == "meta nfproto ipv4 icmp type 8 icmp code 0 accept"
    assert rule_text(ingress("ipv6-icmp", 128, ethertype="IPv6")) == (
        "meta nfproto ipv6 icmpv6 type 128 accept"
    )
    assert rule_text(RuleSpec("egress", "IPv6", "58", None, None, None, "g")) == (
        "meta nfproto ipv6 ip6 daddr @rg6_g meta l4proto 58 accept"
    )
    assert rule_text(ingress(prefix="0.0.0.0/0")) == "meta nfproto ipv4 accept"
    assert rule_text(ingress("gre")) == "meta nfproto ipv4 meta l4proto 47 accept"
    assert link_local("fa:16:3e:00:00:01") == "fe80::f816:3eff:fe00:1"
    # Covered members collapse (interval sets reject overlaps); other families are dropped.
    assert set_elements(frozenset(["10.0.0.1", "10.0.0.0/24", "10.1.0.1", "2001:db8::1"]), 4) == {
        "10.0.0.0/24",
        "10.1.0.1",
    }

    net = NetworkSpec("n" * 36, "local", None, None, 1500)
    web = SecurityGroupSpec("web", (ingress("tcp", 80, 80), ingress(group="web"), EGRESS_ANY))
    port = PortSpec("p" * 36, net.id, "fa:16:3e:00:00:01", True, 1500, ("10.0.0.1",), ("web",))
    bridges = {net.id: "brq" + "n" * 11}
    members = {"web": [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(2000)]}
    state = HostState.build([net], [port], security_groups=[web], sg_members=members)
    first = fw_planner.diff(state, bridges, EMPTY)
    assert first.full and len(first.ops) == 1
    loaded = first.result
    assert not fw_planner.diff(state, bridges, loaded)  # converged: nothing to do
    # One member more: exactly one element added, whatever the group size.
    more = replace(state, sg_members={"web": frozenset([*members["web"], "10.9.9.9"])})
    plan = fw_planner.diff(more, bridges, loaded)
    assert plan.lines == [f"add element inet baryon {remote_set('web', 'IPv4')} {{ 10.9.9.9 }}"]
    assert plan.objects_touched == 1 and not plan.flushes
    # One member less: one element deleted, and that member's flows with the port flushed.
    fewer = replace(state, sg_members={"web": frozenset(members["web"][1:])})
    plan = fw_planner.diff(fewer, bridges, loaded, previous=state)
    assert plan.lines == [f"delete element inet baryon rg4_web {{ {members['web'][0]} }}"]
    assert [(f.local, f.direction, f.peer) for f in plan.flushes] == [
        ("10.0.0.1", "ingress", members["web"][0])
    ]
    # A rule removed: only the group's ingress chain is replaced; its flows are flushed.
    fewer_rules = replace(web, rules=(ingress(group="web"), EGRESS_ANY))
    changed = replace(state, security_groups={"web": fewer_rules})
    plan = fw_planner.diff(changed, bridges, loaded, previous=state)
    assert [str(op) for op in plan.ops] == [
        f"chain-replace inet {group_chain('ingress', 'web')} (3 object(s))"
    ]
    assert [(f.local, f.direction, f.protocol, f.dport) for f in plan.flushes] == [
        ("10.0.0.1", "ingress", 6, 80)
    ]
    # The port leaves the group: its own chains change, the group's rules' flows go.
    left = replace(state, ports={port.id: replace(port, security_group_ids=())})
    plan = fw_planner.diff(left, bridges, loaded, previous=state)
    assert {str(op).split(" (")[0] for op in plan.ops} >= {
        f"chain-replace inet pe_{port.id}",
        f"chain-replace inet pi_{port.id}",
    }
    assert {(f.direction, f.protocol, f.dport, f.peer) for f in plan.flushes} == {
        ("ingress", 6, 80, None),  # tcp/80 from anywhere
        ("ingress", None, None, None),  # everything from the group (remote group rule)
        ("egress", None, None, None),  # egress any
    }
    # A port that goes away: kept while the agent's view is partial (remove_stale=False),
    # removed otherwise, with its addresses' conntrack entries.
    gone = replace(state, ports={})
    assert not fw_planner.diff(gone, bridges, loaded, remove_stale=False).ops
    plan = fw_planner.diff(gone, bridges, loaded, previous=state)
    kinds = [op.kind for op in plan.ops]
    assert kinds.count("chain-delete") == 6 and kinds.count("map-delete") == 4
    assert {(f.local, f.direction) for f in plan.flushes} == {
        ("10.0.0.1", "ingress"),
        ("10.0.0.1", "egress"),
    }
    assert parse_ruleset('{"nftables": []}') == EMPTY


# -- real traffic ----------------------------------------------------------------------


@needs_root
async def test_rules_allow_and_block_tcp_udp_icmp(env: Env) -> None:
    net = env.network()
    client = env.group(EGRESS_ANY)
    web = env.group(
        ingress("tcp", 8080, 8080),
        ingress("udp", 5353, 5353, prefix="10.0.0.0/24"),
        ingress("icmp", 8, None, group=client.id),
        EGRESS_ANY,
    )
    closed = env.group(EGRESS_ANY)  # egress only: default-deny ingress
    a = await env.add_port(net, "10.0.0.1", client)
    s = await env.add_port(net, "10.0.0.2", web)
    b = await env.add_port(net, "10.0.0.3", closed)
    open_port = await env.add_port(net, "10.0.0.4", port_security=False)
    await env.sync()

    await start_tcp_server(env.pool, s.workload, 8080, "web")
    await start_tcp_server(env.pool, s.workload, 8081, "hidden")
    await spawn_ready(env.pool, s.workload, _UDP_ECHO, "5353", "echo")
    await spawn_ready(env.pool, s.workload, _UDP_ECHO, "5354", "echo")
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"
    assert await tcp_banner(a.workload, s.ip, 8081, wait=1) is None
    assert await udp_ask(a.workload, s.ip, 5353)  # the reply comes back through conntrack
    assert not await udp_ask(a.workload, s.ip, 5354)
    assert await ping(a.workload, s.ip)  # icmp echo from a member of `client`
    assert not await ping(b.workload, s.ip, wait=1)  # b is not a member
    assert not await ping(s.workload, b.ip, wait=1)  # b accepts nothing
    await start_tcp_server(env.pool, b.workload, 8080, "b")
    assert await tcp_banner(a.workload, b.ip, 8080, wait=1) is None
    # Port security disabled: everything reaches it, and it reaches what allows it.
    await start_tcp_server(env.pool, open_port.workload, 9999, "open")
    assert await tcp_banner(b.workload, open_port.ip, 9999) == "open"
    assert await ping(s.workload, open_port.ip)
    assert await tcp_banner(open_port.workload, s.ip, 8080) == "web"
    assert not await ping(open_port.workload, a.ip, wait=1)
    # Converged: a second sync plans nothing; what is loaded is what the driver thinks,
    # read back through libnftables or through the nft command alike.
    assert not env.fw.plan(env.desired(), env.bridges())
    assert await env.fw.read_actual() == env.fw.loaded
    cli = NftCli(env.node)
    assert parse_ruleset(await cli.run("list ruleset", json=True)) == env.fw.loaded


@needs_root
async def test_remote_group_membership_is_one_set_element(env: Env) -> None:
    net = env.network()
    friends = env.group(EGRESS_ANY)
    web = env.group(ingress("tcp", 8080, 8080, group=friends.id), EGRESS_ANY)
    s = await env.add_port(net, "10.0.0.2", web)
    b = await env.add_port(net, "10.0.0.3", env.group(EGRESS_ANY))
    await env.add_port(net, "10.0.0.4", friends)
    await env.sync()
    await start_tcp_server(env.pool, s.workload, 8080, "web")
    assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None

    # b joins `friends` (as seen from here: its IP enters the group's member list).
    env.extra_members[friends.id] = {b.ip}
    plan = await env.fw_sync()
    assert plan.lines == [f"add element inet baryon {remote_set(friends.id, 'IPv4')} {{ {b.ip} }}"]
    assert plan.objects_touched == 1
    assert await tcp_banner(b.workload, s.ip, 8080) == "web"
    # ...and leaves: one element deleted, and b's flows towards s are flushed.
    env.extra_members[friends.id] = set()
    plan = await env.fw_sync()
    assert plan.lines == [
        f"delete element inet baryon {remote_set(friends.id, 'IPv4')} {{ {b.ip} }}"
    ]
    assert plan.objects_touched == 1
    assert [(f.local, f.peer, f.direction) for f in plan.flushes] == [(s.ip, b.ip, "ingress")]
    assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None


@needs_root
async def test_spoofed_source_mac_and_ip_are_dropped(env: Env) -> None:
    net = env.network()
    everyone = env.group(ingress("icmp"), EGRESS_ANY)
    a = await env.add_port(net, "10.0.0.1", everyone, pairs=(("10.0.0.60", ""),))
    s = await env.add_port(net, "10.0.0.2", everyone)
    await env.sync()
    assert await ping(a.workload, s.ip)

    # A source IP that is not the port's: dropped at the bridge.
    await ns_run(a.workload, "ip", "addr", "add", "10.0.0.50/32", "dev", "eth0")
    spoofed = await ns_run(a.workload, "busybox", "ping", "-c", "1", "-W", "1", "-I",
                           "10.0.0.50", s.ip, check=False)  # fmt: skip
    assert not spoofed.ok
    # An allowed address pair may be used.
    await ns_run(a.workload, "ip", "addr", "add", "10.0.0.60/32", "dev", "eth0")
    paired = await ns_run(a.workload, "busybox", "ping", "-c", "1", "-W", "2", "-I",
                          "10.0.0.60", s.ip, check=False)  # fmt: skip
    assert paired.ok, paired.stdout
    # ARP claiming someone else's IP gets no answer; from its own IP it does.
    lie = await ns_run(a.workload, "busybox", "arping", "-c", "1", "-w", "1", "-I", "eth0",
                       "-s", "10.0.0.50", s.ip, check=False)  # fmt: skip
    assert not lie.ok
    truth = await ns_run(a.workload, "busybox", "arping", "-c", "1", "-w", "1", "-I", "eth0",
                         "-s", a.ip, s.ip, check=False)  # fmt: skip
    assert truth.ok
    # A source MAC that is not the port's: nothing gets through.
    await ns_run(s.workload, "ip", "neigh", "flush", "all")
    await ns_run(a.workload, "ip", "neigh", "flush", "all")
    await ns_run(a.workload, "ip", "link", "set", "eth0", "address", "fa:16:3e:99:99:99")
    assert not await ping(a.workload, s.ip, wait=1)
    await ns_run(a.workload, "ip", "link", "set", "eth0", "address", a.spec.mac)
    await ns_run(a.workload, "ip", "neigh", "flush", "all")
    assert await ping(a.workload, s.ip)


@needs_root
async def test_established_tcp_flow_is_cut_when_its_rule_goes(env: Env) -> None:
    net = env.network()
    web = env.group(ingress("tcp", 9000, 9000), ingress("tcp", 9001, 9001), EGRESS_ANY)
    a = await env.add_port(net, "10.0.0.1", env.group(EGRESS_ANY))
    s = await env.add_port(net, "10.0.0.2", web)
    await env.sync()
    await spawn_ready(env.pool, s.workload, _TCP_ECHO, "9000")
    await spawn_ready(env.pool, s.workload, _TCP_ECHO, "9001")
    doomed = await env.pool.spawn(a.workload, sys.executable, "-c", _TCP_TALKER, s.ip, "9000")
    kept = await env.pool.spawn(a.workload, sys.executable, "-c", _TCP_TALKER, s.ip, "9001")
    assert sum(x.startswith("ok") for x in await drain_lines(doomed, 0.6)) >= 3
    await drain_lines(kept, 0.1)

    env.set_rules(web, ingress("tcp", 9001, 9001), EGRESS_ANY)
    result = await env.fw.sync(env.desired(), env.bridges())
    assert result.conntrack_deleted >= 1
    lines = await drain_lines(doomed, 3.0)
    assert "dead" in lines, lines
    # The other flow (its rule stays) goes on; a new connection to 9000 is refused.
    assert sum(x.startswith("ok") for x in await drain_lines(kept, 1.0)) >= 5
    assert await tcp_banner(a.workload, s.ip, 9000, wait=1) is None


@needs_root
async def test_overlapping_cidrs_do_not_share_conntrack(env: Env) -> None:
    net_a, net_b = env.network(), env.network()
    server = env.group(ingress("udp", 7000, 7000), EGRESS_ANY)
    quiet = env.group(EGRESS_ANY)  # accepts nothing new
    a1 = await env.add_port(net_a, "10.0.0.1", quiet)
    a2 = await env.add_port(net_a, "10.0.0.2", server)
    b1 = await env.add_port(net_b, "10.0.0.1", quiet)
    b2 = await env.add_port(net_b, "10.0.0.2", quiet)
    await env.sync()
    await spawn_ready(env.pool, a2.workload, _UDP_ECHO, "7000", "echo")
    listener = await spawn_ready(env.pool, b1.workload, _UDP_ECHO, "5555", "quiet")

    async def leak_probe() -> list[str]:
        # On A: 10.0.0.1:5555 -> 10.0.0.2:7000 is allowed; its echo returns (conntrack).
        assert await udp_ask(a1.workload, "10.0.0.2", 7000, sport=5555)
        # On B, the same 5-tuple backwards, towards a port that accepts nothing new.
        assert not await udp_ask(b2.workload, "10.0.0.1", 5555, sport=7000, wait=0.5)
        return await drain_lines(listener, 0.3)

    assert await leak_probe() == []
    zones = env.fw.loaded.zones if env.fw.loaded else {}
    za, zb = zones[bridge_name(net_a.id)], zones[bridge_name(net_b.id)]
    assert za != zb
    listed = await ns_run(env.node, "conntrack", "-L", "-w", str(za), "-p", "udp", check=False)
    assert "dport=7000" in listed.stdout

    # Control: with both bridges in one zone the same probe leaks (so the test can fail).
    br_b = bridge_name(net_b.id)
    await ns_run(env.node, "nft", f'delete element inet baryon zones {{ "{br_b}" }}')
    await ns_run(env.node, "nft", f'add element inet baryon zones {{ "{br_b}" : {za} }}')
    await ns_run(env.node, "conntrack", "-F", check=False)
    leaked = await leak_probe()
    assert any(line.startswith("10.0.0.2 7000") for line in leaked), leaked


@needs_root
async def test_restart_keeps_enforcement(env: Env) -> None:
    net = env.network()
    a = await env.add_port(net, "10.0.0.1", env.group(EGRESS_ANY))
    s = await env.add_port(net, "10.0.0.2", env.group(ingress("icmp"), EGRESS_ANY))
    await env.sync()
    listener = await spawn_ready(env.pool, s.workload, _UDP_ECHO, "6000", "quiet")
    count = 200
    pinger = await env.pool.spawn(
        a.workload, "busybox", "ping", "-i", "0.01", "-c", str(count), "-W", "2", s.ip
    )
    blaster = await env.pool.spawn(
        a.workload, sys.executable, "-c", _UDP_BLAST, s.ip, "6000", "2.5"
    )
    await asyncio.sleep(0.2)

    # A new instance reads the ruleset: nothing to change, nothing changed.
    await env.fw.close()
    again = NftFirewall(env.node)
    await again.start()
    env.fw = again
    assert not again.plan(env.desired(), env.bridges())
    # Damage the skeleton (a marker rule of the bridge forward chain goes): the next
    # instance rebuilds both tables, in one transaction.
    listing = (
        await ns_run(env.node, "nft", "-a", "list", "chain", "bridge", "baryon", "forward")
    ).stdout
    handle = next(
        line.split("# handle ")[1] for line in listing.splitlines() if "baryon:skeleton" in line
    )
    await ns_run(
        env.node, "nft", "delete", "rule", "bridge", "baryon", "forward", "handle", handle.strip()
    )
    await again.close()
    third = NftFirewall(env.node, prefer_library=False)  # the nft command this time
    await third.start()
    env.fw = third
    plan = await env.fw_sync()
    assert plan.full and len(plan.ops) == 1
    assert not third.plan(env.desired(), env.bridges())

    out, _ = await asyncio.wait_for(pinger.communicate(), 20)
    stats = parse_ping_stats(out.decode())
    assert stats.transmitted == count and stats.lost == 0, out.decode()
    sent, _ = await asyncio.wait_for(blaster.communicate(), 10)
    assert int(sent) > 100
    assert await drain_lines(listener, 0.3) == []  # not one blocked datagram got through


@needs_root
async def test_br_netfilter_off_fails_closed_and_sync_turns_it_back_on(env: Env) -> None:
    net = env.network()
    a = await env.add_port(net, "10.0.0.1", env.group(EGRESS_ANY))
    s = await env.add_port(net, "10.0.0.2", env.group(ingress("tcp", 7100, 7100), EGRESS_ANY))
    await env.sync()
    bridge = bridge_name(net.id)
    assert await env.fw.br_netfilter_state(bridge) == (True, True)
    await start_tcp_server(env.pool, s.workload, 7100, "ok")
    assert await tcp_banner(a.workload, s.ip, 7100) == "ok"
    assert not await ping(a.workload, s.ip, wait=1)

    # br_netfilter off for this bridge and this namespace: the inet rules see nothing.
    await run("ip", "-n", env.node, "link", "set", bridge, "type", "bridge",
              "nf_call_iptables", "0", "nf_call_ip6tables", "0")  # fmt: skip
    await ns_run(env.node, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0",
                 "net.bridge.bridge-nf-call-ip6tables=0")  # fmt: skip
    # Fail closed: blocked stays blocked, and even allowed IP traffic stops.
    assert not await ping(a.workload, s.ip, wait=1)
    assert await tcp_banner(a.workload, s.ip, 7100, wait=1) is None
    result = await env.fw.sync(env.desired(), env.bridges())
    assert result.bridges_fixed == (bridge,)
    assert await tcp_banner(a.workload, s.ip, 7100) == "ok"
    assert not await ping(a.workload, s.ip, wait=1)

    # When it cannot be turned on, sync says so (and the guard keeps the bridge closed).
    async def stuck(name: str) -> tuple[bool, bool] | None:
        return (False, False)

    env.fw.br_netfilter_state = stuck  # type: ignore[method-assign]
    with pytest.raises(FirewallError, match="br_netfilter could not be enabled"):
        await env.fw.sync(env.desired(), env.bridges())


@needs_root
async def test_ipv6_rules_neighbour_discovery_and_spoofing(env: Env) -> None:
    net = env.network()
    client = env.group(EGRESS_ANY, EGRESS_ANY6)
    web = env.group(
        ingress("ipv6-icmp", 128, ethertype="IPv6"),  # echo request
        ingress("tcp", 8080, 8080, ethertype="IPv6"),
        EGRESS_ANY6,
    )
    closed = env.group(EGRESS_ANY6)
    a = await env.add_port(net, "10.0.0.1", client, ip6="2001:db8::1")
    s = await env.add_port(net, "10.0.0.2", web, ip6="2001:db8::2")
    b = await env.add_port(net, "10.0.0.3", closed, ip6="2001:db8::3")
    await env.sync()

    async def ping6(ns: str, dst: str, *extra: str) -> bool:
        result = await ns_run(
            ns, "busybox", "ping6", "-c", "1", "-W", "2", *extra, dst, check=False
        )
        return result.ok

    # Neighbour discovery flows both ways (no rule mentions it); the echo rule works.
    assert await ping6(a.workload, "2001:db8::2")
    assert await ping6(b.workload, "2001:db8::2")
    assert not await ping6(s.workload, "2001:db8::3")  # b accepts nothing
    assert not await ping(a.workload, s.ip, wait=1)  # no IPv4 ICMP rule on s
    await spawn_ready(env.pool, s.workload, _TCP6_BANNER, "8080", "v6")
    banner = await ns_run(a.workload, "busybox", "nc", "-w", "2", "2001:db8::2", "8080",
                          check=False)  # fmt: skip
    assert banner.stdout.strip() == "v6"
    # From its EUI-64 link-local address a port may talk too.
    assert await ping6(a.workload, "fe80::f816:3eff:fe00:2%eth0")
    # A global address that is not the port's: dropped.
    await ns_run(a.workload, "ip", "addr", "add", "2001:db8::50/128", "dev", "eth0", "nodad")
    assert not await ping6(a.workload, "2001:db8::2", "-I", "2001:db8::50")


@needs_root
async def test_stateless_group_needs_rules_for_replies(env: Env) -> None:
    net = env.network()
    a = await env.add_port(net, "10.0.0.1", env.group(EGRESS_ANY))
    web = env.group(ingress("tcp", 8080, 8080))  # stateful: replies ride on conntrack
    s = await env.add_port(net, "10.0.0.2", web)
    await env.sync()
    await start_tcp_server(env.pool, s.workload, 8080, "web")
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"

    # Stateless: the same rules let the SYN in, but nothing lets the replies out.
    web = replace(web, stateful=False)
    env.groups[web.id] = web
    await env.fw_sync()
    assert await tcp_banner(a.workload, s.ip, 8080, wait=1) is None
    # A rule for the replies (egress TCP) makes it work without conntrack.
    env.set_rules(web, ingress("tcp", 8080, 8080), RuleSpec("egress", "IPv4", "tcp"))
    await env.fw_sync()
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"


@needs_root
async def test_two_nodes_over_vxlan_remote_group() -> None:
    """Rules hold for traffic arriving from the overlay, and a member on another host
    is one set element on this one."""
    pool = NamespacePool("fw2nodes")
    drivers: list[LinuxBridgeDriver] = []
    firewalls: list[NftFirewall] = []
    try:
        underlay = await build_underlay(pool, 2)
        for node in underlay.nodes:
            l2 = LinuxBridgeDriver(netns=node.ns, tunnel_ip=node.tunnel_ip)
            await l2.start()
            drivers.append(l2)
            fw = NftFirewall(node.ns)
            await fw.start()
            firewalls.append(fw)
        net = NetworkSpec(new_id(), "vxlan", 4242, None, 1450)
        friends = SecurityGroupSpec(new_id(), (EGRESS_ANY,))
        others = SecurityGroupSpec(new_id(), (EGRESS_ANY,))
        web = SecurityGroupSpec(
            new_id(), (ingress("tcp", 8080, 8080, group=friends.id), EGRESS_ANY)
        )
        groups = [friends, others, web]
        placed: list[tuple[int, PortSpec, str]] = []
        for n, (node_i, ip, group) in enumerate(
            [(0, "10.0.0.2", web), (1, "10.0.0.1", friends), (1, "10.0.0.3", others)], 1
        ):
            spec = PortSpec(new_id(), net.id, f"fa:16:3e:00:01:{n:02x}", True, 1450, (ip,),
                            (group.id,))  # fmt: skip
            workload = await pool.create(f"w{n}")
            await plug(spec.id, spec.mac, 1450, netns=workload,
                       node_netns=underlay.nodes[node_i].ns, fixed_ips=[(ip, 24)])  # fmt: skip
            placed.append((node_i, spec, workload))
        (_, s, s_ns), (_, _a, a_ns), (_, b, b_ns) = placed
        extra: set[str] = set()

        def desired(node_i: int) -> HostState:
            mine = [p for i, p, _ in placed if i == node_i]
            vteps: dict[str, set[str]] = {}
            for i, p, _ in placed:
                if i != node_i:
                    vteps.setdefault(underlay.nodes[i].tunnel_ip, set()).add(p.mac)
            members = {g.id: {p.fixed_ips[0] for _, p, _ in placed if g.id in
                              p.security_group_ids} for g in groups}  # fmt: skip
            members[friends.id] |= extra
            return HostState.build([net], mine, {net.id: vteps}, groups, members)

        async def sync_all() -> list[fw_planner.FirewallPlan]:
            plans = []
            for i in range(2):
                state = desired(i)
                bridges = {net.id: bridge_name(net.id)}
                plans.append((await firewalls[i].sync(state, bridges)).plan)
                await drivers[i].sync(state, remove_stale=True)
                await firewalls[i].sync(state, bridges)
            return plans

        await sync_all()
        await start_tcp_server(pool, s_ns, 8080, "web")
        assert await tcp_banner(a_ns, s.fixed_ips[0], 8080) == "web"  # a is a friend
        assert await tcp_banner(b_ns, s.fixed_ips[0], 8080, wait=1) is None
        # b's IP joins `friends` (say b moved groups elsewhere): on node 1 one element.
        extra.add(b.fixed_ips[0])
        node1_plan, _ = await sync_all()
        assert node1_plan.objects_touched == 1, node1_plan.describe()
        assert await tcp_banner(b_ns, s.fixed_ips[0], 8080) == "web"
    finally:
        for fw in firewalls:
            await fw.close()
        for l2 in drivers:
            await l2.close()
        await pool.cleanup()
        assert list_run_namespaces(pool.prefix) == []


@needs_root
async def test_hybrid_plug_in_front_of_ovs(env: Env) -> None:
    """Neutron's hybrid plug: workload tap -> per-port Linux bridge qbr -> veth qvb/qvo
    -> OVS (userspace datapath). The same rules hold with one bridge per port; the
    ports of a network share its conntrack zone."""
    from tests.support.ovs import start_ovs

    ovs = await start_ovs(env.node)
    try:
        await ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int",
                        "datapath_type=netdev")  # fmt: skip
        net = env.network()
        friends = env.group(EGRESS_ANY)
        web = env.group(ingress("tcp", 8080, 8080, group=friends.id), ingress("icmp"), EGRESS_ANY)
        a = await env.add_port(net, "10.0.0.1", friends)
        s = await env.add_port(net, "10.0.0.2", web)
        b = await env.add_port(net, "10.0.0.3", env.group(EGRESS_ANY))
        port_bridges: dict[str, str] = {}
        for rec in (a, s, b):
            short = rec.spec.id[:11]
            qbr, qvb, qvo = "qbr" + short, "qvb" + short, "qvo" + short
            await run("ip", "-n", env.node, "link", "add", qbr, "type", "bridge")
            await run("ip", "-n", env.node, "link", "add", qvb, "type", "veth", "peer", "name", qvo)
            await ns_run(env.node, "sysctl", "-q", "-w", *(f"net.ipv6.conf.{d}.disable_ipv6=1"
                                                           for d in (qbr, qvb, qvo)))  # fmt: skip
            for dev, master in ((rec.spec.device_name, qbr), (qvb, qbr)):
                await run("ip", "-n", env.node, "link", "set", dev, "master", master, "up")
            await run("ip", "-n", env.node, "link", "set", qbr, "up")
            await run("ip", "-n", env.node, "link", "set", qvo, "up")
            # Userspace OVS drops TCP with offloaded checksums (platform notes).
            await ns_run(env.node, "ethtool", "-K", qvb, "tx", "off")
            await ns_run(rec.workload, "ethtool", "-K", "eth0", "tx", "off")
            await ovs.vsctl("add-port", "br-int", qvo, "--", "set", "port", qvo, "tag=1")
            port_bridges[rec.spec.id] = qbr

        result = await env.fw.sync(env.desired(), {}, port_bridges=port_bridges)
        assert not result.problems and sorted(result.bridges_fixed) == sorted(port_bridges.values())
        loaded = env.fw.loaded
        assert loaded is not None and len({loaded.zones[q] for q in port_bridges.values()}) == 1

        await start_tcp_server(env.pool, s.workload, 8080, "web")
        assert await tcp_banner(a.workload, s.ip, 8080) == "web"
        assert await ping(b.workload, s.ip)
        assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None
        assert not await ping(s.workload, b.ip, wait=1)
        env.extra_members[friends.id] = {b.ip}
        plan = (await env.fw.sync(env.desired(), {}, port_bridges=port_bridges)).plan
        assert plan.objects_touched == 1
        assert await tcp_banner(b.workload, s.ip, 8080) == "web"
    finally:
        await ovs.stop()
