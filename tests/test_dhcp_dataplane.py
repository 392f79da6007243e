"""The DHCP host service (drivers.dhcp) with real DHCP clients.

Topology (support/routing.py): two nodes on an underlay, Linux bridge driver on each;
tenant network A (10.0.1.0/24, VXLAN) served by dnsmasq in <prefix>qdhcp-<net> on
node 1, routed by an L3 router on node 1 to network B (10.0.2.0/24) where b1 lives on
node 2. Workloads on node 2 get their address from busybox udhcpc with our own hook
script (support/dhcp_client.py), so every lease crosses VXLAN.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio

from drivers.dhcp import (
    DhcpDriver,
    DhcpHost,
    DhcpNetworkSpec,
    DhcpPort,
    DhcpSubnet,
    HostRoute,
    config,
    process,
)
from drivers.dhcp.actual import DhcpHostActual
from drivers.dhcp.changes import (
    EnsureDhcpNamespace,
    EnsureDhcpPort,
    ReloadDnsmasq,
    SetDhcpAddresses,
    StartDnsmasq,
    WriteFile,
)
from drivers.l3 import L3Driver, RouterPort, RouterSpec
from drivers.model import NetworkSpec
from drivers.plug import plug
from tests.support.dhcp_client import dhcp_lease, install_script
from tests.support.names import RUN_PREFIX
from tests.support.netns import NamespacePool, list_run_namespaces, ns_run, ping
from tests.support.routing import Workload, World, build_world, close_world

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

LEASE_TARGET_S = 0.250


@dataclass
class Served:
    world: World
    dhcp: DhcpDriver
    l3: L3Driver
    net_a: NetworkSpec
    spec: DhcpNetworkSpec
    b1: Workload
    script: str
    tmp: str
    breakdown: str = ""

    async def sync(self, spec: DhcpNetworkSpec | None = None) -> None:
        if spec is not None:
            self.spec = spec
        await self.dhcp.sync([self.spec], remove_stale=True)

    async def new_client(self, hostname: str | None = None) -> tuple[str, str, str]:
        """A port on A bound to node 2 with a static lease: (namespace, port id, ip)."""
        n = len(self.spec.hosts) + 21
        ip = f"10.0.1.{n}"
        port = self.world.add_port(self.net_a, "node2", (ip,))
        ns = await self.world.pool.create(f"c{n}")
        host = DhcpHost(port.mac, ip, hostname)
        await self.sync(replace(self.spec, hosts=(*self.spec.hosts, host)))
        return ns, port.id, ip

    async def plug_and_lease(self, ns: str, port_id: str) -> tuple[float, dict[str, str]]:
        """Plug, let the L2 driver wire it, run udhcpc: (seconds plug -> configured, lease)."""
        spec, _ = self.world.ports[port_id]
        t0 = time.monotonic()
        await plug(spec.id, spec.mac, spec.mtu, netns=ns, node_netns=self.world.node_ns("node2"))
        t1 = time.monotonic()
        await self.world.sync_l2()  # node 2 wires the port; node 1 learns it (l2population)
        t2 = time.monotonic()
        lease = await dhcp_lease(self.world.pool, ns, self.script, os.path.join(self.tmp, ns))
        assert lease is not None, f"no lease for {ns}"
        t3 = time.monotonic()
        self.breakdown = (
            f"plug {(t1 - t0) * 1000:.0f} ms, L2 sync {(t2 - t1) * 1000:.0f} ms,"
            f" udhcpc {(t3 - t2) * 1000:.0f} ms"
        )
        return t3 - t0, lease.values


@pytest_asyncio.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    pool = NamespacePool(request.node.name.replace("_", "")[4:16])
    tmp = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}dhcp-", dir="/tmp")
    os.chmod(tmp, 0o755)
    world: World | None = None
    dhcp: DhcpDriver | None = None
    l3: L3Driver | None = None
    try:
        world = await build_world(pool, 2)
        net_a, net_b = world.tenant_network(), world.tenant_network()
        qr_a = world.add_port(net_a, "node1", ("10.0.1.1",))
        qr_b = world.add_port(net_b, "node1", ("10.0.2.1",))
        dport = world.add_port(net_a, "node1", ("10.0.1.2",))
        b1 = await world.workload(net_b, "node2", "10.0.2.11", gateway="10.0.2.1", sync=False)
        br_a, br_b = world.bridge(net_a), world.bridge(net_b)
        router = RouterSpec(
            id=f"r-{qr_a.id[:8]}",
            interfaces=(
                RouterPort(qr_a.id, net_a.id, qr_a.mac, ("10.0.1.1/24",), 1450, br_a),
                RouterPort(qr_b.id, net_b.id, qr_b.mac, ("10.0.2.1/24",), 1450, br_b),
            ),
        )
        spec = DhcpNetworkSpec(
            network_id=net_a.id,
            bridge=world.bridge(net_a),
            mtu=net_a.mtu,
            dhcp_port=DhcpPort(dport.id, dport.mac, ("10.0.1.2/24",)),
            subnets=(
                DhcpSubnet(
                    "10.0.1.0/24",
                    gateway="10.0.1.1",
                    dns_servers=("192.0.2.53",),
                    host_routes=(HostRoute("10.0.9.0/24", "10.0.1.50"),),
                ),
            ),
            lease_time=3600,
        )
        await world.sync_l2()
        l3 = L3Driver(pool.prefix + "l3-", world.node_ns("node1"))
        await l3.start()
        await l3.sync([router], remove_stale=True)
        dhcp = DhcpDriver(pool.prefix + "dh-", world.node_ns("node1"), os.path.join(tmp, "state"))
        await dhcp.start(supervise_interval=0.1)
        await dhcp.sync([spec], remove_stale=True)
        await world.sync_l2()
        env = Served(world, dhcp, l3, net_a, spec, b1, install_script(tmp), tmp)
        yield env
        dhcp = env.dhcp  # a test may have replaced it (service restart)
    finally:
        try:
            if dhcp is not None:
                try:
                    if dhcp.node_ipr_open:
                        await dhcp.stop_all()
                finally:
                    await dhcp.close()
            if l3 is not None:
                await l3.close()
            if world is not None:
                await close_world(world)
        finally:
            for pid in dnsmasq_pids(tmp):  # whatever went wrong: nothing left running
                await process.stop(pid)
            await pool.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
        assert list_run_namespaces(pool.prefix) == []


def dnsmasq_pids(state_root: str) -> list[int]:
    """Live dnsmasq processes whose PID file is under state_root (command line checked)."""
    out = []
    for root, _, files in os.walk(state_root):
        if config.PIDFILE in files:
            path = os.path.join(root, config.PIDFILE)
            pid = process.read_pid(path)
            argv = process.cmdline(pid) if pid is not None else None
            if pid is not None and argv is not None and f"--pid-file={path}" in argv:
                out.append(pid)
    return out


# -- pure ------------------------------------------------------------------------------


def test_rendering_and_plan_from_scratch() -> None:
    route = HostRoute("10.0.9.0/24", "10.0.1.50")
    spec = DhcpNetworkSpec(
        network_id="n1",
        bridge="brqn1",
        mtu=1450,
        dhcp_port=DhcpPort("p" * 36, "FA:16:3E:00:00:02", ("10.0.1.2/24",)),
        subnets=(
            DhcpSubnet("10.0.1.0/24", "10.0.1.1", ("192.0.2.53",), (route,)),
            DhcpSubnet("10.0.5.0/24", None),
            DhcpSubnet("10.0.7.0/24", "10.0.7.1", enable_dhcp=False),
        ),
        hosts=(
            DhcpHost("fa:16:3e:00:00:0b", "10.0.1.11", "vm-1"),
            DhcpHost("fa:16:3e:00:00:0c", "10.0.5.12"),
            DhcpHost("fa:16:3e:00:00:0d", "10.0.7.13"),  # DHCP disabled there: left out
        ),
        lease_time=600,
    )
    assert config.render_hosts(spec) == (
        "fa:16:3e:00:00:0b,10.0.1.11,vm-1\nfa:16:3e:00:00:0c,10.0.5.12\n"
    )
    assert config.render_opts(spec).splitlines() == [
        "tag:subnet0,option:router,10.0.1.1",
        "tag:subnet0,option:dns-server,192.0.2.53",
        "tag:subnet0,option:mtu,1450",
        "tag:subnet0,option:classless-static-route,10.0.9.0/24,10.0.1.50,0.0.0.0/0,10.0.1.1",
        "tag:subnet0,249,10.0.9.0/24,10.0.1.50,0.0.0.0/0,10.0.1.1",
        "tag:subnet1,option:router",
        "tag:subnet1,option:dns-server",
        "tag:subnet1,option:mtu,1450",
    ]
    argv = config.dnsmasq_argv(spec, config.paths_for("/s", "n1"), "ns-ppppppppppp")
    assert "--dhcp-range=set:subnet0,10.0.1.0,static,255.255.255.0,600s" in argv
    assert "--dhcp-range=set:subnet1,10.0.5.0,static,255.255.255.0,600s" in argv
    assert "--dhcp-authoritative" in argv and "--interface=ns-ppppppppppp" in argv
    assert "--dhcp-hostsfile=/s/n1/host" in argv and "--port=0" in argv
    plan = DhcpDriver("pfx-", None, "/s").diff([spec], DhcpHostActual())
    assert [type(c) for c in plan] == [
        EnsureDhcpNamespace,
        EnsureDhcpPort,
        SetDhcpAddresses,
        WriteFile,
        WriteFile,
        StartDnsmasq,
    ]
    assert plan.changes[0] == EnsureDhcpNamespace("pfx-qdhcp-n1", "/s/n1", "n1")
    assert hash(spec) == hash(replace(spec))


# -- traffic ---------------------------------------------------------------------------


async def test_lease_over_vxlan_then_gateway_and_routed_workload(served: Served) -> None:
    env = served
    plan = env.dhcp.diff([env.spec], await env.dhcp.read_actual())
    assert not plan, plan.describe()
    ns, port_id, ip = await env.new_client(hostname="vm-a")
    seconds, lease = await env.plug_and_lease(ns, port_id)
    print(f"\nDHCP lease, plug -> address configured: {seconds * 1000:.0f} ms ({env.breakdown})")
    assert lease["ip"] == ip and lease["mask"] == "24"
    assert lease["mtu"] == "1450" and lease["dns"] == "192.0.2.53"
    assert lease["hostname"] == "vm-a" and lease["lease"] == "3600"
    assert lease["staticroutes"].split() == ["10.0.9.0/24", "10.0.1.50", "0.0.0.0/0", "10.0.1.1"]
    addr = (await ns_run(ns, "ip", "-o", "-4", "addr", "show", "dev", "eth0")).stdout
    assert f"{ip}/24" in addr
    routes = (await ns_run(ns, "ip", "route")).stdout
    assert "default via 10.0.1.1" in routes and "10.0.9.0/24 via 10.0.1.50" in routes
    assert "mtu 1450" in (await ns_run(ns, "ip", "link", "show", "eth0")).stdout
    assert await ping(ns, "10.0.1.1")  # its gateway (the router, on node 1)
    assert await ping(ns, env.b1.ip)  # a workload behind the router (network B)
    # Generous bound for a loaded CI machine; the figure itself is printed (target 250 ms).
    assert seconds < 2.0
    if seconds > LEASE_TARGET_S:
        print(
            f"lease took {seconds * 1000:.0f} ms, above the {LEASE_TARGET_S * 1000:.0f} ms target"
        )


async def test_sighup_on_host_change_restart_after_kill_and_removal(served: Served) -> None:
    env = served
    net_id = env.spec.network_id
    first = env.dhcp.pid(net_id)
    assert first is not None

    # A host added: files rewritten, SIGHUP, same process - and it serves the new host.
    ns, port_id, ip = await env.new_client()  # (already synced: check what it did)
    ns2, port2, ip2 = "", "", ""
    hosts = env.spec.hosts
    spec2 = replace(env.spec, hosts=(*hosts, DhcpHost("fa:16:3e:99:00:01", "10.0.1.99")))
    plan = env.dhcp.diff([spec2], await env.dhcp.read_actual())
    assert [type(c) for c in plan] == [WriteFile, ReloadDnsmasq]
    assert plan.changes[1] == ReloadDnsmasq(
        env.dhcp.paths(net_id).directory, first, plan.changes[1].digest
    )  # type: ignore[union-attr]
    await env.sync(spec2)
    assert env.dhcp.pid(net_id) == first
    _, lease = await env.plug_and_lease(ns, port_id)
    assert lease["ip"] == ip and env.dhcp.pid(net_id) == first

    # Killed (by PID): the supervision loop starts a new one.
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (env.dhcp.restarts < 1 or env.dhcp.pid(net_id) in (None, first)) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.02)
    second = env.dhcp.pid(net_id)
    assert second is not None and second != first and env.dhcp.restarts >= 1
    assert process.cmdline(first) is None  # reaped, no zombie
    ns2, port2, ip2 = await env.new_client()
    assert env.dhcp.pid(net_id) == second
    _, lease = await env.plug_and_lease(ns2, port2)
    assert lease["ip"] == ip2

    # A restarted service (new instance, no supervision) adopts the running dnsmasq...
    await env.dhcp.close()
    env.dhcp = DhcpDriver(env.dhcp.netns_prefix, env.world.node_ns("node1"), env.dhcp.state_dir)
    await env.dhcp.start()
    assert not await env.dhcp.sync([env.spec], remove_stale=False)
    assert env.dhcp.pid(net_id) == second
    # ...and restarts it on the next sync if it died.
    os.kill(second, signal.SIGKILL)
    await asyncio.sleep(0.05)
    plan = await env.dhcp.sync([env.spec], remove_stale=True)
    assert [type(c) for c in plan] == [StartDnsmasq]
    third = env.dhcp.pid(net_id)
    assert third not in (None, second)
    # A changed lease time is on the command line: restart (the old one stopped).
    plan = await env.dhcp.sync([replace(env.spec, lease_time=7200)], remove_stale=True)
    assert [type(c) for c in plan] == [StartDnsmasq]
    assert plan.changes[0].old_pid == third  # type: ignore[union-attr]
    assert process.cmdline(third) is None
    fourth = env.dhcp.pid(net_id)
    assert fourth is not None

    # The network goes: kept without remove_stale, stopped and removed with it.
    assert not await env.dhcp.sync([], remove_stale=False)
    assert env.dhcp.pid(net_id) == fourth
    await env.dhcp.sync([], remove_stale=True)
    assert process.cmdline(fourth) is None
    assert env.dhcp.namespace(net_id) not in list_run_namespaces(env.dhcp.netns_prefix)
    assert not await asyncio.to_thread(os.path.exists, env.dhcp.paths(net_id).directory)
    assert not await ping(ns2, "10.0.1.2", wait=1)
