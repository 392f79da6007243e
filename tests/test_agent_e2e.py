"""Agents end to end, with real traffic.

An in-process controller on the session etcd; two "node" namespaces joined by an
underlay (tests/support/netns.py); one ``baryon agent`` process per node (in the root
namespace, managing its node's namespace with --netns); workloads are namespaces
plugged into ports with ``baryon port plug``. Everything is removed (processes by PID)
even when the test fails. Also: controller failover, security groups enforced by
``--firewall nftables``, and the openvswitch mechanism (tests/support/ovs.py daemons).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from baryon.v1 import agent_pb2, agent_pb2_grpc, port_pb2, security_group_pb2
from controller.auth import Context, TokenTable
from controller.server import Controller
from tests.support.controller import ADMIN_TOKEN, TOKENS, Client, bearer, config
from tests.support.etcd import scratch_dir
from tests.support.netns import (
    NamespacePool,
    Node,
    announce,
    build_underlay,
    ns_run,
    parse_ping_stats,
    ping,
    run,
)
from tests.support.ovs import OvsNodes, add_physical_bridge

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

ROOT = Path(__file__).resolve().parent.parent
AGENT_TOKEN = "tok-e2e-agent"
LEASE_TTL = 4


@dataclass
class Agents:
    """The agent processes of a test, by node name; killed by PID at the end."""

    target: str
    logdir: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    started: list[asyncio.subprocess.Process] = field(default_factory=list)
    generation: int = 0

    extra: tuple[str, ...] = ()

    async def start(self, node: Node) -> asyncio.subprocess.Process:
        self.generation += 1
        path = self.logdir / f"{node.name}-{self.generation}.log"
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cli.main",
                "agent",
                "--controller",
                self.target,
                "--host",
                node.name,
                "--token",
                AGENT_TOKEN,
                "--netns",
                node.ns,
                "--tunnel-ip",
                node.tunnel_ip,
                "--poll-interval",
                "0.3",
                *self.extra,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            os.close(log)
        self.procs[node.name] = proc
        self.started.append(proc)
        return proc

    async def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def kill_all(self) -> None:
        for proc in self.started:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logdir.glob("*.log"))
        )


@asynccontextmanager
async def controller(endpoint: str, prefix: bytes) -> AsyncIterator[Controller]:
    tokens = dict(TOKENS)
    tokens[AGENT_TOKEN] = Context("service", frozenset({"agent"}))
    cfg = config(prefix.decode(), agent_lease_ttl=LEASE_TTL)
    ctl = Controller(cfg, TokenTable(tokens), [endpoint], "127.0.0.1:0")
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.stop()


async def eventually(
    what: str,
    probe: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    diag: str | Callable[[], str] = "",
) -> Any:
    """Poll `probe` until truthy; on timeout fail with `diag` (a callable: read then, so
    agent logs show what happened up to the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            text = diag() if callable(diag) else diag
            raise AssertionError(f"timed out waiting for {what}\n{text}")
        await asyncio.sleep(0.1)


def reaches(ns: str, address: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await ping(ns, address, count=1, wait=1)

    return probe


async def cli(target: str, *argv: str) -> str:
    result = await run(
        sys.executable,
        "-m",
        "cli.main",
        "--controller",
        target,
        "--token",
        ADMIN_TOKEN,
        *argv,
        time_limit=30,
    )
    return result.stdout


async def test_agents_bind_wire_and_carry_traffic(etcd_endpoint: str, key_prefix: bytes) -> None:
    pool = NamespacePool("ag")
    logdir = scratch_dir("agentlogs")
    async with controller(etcd_endpoint, key_prefix) as ctl:
        target = f"127.0.0.1:{ctl.port}"
        agents = Agents(target, logdir)
        channel = grpc.aio.insecure_channel(target)
        try:
            await _scenario(pool, agents, channel, target)
        except BaseException:
            print(agents.logs)
            raise
        finally:
            await agents.kill_all()
            await channel.close()
            await pool.cleanup()
            shutil.rmtree(logdir, ignore_errors=True)


async def _scenario(
    pool: NamespacePool, agents: Agents, channel: grpc.aio.Channel, target: str
) -> None:
    admin = Client(channel, ADMIN_TOKEN)
    agent_api = agent_pb2_grpc.AgentServiceStub(channel)
    md = bearer(ADMIN_TOKEN)
    underlay = await build_underlay(pool, 2)
    node1, node2 = underlay.nodes
    for node in underlay.nodes:
        await agents.start(node)

    async def alive_hosts() -> dict[str, agent_pb2.Agent]:
        resp = await agent_api.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md)
        return {a.host: a for a in resp.agents if a.alive}

    async def both_alive() -> bool:
        return set(await alive_hosts()) == {"node1", "node2"}

    await eventually("both agents alive", both_alive, 15, agents.logs)
    listed = await alive_hosts()
    assert listed["node1"].tunnel_ip == "192.0.2.1"
    assert "vxlan" in listed["node1"].supported_network_types

    # A tenant (vxlan) network, one port per node, bound and plugged.
    net = await admin.network(name="e2e")
    assert net.provider_network_type == "vxlan"
    await admin.subnet(net.id, "10.77.0.0/24", gateway_ip="10.77.0.254")
    w1 = await pool.create("w1")
    w2 = await pool.create("w2")
    p1 = await admin.port(net.id, name="p1", binding_host_id="node1")
    p2 = await admin.port(net.id, name="p2", binding_host_id="node2")
    for p in (p1, p2):
        assert p.binding_vif_type == "bridge", p
        assert p.status == "DOWN"
    ip1, ip2 = p1.fixed_ips.ips[0].ip_address, p2.fixed_ips.ips[0].ip_address
    out = await cli(target, "port", "plug", p1.id, "--netns", w1, "--node-netns", node1.ns,
                    "--static-ip")  # fmt: skip
    assert "tap" + p1.id[:11] in out
    await cli(target, "port", "plug", "p2", "--netns", w2, "--node-netns", node2.ns, "--static-ip")
    addr = (await ns_run(w1, "ip", "-o", "addr", "show", "dev", "eth0")).stdout
    assert f"{ip1}/24" in addr and "mtu 1450" in (await ns_run(w1, "ip", "link")).stdout

    async def status(port_id: str) -> str:
        got = await admin.ports.GetPort(port_pb2.GetPortRequest(id=port_id))
        return str(got.status)

    def status_is(port_id: str, want: str) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return await status(port_id) == want

        return probe

    # DOWN -> ACTIVE once the agents wired them; traffic crosses the VXLAN overlay.
    for p in (p1, p2):
        await eventually(f"{p.name} ACTIVE", status_is(p.id, "ACTIVE"), 10, agents.logs)
    # ACTIVE means wired on its own host; the other host's l2population entries converge
    # on their own, hence "eventually" for every ping that must pass.
    await eventually("ping across nodes over VXLAN", reaches(w1, ip2), 10, agents.logs)

    # admin_state_up false takes the port DOWN and stops the traffic; true restores it.
    async def set_admin(port_id: str, up: bool) -> None:
        await admin.ports.UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=port_id, admin_state_up=up),
                update_mask=FieldMask(paths=["admin_state_up"]),
            )
        )

    await set_admin(p2.id, False)
    await eventually("p2 DOWN", status_is(p2.id, "DOWN"), 10, agents.logs)
    assert not await ping(w1, ip2, count=1, wait=1), "ping still passes with admin down"
    await set_admin(p2.id, True)
    await eventually("p2 ACTIVE again", status_is(p2.id, "ACTIVE"), 10, agents.logs)
    await eventually("ping with admin up again", reaches(w1, ip2), 10, agents.logs)

    # Restarting node2's agent under a 10 ms ping loses nothing.
    before = (await alive_hosts())["node2"].started_at.ToNanoseconds()
    count = 300
    pinger = await pool.spawn(w1, "busybox", "ping", "-i", "0.01", "-c", str(count), "-W", "2", ip2)
    await asyncio.sleep(0.3)
    await agents.kill("node2")
    await agents.start(node2)

    async def restarted() -> bool:
        a = (await alive_hosts()).get("node2")
        return a is not None and a.started_at.ToNanoseconds() != before

    await eventually("node2's agent back", restarted, 10, agents.logs)
    out_b, _ = await asyncio.wait_for(pinger.communicate(), 30)
    stats = parse_ping_stats(out_b.decode())
    assert stats.transmitted == count and stats.lost == 0, out_b.decode()
    assert await status(p2.id) == "ACTIVE"

    # A deleted port is unwired: its device goes away and traffic stops.
    acked = (await alive_hosts())["node1"].applied_revision
    await admin.ports.DeletePort(port_pb2.DeletePortRequest(id=p2.id))

    async def tap_gone() -> bool:
        res = await ns_run(node2.ns, "ip", "link", "show", "tap" + p2.id[:11], check=False)
        return not res.ok

    await eventually("p2's device removed", tap_gone, 10, agents.logs)
    assert not await ping(w1, ip2, count=1, wait=1)

    # node1 got the deletion too (its VTEP for node2 goes) and, its stream quiet for a
    # moment, acks it: the applied revision ListAgents shows moves on (acks coalesce).
    async def node1_acked() -> bool:
        return (await alive_hosts())["node1"].applied_revision > acked

    await eventually("node1 acks the deletion", node1_acked, 10, agents.logs)

    # Re-binding moves a port: the old host unwires it (its device goes), the new host
    # wires it once the workload is plugged there.
    w3 = await pool.create("w3")
    p3 = await admin.port(net.id, name="p3", binding_host_id="node2")
    ip3 = p3.fixed_ips.ips[0].ip_address
    await cli(target, "port", "plug", p3.id, "--netns", w3, "--node-netns", node2.ns, "--static-ip")
    await eventually("p3 ACTIVE on node2", status_is(p3.id, "ACTIVE"), 10, agents.logs)
    # p3 may have been given p2's old address, which w1 still maps to p2's MAC.
    await announce(w3, ip3)
    await eventually("ping p3 on node2", reaches(w1, ip3), 10, agents.logs)
    moved = await admin.ports.UpdatePort(
        port_pb2.UpdatePortRequest(
            port=port_pb2.Port(id=p3.id, binding_host_id="node1"),
            update_mask=FieldMask(paths=["binding_host_id"]),
        )
    )
    assert moved.status == "DOWN" and moved.binding_vif_type == "bridge"

    async def p3_gone_from_node2() -> bool:
        res = await ns_run(node2.ns, "ip", "link", "show", "tap" + p3.id[:11], check=False)
        return not res.ok

    await eventually("p3 unwired on node2", p3_gone_from_node2, 10, agents.logs)
    await cli(target, "port", "plug", p3.id, "--netns", w3, "--node-netns", node1.ns, "--static-ip")
    await eventually("p3 ACTIVE on node1", status_is(p3.id, "ACTIVE"), 10, agents.logs)
    # The moved workload speaks first (as a migrated VM's gratuitous ARP would): node1's
    # bridge learned p3's MAC behind the VXLAN port while p3 was remote.
    await eventually("ping from moved p3", reaches(w3, ip1), 10, agents.logs)
    await eventually("ping moved p3", reaches(w1, ip3), 10, agents.logs)

    # A killed agent is marked dead within the lease TTL (+ margin).
    await agents.kill("node1")
    t0 = time.monotonic()

    async def node1_dead() -> bool:
        return "node1" not in await alive_hosts()

    await eventually("node1 dead", node1_dead, LEASE_TTL + 5, agents.logs)
    # Lease TTL, plus etcd's expiry check (~0.5 s) and our polling; slack for a busy CI.
    assert time.monotonic() - t0 <= LEASE_TTL + 3.0
    resp = await agent_api.ListAgents(agent_pb2.ListAgentsRequest(host="node1"), metadata=md)
    assert [(a.host, a.alive) for a in resp.agents] == [("node1", False)]
    dead = json.loads(await cli(target, "network", "agent", "list", "--dead", "-f", "json"))
    assert [(a["host"], a["alive"]) for a in dead] == [("node1", False)], dead


async def test_agents_move_to_another_controller(etcd_endpoint: str, key_prefix: bytes) -> None:
    """Agents given two controller addresses move to the second when the first stops,
    without interrupting traffic, and the second drives them from then on."""
    pool = NamespacePool("fo")
    logdir = scratch_dir("agentlogs")
    async with controller(etcd_endpoint, key_prefix) as ctl_b:
        tokens = dict(TOKENS)
        tokens[AGENT_TOKEN] = Context("service", frozenset({"agent"}))
        cfg = config(key_prefix.decode(), agent_lease_ttl=LEASE_TTL)
        ctl_a = Controller(cfg, TokenTable(tokens), [etcd_endpoint], "127.0.0.1:0")
        await ctl_a.start()
        a_running = True
        target_a, target_b = f"127.0.0.1:{ctl_a.port}", f"127.0.0.1:{ctl_b.port}"
        agents = Agents(f"{target_a},{target_b}", logdir)
        channel = grpc.aio.insecure_channel(target_b)
        try:
            admin = Client(channel, ADMIN_TOKEN)
            underlay = await build_underlay(pool, 2)
            node1, node2 = underlay.nodes
            for node in underlay.nodes:
                await agents.start(node)
            assert ctl_a.agents is not None and ctl_b.agents is not None
            a_sessions, b_sessions = ctl_a.agents.sessions, ctl_b.agents.sessions

            async def on_a() -> bool:
                return len(a_sessions) == 2

            await eventually("both agents on controller A", on_a, 15, agents.logs)
            net = await admin.network(name="fo")
            await admin.subnet(net.id, "10.78.0.0/24")
            w1, w2, w3 = [await pool.create(n) for n in ("w1", "w2", "w3")]
            p1 = await admin.port(net.id, name="p1", binding_host_id="node1")
            p2 = await admin.port(net.id, name="p2", binding_host_id="node2")
            for p, w, node in ((p1, w1, node1), (p2, w2, node2)):
                await cli(target_b, "port", "plug", p.id, "--netns", w, "--node-netns", node.ns,
                          "--static-ip")  # fmt: skip

            async def all_active(*ids: str) -> bool:
                for i in ids:
                    got = await admin.ports.GetPort(port_pb2.GetPortRequest(id=i))
                    if got.status != "ACTIVE":
                        return False
                return True

            await eventually("p1, p2 ACTIVE", lambda: all_active(p1.id, p2.id), 10, agents.logs)
            ip2 = p2.fixed_ips.ips[0].ip_address
            count = 300
            pinger = await pool.spawn(
                w1, "busybox", "ping", "-i", "0.01", "-c", str(count), "-W", "2", ip2
            )
            await asyncio.sleep(0.3)
            await ctl_a.stop()
            a_running = False

            async def on_b() -> bool:
                return len(b_sessions) == 2

            await eventually("both agents on controller B", on_b, LEASE_TTL, agents.logs)
            out, _ = await asyncio.wait_for(pinger.communicate(), 30)
            stats = parse_ping_stats(out.decode())
            assert stats.transmitted == count and stats.lost == 0, out.decode()

            # Controller B now drives node1: a new port there works.
            p3 = await admin.port(net.id, name="p3", binding_host_id="node1")
            assert p3.binding_vif_type == "bridge"
            await cli(target_b, "port", "plug", p3.id, "--netns", w3, "--node-netns", node1.ns,
                      "--static-ip")  # fmt: skip
            await eventually("p3 ACTIVE", lambda: all_active(p3.id), 10, agents.logs)
            await eventually("ping from p3", reaches(w3, ip2), 10, agents.logs)
            agent_api = agent_pb2_grpc.AgentServiceStub(channel)
            resp = await agent_api.ListAgents(
                agent_pb2.ListAgentsRequest(), metadata=bearer(ADMIN_TOKEN)
            )
            assert [(a.host, a.alive) for a in resp.agents] == [("node1", True), ("node2", True)]
        except BaseException:
            print(agents.logs)
            raise
        finally:
            await agents.kill_all()
            await channel.close()
            if a_running:
                await ctl_a.stop()
            await pool.cleanup()
            shutil.rmtree(logdir, ignore_errors=True)


async def test_security_groups_reach_the_agents_firewall(
    etcd_endpoint: str, key_prefix: bytes
) -> None:
    """With --firewall nftables, the security groups the controller sends are enforced:
    the default group admits its members, a group without ingress rules admits nobody,
    and a rule added (then removed) opens (then closes) the port."""
    pool = NamespacePool("sg")
    logdir = scratch_dir("agentlogs")
    async with controller(etcd_endpoint, key_prefix) as ctl:
        target = f"127.0.0.1:{ctl.port}"
        agents = Agents(target, logdir, extra=("--firewall", "nftables"))
        channel = grpc.aio.insecure_channel(target)
        try:
            admin = Client(channel, ADMIN_TOKEN)
            agent_api = agent_pb2_grpc.AgentServiceStub(channel)
            underlay = await build_underlay(pool, 2)
            node1, node2 = underlay.nodes
            for node in underlay.nodes:
                await agents.start(node)

            async def both_alive() -> bool:
                resp = await agent_api.ListAgents(
                    agent_pb2.ListAgentsRequest(alive=True), metadata=bearer(ADMIN_TOKEN)
                )
                return len(resp.agents) == 2

            await eventually("both agents alive", both_alive, 15, agents.logs)
            net = await admin.network(name="sg")
            await admin.subnet(net.id, "10.79.0.0/24")
            closed = await admin.sg(name="closed")
            w1, w2, w3 = [await pool.create(n) for n in ("w1", "w2", "w3")]
            p1 = await admin.port(net.id, name="p1", binding_host_id="node1")
            p2 = await admin.port(net.id, name="p2", binding_host_id="node2")
            p3 = await admin.port(
                net.id,
                name="p3",
                binding_host_id="node2",
                security_groups=port_pb2.SecurityGroupIdList(ids=[closed.id]),
            )
            for p, w, node in ((p1, w1, node1), (p2, w2, node2), (p3, w3, node2)):
                await cli(target, "port", "plug", p.id, "--netns", w, "--node-netns", node.ns,
                          "--static-ip")  # fmt: skip

            async def all_active() -> bool:
                for i in (p1.id, p2.id, p3.id):
                    got = await admin.ports.GetPort(port_pb2.GetPortRequest(id=i))
                    if got.status != "ACTIVE":
                        return False
                return True

            await eventually("ports ACTIVE", all_active, 15, agents.logs)
            ip2 = p2.fixed_ips.ips[0].ip_address
            ip3 = p3.fixed_ips.ips[0].ip_address

            async def w1_reaches(ip: str) -> bool:
                return await ping(w1, ip, count=1, wait=1)

            async def blocked(ip: str) -> bool:
                return not await w1_reaches(ip)

            await eventually("p1 -> p2 (default group members)", lambda: w1_reaches(ip2), 10)
            assert await blocked(ip3), "a group without ingress rules let ICMP in"
            rule = await admin.rule(
                security_group_id=closed.id,
                direction="ingress",
                ethertype="IPv4",
                protocol="icmp",
                remote_ip_prefix="10.79.0.0/24",
            )
            await eventually("the new ICMP rule opens p3", lambda: w1_reaches(ip3), 10)
            await admin.sgs.DeleteSecurityGroupRule(
                security_group_pb2.DeleteSecurityGroupRuleRequest(id=rule.id)
            )
            await eventually("removing the rule closes p3", lambda: blocked(ip3), 10)
        except BaseException:
            print(agents.logs)
            raise
        finally:
            await agents.kill_all()
            await channel.close()
            await pool.cleanup()
            shutil.rmtree(logdir, ignore_errors=True)


async def test_openvswitch_agents_carry_traffic(etcd_endpoint: str, key_prefix: bytes) -> None:
    """The openvswitch mechanism (drivers/ovs, userspace datapath) with --firewall nftables
    (hybrid plug): ports bind as "ovs", go ACTIVE, two OVS hosts reach each other over
    VXLAN, and a security group without ingress rules blocks the traffic."""
    pool = NamespacePool("ov")
    ovs_nodes = OvsNodes(pool)
    logdir = scratch_dir("agentlogs")
    async with controller(etcd_endpoint, key_prefix) as ctl:
        target = f"127.0.0.1:{ctl.port}"
        agents = Agents(target, logdir)
        channel = grpc.aio.insecure_channel(target)
        try:
            admin = Client(channel, ADMIN_TOKEN)
            underlay = await pool.create("underlay")
            await run("ip", "-n", underlay, "link", "add", "ul0", "type", "bridge")
            await run("ip", "-n", underlay, "link", "set", "ul0", "up")
            nodes: list[Node] = []
            for i in (1, 2):
                ns = await pool.create(f"node{i}")
                await run(
                    "ip", "-n", ns, "link", "add", "eth0", "type", "veth",
                    "peer", "name", f"u{i}", "netns", underlay,
                )  # fmt: skip
                await run("ip", "-n", underlay, "link", "set", f"u{i}", "master", "ul0", "up")
                daemons = await ovs_nodes.start(ns)
                await add_physical_bridge(daemons, "br-phys", "eth0", f"192.0.2.{i}/24")
                node = Node(f"node{i}", ns, f"192.0.2.{i}")
                nodes.append(node)
                agents.extra = (
                    "--mechanism", "openvswitch", "--ovsdb", daemons.ovsdb,
                    "--bridge-mappings", "physnet1:br-phys", "--firewall", "nftables",
                )  # fmt: skip
                await agents.start(node)
            agent_api = agent_pb2_grpc.AgentServiceStub(channel)

            async def both_alive() -> bool:
                resp = await agent_api.ListAgents(
                    agent_pb2.ListAgentsRequest(alive=True), metadata=bearer(ADMIN_TOKEN)
                )
                return sorted(a.mechanism for a in resp.agents) == ["openvswitch"] * 2

            await eventually("both OVS agents alive", both_alive, 20, agents.logs)
            net = await admin.network(name="ovs")
            await admin.subnet(net.id, "10.80.0.0/24")
            ws = [await pool.create(f"w{i}") for i in (1, 2)]
            ports = []
            for i, (w, node) in enumerate(zip(ws, nodes, strict=True)):
                p = await admin.port(net.id, name=f"p{i}", binding_host_id=node.name)
                assert p.binding_vif_type == "ovs", p
                await cli(target, "port", "plug", p.id, "--netns", w, "--node-netns", node.ns,
                          "--static-ip")  # fmt: skip
                ports.append(p)

            async def all_active() -> bool:
                for p in ports:
                    got = await admin.ports.GetPort(port_pb2.GetPortRequest(id=p.id))
                    if got.status != "ACTIVE":
                        return False
                return True

            await eventually("OVS ports ACTIVE", all_active, 20, agents.logs)
            ip2 = ports[1].fixed_ips.ips[0].ip_address
            await eventually("ping across OVS hosts", reaches(ws[0], ip2), 10)
            # A group with Neutron's egress-only defaults: ingress to port 2 is now denied.
            closed = await admin.sg(name="closed")
            await admin.update_port(
                ports[1].id, security_groups=port_pb2.SecurityGroupIdList(ids=[closed.id])
            )

            async def blocked() -> bool:
                return not await reaches(ws[0], ip2)()

            await eventually("ingress blocked on the OVS port", blocked, 10, agents.logs)
            await admin.update_port(ports[1].id, security_groups=ports[1].security_groups)
            await eventually("ingress allowed again", reaches(ws[0], ip2), 10, agents.logs)
        except BaseException:
            print(agents.logs)
            raise
        finally:
            await agents.kill_all()
            await channel.close()
            await ovs_nodes.stop_all()
            await pool.cleanup()
            shutil.rmtree(logdir, ignore_errors=True)
