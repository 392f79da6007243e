"""Routers and DHCP end to end: controller scheduling + agents running the L3 and DHCP
services, proven with real traffic.

Three "node" namespaces joined by an underlay (VXLAN) and a physical network physnet1
(tests/support/netns.py); an "external" namespace on physnet1 (203.0.113.1, the
external subnet's gateway) stands for the world. One ``baryon agent --services
l2,dhcp,l3`` process per node; workloads are namespaces plugged into ports. The
router's and DHCP's namespaces carry a per-run, per-node prefix (--netns-prefix), so
the pool's cleanup removes them; dnsmasq processes are killed by their PID files.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from baryon.v1 import agent_pb2, agent_pb2_grpc, router_pb2
from controller.auth import Context, TokenTable
from controller.model import DhcpBinding, Port, RouterBinding
from controller.server import Controller
from tests.support.controller import ADMIN_TOKEN, TOKENS, Client, config
from tests.support.dhcp_client import dhcp_lease, install_script
from tests.support.etcd import scratch_dir
from tests.support.l3 import L3
from tests.support.netns import NamespacePool, Node, build_underlay, run
from tests.support.routing import ask, isolate_node, start_peer_server
from tests.test_agent_e2e import AGENT_TOKEN, Agents, cli, eventually, reaches

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

LEASE_TTL = 1  # agents' liveness: failover = TTL + etcd expiry check + converge
EXT_GW = "203.0.113.1"


@dataclass
class ServiceAgents(Agents):
    ns_prefix: str = ""
    state_root: str = ""

    async def start(self, node: Node) -> asyncio.subprocess.Process:
        self.extra = (
            "--services",
            "l2,dhcp,l3",
            "--physical-interface-mappings",
            "physnet1:eth1",
            "--netns-prefix",
            f"{self.ns_prefix}{node.name}-",
            "--state-dir",
            os.path.join(self.state_root, node.name),
            # This file proves routing, NAT and DHCP; security groups are proven by
            # test_agent_e2e.py and the firewall tests.
            "--firewall",
            "none",
        )
        return await super().start(node)

    def kill_dnsmasqs(self) -> None:
        """dnsmasq outlives a SIGKILLed agent: kill every one by its PID file."""
        for pidfile in glob.glob(os.path.join(self.state_root, "*", "dhcp", "*", "pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(Path(pidfile).read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"dnsmasq" in cmdline and pidfile.rsplit("/", 2)[0].encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)


def make_controller(endpoint: str, prefix: bytes, **overrides: Any) -> Controller:
    tokens = dict(TOKENS)
    tokens[AGENT_TOKEN] = Context("service", frozenset({"agent"}))
    cfg = config(prefix.decode(), agent_lease_ttl=LEASE_TTL, leader_lease_ttl=1, **overrides)
    return Controller(cfg, TokenTable(tokens), [endpoint], "127.0.0.1:0")


async def step(what: str, aw: Awaitable[Any], limit: float = 20.0) -> None:
    """A cleanup step that must not hang the test (it says which one did)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait([task], timeout=limit)
    if not done:
        print(f"cleanup: {what} took more than {limit} s")
        for t in asyncio.all_tasks():
            chain = []
            coro: Any = t.get_coro()
            while coro is not None and len(chain) < 12:
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                if frame is not None:
                    chain.append(
                        f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
                    )
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            print(f"task {t.get_name()}: " + " <- ".join(chain))
        task.cancel()


@asynccontextmanager
async def world(endpoint: str, prefix: bytes) -> AsyncIterator[Any]:
    pool = NamespacePool("l3e")
    logdir = scratch_dir("l3agentlogs")
    state = scratch_dir("l3agentstate")
    os.chmod(state, 0o755)  # dnsmasq runs as nobody: its files must be reachable
    ctl = make_controller(endpoint, prefix)
    await ctl.start()
    target = f"127.0.0.1:{ctl.port}"
    agents = ServiceAgents(target, logdir, ns_prefix=pool.prefix, state_root=str(state))
    channel = grpc.aio.insecure_channel(target)
    try:
        yield SimpleNamespace(pool=pool, ctl=ctl, target=target, agents=agents, channel=channel)
    except BaseException:
        print(agents.logs)
        raise
    finally:
        await step("killing the agents", agents.kill_all())
        agents.kill_dnsmasqs()
        await step("closing the channel", channel.close())
        await step("stopping the controller", ctl.stop())
        await step("cleaning up namespaces", pool.cleanup())
        shutil.rmtree(logdir, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


async def add_external(pool: NamespacePool, underlay_ns: str) -> str:
    ext = await pool.create("ext")
    await run(
        "ip",
        "-n",
        ext,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "pext",
        "netns",
        underlay_ns,
    )
    await run("ip", "-n", underlay_ns, "link", "set", "pext", "master", "ph0", "up")
    await run("ip", "-n", ext, "addr", "add", f"{EXT_GW}/24", "dev", "eth0")
    await run("ip", "-n", ext, "link", "set", "eth0", "up")
    return ext


def peer_is(
    ns: str, address: str, port: int, banner: str, source: str
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await ask(ns, address, port, wait=1) == (banner, source)

    return probe


async def diag(pool: NamespacePool, agents: ServiceAgents) -> str:
    """Namespaces, devices and dnsmasq processes of this run, for failure reports."""
    out = []
    res = await run("ip", "netns", "list", check=False)
    names = [ln.split()[0] for ln in res.stdout.splitlines() if ln.startswith(pool.prefix)]
    for name in names:
        res = await run("ip", "-n", name, "-br", "addr", check=False)
        out.append(f"## {name}\n{res.stdout}")
        if name.endswith(("node1", "node2", "node3")):
            res = await run("bridge", "-n", name, "fdb", "show", check=False)
            out.append(
                "\n".join(ln for ln in res.stdout.splitlines() if "vxlan" in ln or "dst" in ln)
            )
            res = await run("bridge", "-n", name, "link", "show", check=False)
            out.append(res.stdout)
    res = await run("ps", "-eo", "pid,args", check=False)
    out.append("\n".join(ln for ln in res.stdout.splitlines() if "dnsmasq" in ln))
    for path in glob.glob(os.path.join(agents.state_root, "*", "dhcp", "*", "*")):
        with contextlib.suppress(OSError), open(path) as f:  # noqa: ASYNC230
            out.append(f"## {path}\n{f.read()[-1500:]}")
    return "\n".join(out)


async def test_routers_dhcp_floating_ips_and_failover(
    etcd_endpoint: str, key_prefix: bytes
) -> None:
    async with world(etcd_endpoint, key_prefix) as w:
        # A hang shows where it happened (traceback) instead of pytest-timeout's threads.
        async with asyncio.timeout(75):
            await _scenario(w)


async def _scenario(w: Any) -> None:
    pool: NamespacePool = w.pool
    agents: ServiceAgents = w.agents
    ctl: Controller = w.ctl
    assert ctl.store is not None
    cache = ctl.store.cache
    admin = Client(w.channel, ADMIN_TOKEN)
    l3 = L3(SimpleNamespace(channel=w.channel), admin)  # type: ignore[arg-type]
    agent_api = agent_pb2_grpc.AgentServiceStub(w.channel)
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    logs = agents.logs

    underlay = await build_underlay(pool, 3, physnet=True)
    nodes = {n.name: n for n in underlay.nodes}
    ext = await add_external(pool, underlay.ns)
    for node in underlay.nodes:
        await agents.start(node)

    async def alive() -> set[str]:
        resp = await agent_api.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md)
        return {a.host for a in resp.agents if a.alive}

    async def all_alive() -> bool:
        return await alive() == set(nodes)

    await eventually("three agents alive", all_alive, 20, logs)
    resp = await agent_api.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md)
    assert all(set(a.services) == {"l2", "dhcp", "l3"} for a in resp.agents), resp

    # External flat network (the ext namespace is its gateway), two tenant networks.
    extnet = await admin.network(
        name="ext",
        external=True,
        provider_network_type="flat",
        provider_physical_network="physnet1",
    )
    await admin.subnet(extnet.id, "203.0.113.0/24", gateway_ip=EXT_GW, enable_dhcp=False)
    net_a = await admin.network(name="a")
    sub_a = await admin.subnet(net_a.id, "10.10.1.0/24")
    net_b = await admin.network(name="b")
    sub_b = await admin.subnet(net_b.id, "10.10.2.0/24")
    router = await l3.router(
        name="r", external_gateway_info=router_pb2.ExternalGatewayInfo(network_id=extnet.id)
    )
    await l3.add_interface(router.id, subnet_id=sub_a.id)
    await l3.add_interface(router.id, subnet_id=sub_b.id)

    async def router_host() -> str:
        b = cache.get(RouterBinding, router.id)
        return b.host if b is not None else ""

    async def dhcp_host(net_id: str) -> str:
        found = cache.related(DhcpBinding, "net_dhcp", net_id)
        return found[0].host if len(found) == 1 else ""

    r_host = await eventually("router scheduled", router_host, 10, logs)
    a_host = await eventually("DHCP of a scheduled", lambda: dhcp_host(net_a.id), 10, logs)

    # Router ports and the DHCP port are bound to the hosts they were scheduled to.
    async def router_ports_bound() -> bool:
        ports = cache.related(Port, "device", router.id)
        return len(ports) == 3 and all(
            p.binding_host_id == r_host and p.binding_vif_type == "bridge" for p in ports
        )

    await eventually("router ports bound", router_ports_bound, 10, logs)
    dhcp_ports = [
        p for p in cache.related(Port, "net_ports", net_a.id) if p.device_owner == "network:dhcp"
    ]
    assert len(dhcp_ports) == 1 and dhcp_ports[0].binding_host_id == a_host
    assert not dhcp_ports[0].port_security_enabled and not dhcp_ports[0].security_groups
    others = sorted(set(nodes) - {r_host})
    print(f"router on {r_host}, DHCP of a on {a_host}; workloads on {others}")

    # Workload A gets its address by DHCP; workload B is static on the other subnet.
    script = install_script(str(agents.state_root))
    wa_ns = await pool.create("wa")
    pa = await admin.port(net_a.id, name="wa", binding_host_id=others[0])
    await cli(
        w.target, "port", "plug", pa.id, "--netns", wa_ns, "--node-netns", nodes[others[0]].ns
    )
    out = os.path.join(str(agents.state_root), "wa.lease")
    lease = None
    for _ in range(5):
        lease = await dhcp_lease(pool, wa_ns, script, out)
        if lease is not None:
            break
    if lease is None:
        print(await diag(pool, agents))
    assert lease is not None, "no DHCP lease"
    ip_a = pa.fixed_ips.ips[0].ip_address
    assert lease["ip"] == ip_a and lease["router"] == "10.10.1.1" and lease["mtu"] == "1450"
    print(f"DHCP lease in {lease.seconds * 1000:.0f} ms")
    wb_ns = await pool.create("wb")
    pb = await admin.port(net_b.id, name="wb", binding_host_id=others[1])
    ip_b = pb.fixed_ips.ips[0].ip_address
    await cli(
        w.target,
        "port",
        "plug",
        pb.id,
        "--netns",
        wb_ns,
        "--node-netns",
        nodes[others[1]].ns,
        "--static-ip",
    )

    await eventually("a pings its gateway", reaches(wa_ns, "10.10.1.1"), 15, logs)
    await eventually("a reaches b through the router", reaches(wa_ns, ip_b), 15, logs)

    # SNAT: the external side sees the router's gateway address.
    gw_port = next(p for p in cache.related(Port, "device", router.id) if p.network_id == extnet.id)
    snat_ip = gw_port.fixed_ips[0][1]
    await start_peer_server(pool, ext, 7000, "ext")
    await eventually(
        "a reaches ext with SNAT", peer_is(wa_ns, EXT_GW, 7000, "ext", snat_ip), 10, logs
    )

    # Floating IP to b: the external side reaches b and b sees the real source.
    await start_peer_server(pool, wb_ns, 7001, "b")
    await start_peer_server(pool, wa_ns, 7001, "a")
    fip = await l3.fip(extnet.id, port_id=pb.id)
    fip_ip = fip.floating_ip_address
    await eventually("ext reaches b by FIP", peer_is(ext, fip_ip, 7001, "b", EXT_GW), 10, logs)

    async def fip_active() -> bool:
        return (await l3.get_fip(fip.id)).status == "ACTIVE"

    await eventually("FIP ACTIVE", fip_active, 10, logs)
    # b leaves by its floating IP, not the router's SNAT address.
    await eventually("b leaves as its FIP", peer_is(wb_ns, EXT_GW, 7000, "ext", fip_ip), 10, logs)

    # Moving the floating IP to a moves the traffic.
    await l3.update_fip(fip.id, port_id=pa.id)
    await eventually("ext reaches a by FIP", peer_is(ext, fip_ip, 7001, "a", EXT_GW), 10, logs)

    # Static route: 198.51.100.0/24 lives behind b.
    await run("ip", "-n", wb_ns, "addr", "add", "198.51.100.1/32", "dev", "lo")
    await l3.set_routes(router.id, ("198.51.100.0/24", ip_b))
    await eventually(
        "a reaches 198.51.100.1 via the route", reaches(wa_ns, "198.51.100.1"), 10, logs
    )

    # The router's host dies (agent SIGKILLed, the node cut off): the router moves.
    await agents.kill(r_host)
    await isolate_node(SimpleNamespace(node_ns=lambda n: nodes[n].ns), r_host, True)  # type: ignore[arg-type]
    t0 = time.monotonic()

    async def moved() -> bool:
        host = await router_host()
        return host not in ("", r_host)

    await eventually("router rescheduled", moved, 10, logs)
    t_sched = time.monotonic() - t0
    await eventually("a reaches b again", reaches(wa_ns, ip_b), 10, logs)
    t_l3 = time.monotonic() - t0
    await eventually(
        "ext reaches a by FIP again", peer_is(ext, fip_ip, 7001, "a", EXT_GW), 10, logs
    )
    t_fip = time.monotonic() - t0
    print(
        f"router failover: rescheduled {t_sched:.2f} s, east-west {t_l3:.2f} s,"
        f" floating IP {t_fip:.2f} s after SIGKILL (lease TTL {LEASE_TTL} s)"
    )
    # Not asserted against the 3 s target: machines here are noisy; bench/l3_failover.py
    # measures it. The eventually() bounds above are what the test requires.

    # DHCP: if its agent died, the network moved; either way a new lease works.
    new_a = await eventually("DHCP of a on a live agent", lambda: dhcp_host(net_a.id), 10, logs)
    assert new_a != r_host
    t_dhcp_moved = time.monotonic() - t0
    wc_ns = await pool.create("wc")
    pc = await admin.port(net_a.id, name="wc", binding_host_id=others[1])
    await cli(
        w.target, "port", "plug", pc.id, "--netns", wc_ns, "--node-netns", nodes[others[1]].ns
    )
    out_c = os.path.join(str(agents.state_root), "wc.lease")
    lease_c = None
    for _ in range(5):
        lease_c = await dhcp_lease(pool, wc_ns, script, out_c)
        if lease_c is not None:
            break
    assert lease_c is not None and lease_c["ip"] == pc.fixed_ips.ips[0].ip_address
    print(
        f"DHCP after the agent died: was on {a_host}, now {new_a} ({t_dhcp_moved:.2f} s);"
        f" new lease at {time.monotonic() - t0:.2f} s"
    )
    await eventually("c reaches b", reaches(wc_ns, ip_b), 10, logs)


# --------------------------------------------------------------------------- leaders


class FakeAgent:
    """A Connect stream saying Hello with services, and nothing more (no dataplane)."""

    def __init__(self, target: str, host: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.host = host
        self.call: Any = None

    async def start(self) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.call = stub.Connect(metadata=(("authorization", f"Bearer {AGENT_TOKEN}"),))
        await self.call.write(
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    host=self.host,
                    mechanism="linuxbridge",
                    supported_network_types=["vxlan", "flat", "local"],
                    services=["l2", "dhcp", "l3"],
                )
            )
        )
        await asyncio.wait_for(self.call.read(), 10)  # the snapshot

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()


async def test_only_the_leader_schedules(etcd_endpoint: str, key_prefix: bytes) -> None:
    ctl_a = make_controller(etcd_endpoint, key_prefix, dhcp_agents_per_network=2)
    ctl_b = make_controller(etcd_endpoint, key_prefix, dhcp_agents_per_network=2)
    await ctl_a.start()
    await ctl_b.start()
    fakes: list[FakeAgent] = []
    channels = []
    try:
        assert ctl_a.scheduler is not None and ctl_b.scheduler is not None
        sa, sb = ctl_a.scheduler, ctl_b.scheduler

        async def one_leader() -> bool:
            return sa.is_leader != sb.is_leader

        await eventually("one leader", one_leader, 5)
        for i, ctl in enumerate((ctl_a, ctl_b, ctl_a)):
            fake = FakeAgent(f"127.0.0.1:{ctl.port}", f"fake{i}")
            await fake.start()
            fakes.append(fake)
        clients = []
        for ctl in (ctl_a, ctl_b):
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{ctl.port}")
            channels.append(ch)
            clients.append(Client(ch, ADMIN_TOKEN))

        # Concurrent creations through both controllers.
        async def make(i: int) -> tuple[str, str]:
            c = clients[i % 2]
            net = await c.network(name=f"n{i}")
            await c.subnet(net.id, f"10.{i}.0.0/24")
            r = await L3(SimpleNamespace(channel=channels[i % 2]), c).router(name=f"r{i}")  # type: ignore[arg-type]
            return net.id, r.id

        made = await asyncio.gather(*(make(i) for i in range(9)))
        assert ctl_a.store is not None
        cache = ctl_a.store.cache

        def settled() -> bool:
            for net_id, router_id in made:
                if cache.get(RouterBinding, router_id) is None:
                    return False
                if len(cache.related(DhcpBinding, "net_dhcp", net_id)) != 2:
                    return False
            return True

        async def settled_probe() -> bool:
            await ctl_a.store.sync()  # type: ignore[union-attr]
            return settled()

        await eventually("everything scheduled", settled_probe, 10)
        await asyncio.sleep(0.5)  # any duplicate would show up by now
        for net_id, _ in made:
            bindings = cache.related(DhcpBinding, "net_dhcp", net_id)
            assert len({b.agent_id for b in bindings}) == 2, bindings
            ports = [
                p for p in cache.related(Port, "net_ports", net_id)
                if p.device_owner == "network:dhcp"
            ]  # fmt: skip
            assert sorted(p.id for p in ports) == sorted(b.port_id for b in bindings), ports
            for p in ports:
                assert len(p.fixed_ips) == 1 and not p.port_security_enabled
        # The load is spread: 9 routers on 3 agents, 3 each.
        load: dict[str, int] = {}
        for _, router_id in made:
            b = cache.get(RouterBinding, router_id)
            assert b is not None
            load[b.host] = load.get(b.host, 0) + 1
        assert sorted(load.values()) == [3, 3, 3], load

        # The leader dies (its lease is no longer refreshed, nor revoked, as when the
        # process is killed): the other takes over once the lease expires.
        leader, other = (ctl_a, ctl_b) if sa.is_leader else (ctl_b, ctl_a)
        assert leader.scheduler is not None and other.scheduler is not None
        dead, sched = leader.scheduler, other.scheduler
        assert dead._task is not None and dead._keeper is not None
        t0 = time.monotonic()
        dead._task.cancel()
        await dead._keeper.stop()
        dead._keeper = dead._lease = None

        async def took_over() -> bool:
            return sched.is_leader

        await eventually("leadership moved", took_over, 5)
        assert sched.leader_since is not None
        moved_after = sched.leader_since - t0
        print(f"leadership moved {moved_after:.2f} s after the leader died (lease TTL 1 s)")
        client = clients[1] if other is ctl_b else clients[0]
        ch = channels[1] if other is ctl_b else channels[0]
        r = await L3(SimpleNamespace(channel=ch), client).router(name="late")  # type: ignore[arg-type]
        assert other.store is not None
        ocache = other.store.cache

        async def late_bound() -> bool:
            return ocache.get(RouterBinding, r.id) is not None

        await eventually("new router scheduled by the new leader", late_bound, 5)
    finally:
        for fake in fakes:
            await step("closing a fake agent", fake.close())
        for ch in channels:
            await step("closing a channel", ch.close())
        for ctl in (ctl_a, ctl_b):
            await step("stopping a controller", ctl.stop())


async def test_dhcp_ports_follow_the_networks(etcd_endpoint: str, key_prefix: bytes) -> None:
    """The leader gives every DHCP-enabled network a network:dhcp port per slot, on each
    DHCP-enabled subnet; they never block deleting the network and go when DHCP does."""
    ctl = make_controller(etcd_endpoint, key_prefix)
    await ctl.start()
    fake = FakeAgent(f"127.0.0.1:{ctl.port}", "fake-dhcp")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ctl.port}")
    try:
        async with asyncio.timeout(40):
            await _dhcp_ports_scenario(ctl, fake, channel)
    finally:
        await step("closing the fake agent", fake.close())
        await step("closing the channel", channel.close())
        await step("stopping the controller", ctl.stop())


async def _dhcp_ports_scenario(ctl: Controller, fake: FakeAgent, channel: grpc.aio.Channel) -> None:
    await fake.start()
    admin = Client(channel, ADMIN_TOKEN)
    assert ctl.store is not None
    cache = ctl.store.cache

    def dhcp_ports(net_id: str) -> list[Port]:
        return [
            p for p in cache.related(Port, "net_ports", net_id)
            if p.device_owner == "network:dhcp"
        ]  # fmt: skip

    net = await admin.network(name="d")
    s1 = await admin.subnet(net.id, "10.50.0.0/24")

    async def one_port() -> bool:
        return len(dhcp_ports(net.id)) == 1

    await eventually("DHCP port", one_port, 5)
    port = dhcp_ports(net.id)[0]
    assert port.binding_host_id == "fake-dhcp" and port.binding_vif_type == "bridge"
    assert port.device_id.startswith("dhcp") and port.device_id.endswith(net.id)
    assert [s for s, _ in port.fixed_ips] == [s1.id]
    assert not port.security_groups and not port.port_security_enabled

    # A second DHCP subnet: the port gets an address there too.
    s2 = await admin.subnet(net.id, "10.51.0.0/24")

    async def two_ips() -> bool:
        ports = dhcp_ports(net.id)
        return len(ports) == 1 and {s for s, _ in ports[0].fixed_ips} == {s1.id, s2.id}

    await eventually("address on the new subnet", two_ips, 5)
    # DHCP off everywhere: the slot and its port go.
    await admin.update_subnet(s1.id, enable_dhcp=False)
    await admin.update_subnet(s2.id, enable_dhcp=False)

    async def no_port() -> bool:
        return not dhcp_ports(net.id) and not cache.related(DhcpBinding, "net_dhcp", net.id)

    await eventually("DHCP port removed", no_port, 5)
    await admin.update_subnet(s1.id, enable_dhcp=True)
    await eventually("DHCP port back", one_port, 5)
    # The service port does not block deleting the network; the binding goes too.
    await admin.delete_network(net.id)

    async def binding_gone() -> bool:
        return not cache.related(DhcpBinding, "net_dhcp", net.id)

    await eventually("binding removed", binding_gone, 5)
    assert not dhcp_ports(net.id)
