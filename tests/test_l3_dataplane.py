"""The L3 host service (drivers.l3) with real traffic.

Topology (support/routing.py): two node namespaces on an underlay, the Linux bridge
driver wiring each node; tenant networks A (10.0.1.0/24) and B (10.0.2.0/24) are VXLAN,
the external network is flat on physnet1 with an "external" namespace at 203.0.113.1.
The router runs on node 1 (namespace <agent prefix>qrouter-<id>): qr- ports on A and B,
qg- port 203.0.113.2 on the external network. Workloads: a1 (A, node 1), a2 (A, node 2),
b1 (B, node 2) - so routed traffic crosses VXLAN both ways.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio

from drivers.base import ApplyError
from drivers.l3 import FloatingIp, L3Driver, RouterPort, RouterSpec, StaticRoute, nat
from drivers.l3.actual import L3Actual
from drivers.l3.changes import (
    AnnounceAddresses,
    DeleteRouter,
    EnsureRouterNamespace,
    EnsureRouterPort,
    FlushConntrack,
    LoadNat,
    SetAddresses,
    SetRoutes,
)
from drivers.l3.naming import gateway_device, internal_device
from drivers.model import NetworkSpec, PortSpec
from tests.support.netns import (
    NamespacePool,
    list_run_namespaces,
    ns_run,
    parse_ping_stats,
    ping,
    run,
)
from tests.support.routing import (
    EXTERNAL_HOST,
    Workload,
    World,
    ask,
    build_world,
    close_world,
    isolate_node,
    start_peer_server,
)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

GW_IP = "203.0.113.2"
FIP1 = "203.0.113.10"


def router_port(world: World, net: NetworkSpec, spec: PortSpec, ip: str) -> RouterPort:
    return RouterPort(spec.id, net.id, spec.mac, (ip,), net.mtu, world.bridge(net))


@dataclass
class Routed:
    world: World
    l3: L3Driver
    prefix: str
    net_a: NetworkSpec
    net_b: NetworkSpec
    ext: NetworkSpec
    router: RouterSpec
    a1: Workload
    a2: Workload
    b1: Workload

    async def sync(self, router: RouterSpec | None = None, *, remove_stale: bool = True) -> None:
        if router is not None:
            self.router = router
        await self.world.sync_l2()
        await self.l3.sync([self.router], remove_stale=remove_stale)
        await self.world.sync_l2()

    @property
    def ns(self) -> str:
        return self.l3.namespace(self.router.id)


@pytest_asyncio.fixture
async def routed(request: pytest.FixtureRequest) -> AsyncIterator[Routed]:
    pool = NamespacePool(request.node.name.replace("_", "")[4:16])
    world: World | None = None
    drivers: list[L3Driver] = []
    try:
        world = await build_world(pool, 2)
        net_a, net_b, ext = world.tenant_network(), world.tenant_network(), world.external_network()
        qr_a = world.add_port(net_a, "node1", ("10.0.1.1",))
        qr_b = world.add_port(net_b, "node1", ("10.0.2.1",))
        qg = world.add_port(ext, "node1", (GW_IP,))
        router = RouterSpec(
            id=f"r{pool.prefix[:-1]}-{qr_a.id[:8]}",
            interfaces=(
                router_port(world, net_a, qr_a, "10.0.1.1/24"),
                router_port(world, net_b, qr_b, "10.0.2.1/24"),
            ),
            gateway=router_port(world, ext, qg, f"{GW_IP}/24"),
            gateway_nexthop=EXTERNAL_HOST,
        )
        a1 = await world.workload(net_a, "node1", "10.0.1.11", gateway="10.0.1.1", sync=False)
        a2 = await world.workload(net_a, "node2", "10.0.1.12", gateway="10.0.1.1", sync=False)
        b1 = await world.workload(net_b, "node2", "10.0.2.11", gateway="10.0.2.1", sync=False)
        prefix = pool.prefix + "l3a-"
        l3 = L3Driver(prefix, world.node_ns("node1"))
        drivers.append(l3)
        await l3.start()
        env = Routed(world, l3, prefix, net_a, net_b, ext, router, a1, a2, b1)
        await env.sync()
        yield env
    finally:
        try:
            for driver in drivers:
                await driver.close()
            if world is not None:
                await close_world(world)
        finally:
            await pool.cleanup()
        assert list_run_namespaces(pool.prefix) == []


async def assert_converged(l3: L3Driver, routers: list[RouterSpec]) -> L3Actual:
    actual = await l3.read_actual()
    plan = l3.diff(routers, actual)
    assert not plan, plan.describe()
    return actual


async def conntrack_list(ns: str, *args: str) -> str:
    result = await ns_run(ns, "conntrack", "-L", *args, check=False)
    return result.stdout


# -- pure ------------------------------------------------------------------------------


def test_plan_from_scratch_and_nat_rendering() -> None:
    qr = RouterPort("p" * 36, "n" * 36, "FA:16:3E:00:00:01", ("10.0.1.1/24",), 1450, "brqnnn")
    qg = RouterPort("g" * 36, "e" * 36, "fa:16:3e:00:00:02", ("203.0.113.2/24",), 1500, "brqeee")
    spec = RouterSpec(
        "r1",
        interfaces=(qr,),
        gateway=qg,
        gateway_nexthop="203.0.113.1",
        routes=(StaticRoute("10.9.0.0/16", "10.0.1.50"),),
        floating_ips=(FloatingIp("203.0.113.10", "10.0.1.11"),),
    )
    assert hash(spec) == hash(replace(spec)) and qr.mac == "fa:16:3e:00:00:01"
    plan = L3Driver("pfx-").diff([spec], L3Actual())
    assert [type(c) for c in plan] == [
        EnsureRouterNamespace,
        EnsureRouterPort,
        EnsureRouterPort,
        SetAddresses,
        SetAddresses,
        SetRoutes,
        LoadNat,
        AnnounceAddresses,
    ]
    assert plan.changes[0] == EnsureRouterNamespace("pfx-qrouter-r1")
    assert (
        SetAddresses(
            "pfx-qrouter-r1", gateway_device(qg.port_id), ("203.0.113.10/32", "203.0.113.2/24"), ()
        )
        in plan.changes
    )
    assert (
        SetRoutes(
            "pfx-qrouter-r1", (("0.0.0.0/0", "203.0.113.1"), ("10.9.0.0/16", "10.0.1.50")), ()
        )
        in plan.changes
    )
    assert plan.changes[-1] == AnnounceAddresses(
        "pfx-qrouter-r1",
        (
            ("qg-ggggggggggg", qg.mac, ("203.0.113.10/32", "203.0.113.2/24")),
            ("qr-ppppppppppp", qr.mac, ("10.0.1.1/24",)),
        ),
    )
    body = nat.render_body(spec)
    assert "ip daddr 203.0.113.10 dnat to 10.0.1.11" in body
    assert 'oifname "qg-ggggggggggg" ip saddr 10.0.1.11 snat to 203.0.113.10' in body
    assert 'ct status dnat iifname != "qg-ggggggggggg" snat to 203.0.113.2' in body
    assert body.index("snat to 203.0.113.10") < body.index('oifname "qg-ggggggggggg" snat to')
    no_snat = nat.render_body(replace(spec, enable_snat=False))
    assert 'oifname "qg-ggggggggggg" snat to' not in no_snat and "dnat to 10.0.1.11" in no_snat
    # Nothing runs here that is not desired: only stale routers are flagged as such.
    assert not plan.stale_removals
    with pytest.raises(ValueError):
        RouterSpec("r2", interfaces=(qr,), floating_ips=(FloatingIp("203.0.113.10", "10.0.1.1"),))


# -- traffic ---------------------------------------------------------------------------


async def test_routing_between_subnets_across_nodes_snat_and_static_route(
    routed: Routed,
) -> None:
    env, pool = routed, routed.world.pool
    actual = await assert_converged(env.l3, [env.router])
    ra = actual.routers[env.router.id]
    assert ra.forwarding and ra.nat_digest == nat.digest(nat.render_body(env.router))
    assert ra.addresses[internal_device(env.router.interfaces[0].port_id)] == {"10.0.1.1/24"}
    # The router's taps are ordinary ports to the L2 driver: wired, nothing to do.
    for node, driver in env.world.l2.items():
        assert not driver.diff(env.world.desired(node), await driver.read_actual())

    # A <-> B through the router: same node + VXLAN (a1 -> b1), both remote (a2 -> b1).
    assert await ping(env.a1.ns, env.b1.ip)
    assert await ping(env.a2.ns, env.b1.ip)
    assert await ping(env.a1.ns, "10.0.1.1") and await ping(env.b1.ns, "10.0.2.1")
    await start_peer_server(pool, env.b1.ns, 7100, "b1")
    assert await ask(env.a1.ns, env.b1.ip, 7100) == ("b1", env.a1.ip)  # no NAT inside
    assert await ask(env.a2.ns, env.b1.ip, 7100) == ("b1", env.a2.ip)

    # Out to the external network: SNAT to the gateway IP.
    await start_peer_server(pool, env.world.external_ns, 7200, "ext")
    assert await ask(env.a1.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)
    assert await ask(env.b1.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)
    # Without SNAT the external side sees the real source (and has no route back).
    await env.sync(replace(env.router, enable_snat=False))
    await assert_converged(env.l3, [env.router])
    assert await ask(env.a1.ns, EXTERNAL_HOST, 7200, wait=1) is None
    await run("ip", "-n", env.world.external_ns, "route", "add", "10.0.1.0/24", "via", GW_IP)
    assert await ask(env.a1.ns, EXTERNAL_HOST, 7200) == ("ext", env.a1.ip)
    await env.sync(replace(env.router, enable_snat=True))
    assert await ask(env.a1.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)

    # Static route: 10.0.9.0/24 lives behind r1 (10.0.2.50, a workload on B).
    r1 = await env.world.workload(env.net_b, "node2", "10.0.2.50", gateway="10.0.2.1")
    await run("ip", "-n", r1.ns, "addr", "add", "10.0.9.1/24", "dev", "lo")
    assert not await ping(env.a1.ns, "10.0.9.1", wait=1)
    # A next hop on no connected subnet is refused; the good route still goes in.
    good, bad = StaticRoute("10.0.9.0/24", "10.0.2.50"), StaticRoute("10.0.8.0/24", "10.0.77.1")
    with pytest.raises(ApplyError) as info:
        await env.sync(replace(env.router, routes=(good, bad)))
    assert [type(c) for c, _ in info.value.failures] == [SetRoutes]
    assert await ping(env.a1.ns, "10.0.9.1")
    await env.sync(replace(env.router, routes=(good,)))
    actual = await assert_converged(env.l3, [env.router])
    assert actual.routers[env.router.id].routes == {
        ("10.0.9.0/24", "10.0.2.50"),
        ("0.0.0.0/0", EXTERNAL_HOST),
    }
    await start_peer_server(pool, r1.ns, 7300, "far")
    assert await ask(env.a2.ns, "10.0.9.1", 7300) == ("far", env.a2.ip)
    await env.sync(replace(env.router, routes=()))
    assert not await ping(env.a1.ns, "10.0.9.1", wait=1)
    assert await ping(env.a1.ns, env.b1.ip)


async def test_floating_ip_hairpin_move_and_conntrack_flush(routed: Routed) -> None:
    env, pool, ext = routed, routed.world.pool, routed.world.external_ns
    await start_peer_server(pool, env.a1.ns, 7400, "a1")
    await start_peer_server(pool, env.a2.ns, 7400, "a2")
    await start_peer_server(pool, ext, 7200, "ext")
    assert await ask(ext, FIP1, 7400, wait=1) is None

    await env.sync(replace(env.router, floating_ips=(FloatingIp(FIP1, env.a1.ip),)))
    actual = await assert_converged(env.l3, [env.router])
    ra = actual.routers[env.router.id]
    assert ra.nat_fips == {FloatingIp(FIP1, env.a1.ip)}
    assert f"{FIP1}/32" in ra.addresses[gateway_device(env.router.gateway.port_id)]  # type: ignore[union-attr]
    # In by the floating IP: the workload sees the real external source...
    assert await ask(ext, FIP1, 7400) == ("a1", EXTERNAL_HOST)
    assert await ping(ext, FIP1)
    # ...and out: it leaves with its floating IP, others still with the gateway IP.
    assert await ask(env.a1.ns, EXTERNAL_HOST, 7200) == ("ext", FIP1)
    assert await ask(env.a2.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)
    # Hairpin: a2, on a1's own subnet, reaches a1 by its floating IP (via the router).
    assert await ask(env.a2.ns, FIP1, 7400) == ("a1", GW_IP)
    assert await ask(env.a1.ns, FIP1, 7400) == ("a1", GW_IP)  # even a1 itself
    # From another subnet (b1 on node 2) too.
    assert await ask(env.b1.ns, FIP1, 7400) == ("a1", GW_IP)

    # A long-lived flow to the floating IP (continuous ping from outside).
    pinger = await pool.spawn(ext, "busybox", "ping", "-i", "0.05", "-c", "60", FIP1)
    await asyncio.sleep(0.5)
    assert f"src={env.a1.ip}" in await conntrack_list(env.ns, "-p", "icmp", "-d", FIP1)

    # Move it to a2: new connections and the existing ping flow go to a2.
    moved = replace(env.router, floating_ips=(FloatingIp(FIP1, env.a2.ip),))
    plan = env.l3.diff([moved], await env.l3.read_actual())
    assert [type(c) for c in plan] == [LoadNat, FlushConntrack]  # same address, same MAC
    assert plan.changes[-1] == FlushConntrack(env.ns, (FIP1,))
    await env.sync(moved)
    assert await ask(ext, FIP1, 7400) == ("a2", EXTERNAL_HOST)
    assert await ask(env.a2.ns, EXTERNAL_HOST, 7200) == ("ext", FIP1)
    assert await ask(env.a1.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)
    await asyncio.sleep(0.3)
    entries = await conntrack_list(env.ns, "-p", "icmp", "-d", FIP1)
    assert f"src={env.a2.ip}" in entries and f"src={env.a1.ip}" not in entries, entries
    out, _ = await asyncio.wait_for(pinger.communicate(), 30)
    stats = parse_ping_stats(out.decode())
    assert stats.received >= stats.transmitted - 3, out.decode()

    # Removed: unreachable, its address gone, its connections forgotten.
    await env.sync(replace(env.router, floating_ips=()))
    actual = await assert_converged(env.l3, [env.router])
    assert (
        f"{FIP1}/32"
        not in actual.routers[env.router.id].addresses[
            gateway_device(env.router.gateway.port_id)  # type: ignore[union-attr]
        ]
    )
    assert FIP1 not in await conntrack_list(env.ns)
    assert await ask(ext, FIP1, 7400, wait=1) is None
    assert await ask(env.a2.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)


async def test_restart_resync_keeps_traffic_and_removes_stale_router(routed: Routed) -> None:
    env, pool, ext = routed, routed.world.pool, routed.world.external_ns
    await env.sync(replace(env.router, floating_ips=(FloatingIp(FIP1, env.b1.ip),)))
    # A router this agent ran before but no longer should (stale).
    old = RouterSpec(id=f"old-{env.router.id}")
    await env.l3.sync([env.router, old], remove_stale=True)
    stale_ns = env.l3.namespace(old.id)
    assert stale_ns in list_run_namespaces(env.prefix)

    count = 120
    inside = await pool.spawn(
        env.a1.ns, "busybox", "ping", "-i", "0.02", "-c", str(count), env.b1.ip
    )
    outside = await pool.spawn(ext, "busybox", "ping", "-i", "0.02", "-c", str(count), FIP1)
    await asyncio.sleep(0.3)
    await env.l3.close()
    # (This one loads and reads NAT with the nft command, not libnftables: same result.)
    restarted = L3Driver(env.prefix, env.world.node_ns("node1"), nft_library=False)
    await restarted.start()
    try:
        # Nothing to change for the known router; the unknown one is kept (partial view).
        plan = await restarted.sync([env.router], remove_stale=False)
        assert not plan, plan.describe()
        assert stale_ns in list_run_namespaces(env.prefix)
        plan = await restarted.sync([env.router], remove_stale=True)
        assert list(plan) == [DeleteRouter(stale_ns)]
        assert stale_ns not in list_run_namespaces(env.prefix)
        await assert_converged(restarted, [env.router])
        for proc in (inside, outside):
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            stats = parse_ping_stats(out.decode())
            assert stats.transmitted == count and stats.lost == 0, out.decode()

        # Admin state down stops forwarding; up restores it.
        down = replace(env.router, admin_state_up=False)
        await restarted.sync([down], remove_stale=True)
        await env.world.sync_l2()
        assert not await ping(env.a1.ns, env.b1.ip, wait=1)
        await restarted.sync([env.router], remove_stale=True)
        assert await ping(env.a1.ns, env.b1.ip)
        assert await ask(env.a1.ns, EXTERNAL_HOST, 7200, wait=1) is None  # no server yet
        await start_peer_server(pool, ext, 7200, "ext")
        assert await ask(env.b1.ns, EXTERNAL_HOST, 7200) == ("ext", FIP1)

        # A router port removed from the router: its devices (tap included) go.
        gone = env.router.interfaces[1]
        await restarted.sync([replace(env.router, interfaces=env.router.interfaces[:1],
                                      floating_ips=())], remove_stale=True)  # fmt: skip
        actual = await restarted.read_actual()
        assert internal_device(gone.port_id) not in actual.routers[env.router.id].links
        assert "tap" + gone.port_id[:11] not in actual.taps
        assert not await ping(env.a1.ns, env.b1.ip, wait=1)
    finally:
        await restarted.close()


async def test_failover_to_another_node_with_another_agent_prefix(routed: Routed) -> None:
    """Node 1 hangs (its NICs drop everything, carrier stays up); node 2's L3 agent (its
    own namespace prefix) builds the router from scratch. Traffic resumes at once: the
    gratuitous ARPs sent for the gateway and floating IPs teach the external bridge,
    which still has the router's MAC behind node 1, where it is now."""
    env, pool, ext, world = routed, routed.world.pool, routed.world.external_ns, routed.world
    router = replace(env.router, floating_ips=(FloatingIp(FIP1, env.b1.ip),))
    await env.sync(router)
    await start_peer_server(pool, env.b1.ns, 7400, "b1")
    assert await ask(ext, FIP1, 7400) == ("b1", EXTERNAL_HOST)

    await isolate_node(world, "node1", True)
    assert await ask(ext, FIP1, 7400, wait=1) is None
    for port in router.all_ports:  # the controller binds the router's ports to node 2
        spec, _ = world.ports[port.port_id]
        world.ports[port.port_id] = (spec, "node2")
    other = L3Driver(env.prefix.replace("l3a-", "l3b-"), world.node_ns("node2"))
    await other.start()
    try:
        await world.l2["node2"].sync(world.desired("node2"), remove_stale=True)
        plan = await other.sync([router], remove_stale=True)
        assert any(isinstance(c, AnnounceAddresses) for c in plan)
        await world.l2["node2"].sync(world.desired("node2"), remove_stale=True)
        assert other.namespace(router.id) != env.ns  # both exist: no collision
        assert await ask(ext, FIP1, 7400) == ("b1", EXTERNAL_HOST)
        assert await ping(env.a2.ns, env.b1.ip)
        assert await ask(env.a2.ns, EXTERNAL_HOST, 7200, wait=1) is None  # no server yet
        await start_peer_server(pool, ext, 7200, "ext")
        assert await ask(env.a2.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)

        # Node 1 comes back: its agent drops the router it no longer hosts, then its
        # links come up; a1 (on node 1) is routed by node 2 now.
        assert list(await env.l3.sync([], remove_stale=True)) == [DeleteRouter(env.ns)]
        await world.l2["node1"].sync(world.desired("node1"), remove_stale=True)
        await isolate_node(world, "node1", False)
        await world.sync_l2()
        assert await ping(env.a1.ns, env.b1.ip)
        assert await ask(env.a1.ns, EXTERNAL_HOST, 7200) == ("ext", GW_IP)
        assert await ask(ext, FIP1, 7400) == ("b1", EXTERNAL_HOST)
    finally:
        await other.close()
