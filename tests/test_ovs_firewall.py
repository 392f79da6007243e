"""Security groups on Open vSwitch hosts: Neutron's hybrid plug + NftFirewall, real traffic.

Topology: two OVS "node" namespaces as in tests/test_ovs_dataplane.py (own
ovsdb-server/ovs-vswitchd each, br-phys holding the underlay NIC with the tunnel IP,
VXLAN between them), each with OvsDriver(hybrid_plug=True) and an NftFirewall in the
node namespace, driven like the agent does (agent/firewall.py NftablesFirewall: firewall,
L2, firewall again). A port with port security is plugged tap -> qbr<port> -> veth
qvb/qvo -> br-int; one without is plugged straight into br-int. Workloads are plugged
with TX offload off (the userspace datapath drops TCP otherwise).

Every nft/ovs/ip command runs inside the namespaces the test created.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest
import pytest_asyncio

from agent.firewall import NftablesFirewall
from drivers.model import HostState, NetworkSpec, PortSpec, PortStatus, RuleSpec, SecurityGroupSpec
from drivers.netlink import Link
from drivers.ovs import ActualState, OvsConfig, OvsDriver
from drivers.ovs import planner as ovs_planner
from drivers.ovs.actual import OvsBridge, OvsPort
from drivers.ovs.changes import (
    DeleteDevice,
    DeleteHybridPlug,
    EnsureHybridPlug,
    RemovePort,
    SetFlows,
    WirePort,
)
from drivers.ovs.flows import Flow
from drivers.ovs.naming import hybrid_alias, hybrid_names
from tests.support.netns import (
    NamespacePool,
    list_run_namespaces,
    ns_run,
    parse_ping_stats,
    ping,
    run,
    start_tcp_server,
    tcp_banner,
)
from tests.support.ovs import OvsNodes, add_physical_bridge
from tests.test_firewall_dataplane import (
    _TCP_ECHO,
    _TCP_TALKER,
    EGRESS_ANY,
    drain_lines,
    ingress,
    spawn_ready,
)
from tests.test_ovs_dataplane import (
    UNDERLAY,
    Cluster,
    NodeEnv,
    PortRec,
    assert_converged,
    mac_for,
    new_id,
    ping_within,
)

pytestmark = [pytest.mark.timeout(60)]
needs_ovs = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("ovs-vswitchd") is None, reason="needs openvswitch-switch"),
]


def _needs_ovs(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    for mark in needs_ovs:
        fn = mark(fn)
    return fn


# -- pure: the hybrid plug in the planner ----------------------------------------------


def test_hybrid_plug_is_planned_first_and_port_is_active_only_when_all_wired() -> None:
    config = OvsConfig(ovsdb="unix:/nonexistent/db.sock", hybrid_plug=True)
    supported = frozenset({"local"})
    net = NetworkSpec("n" * 36, "local", None, None, 1500)
    port = PortSpec("p" * 36, net.id, "fa:16:3e:00:00:01", True, 1500)
    bare = PortSpec("q" * 36, net.id, "fa:16:3e:00:00:02", True, 1500, port_security_enabled=False)
    desired = HostState.build([net], [port, bare])
    qbr, qvb, qvo = hybrid_names(port.id)
    assert (qbr, qvb, qvo) == ("qbrppppppppppp", "qvbppppppppppp", "qvoppppppppppp")
    assert ovs_planner.port_bridges(desired, config) == {port.id: qbr}

    def veth(index: int, name: str, master: int | None = None, alias: str | None = None) -> Link:
        return Link(index, name, "veth", master, 1500, True, True, None, alias, None)

    links = {
        port.device_name: veth(5, port.device_name),
        bare.device_name: veth(6, bare.device_name),
    }
    br_int = {"br-int": OvsBridge("br-int", "netdev", "secure")}
    plan = ovs_planner.diff(desired, ActualState(bridges=br_int, links=links), config, supported)
    assert plan.changes[0] == EnsureHybridPlug(port.id, port.device_name, 1500)
    wired = {c.device: c for c in plan if isinstance(c, WirePort)}
    assert set(wired) == {qvo, bare.device_name}
    assert wired[qvo].external_ids == {"iface-id": port.id, "attached-mac": port.mac}

    # Everything wired but the tap is not in its qbr: DOWN with the reason, replanned.
    alias = hybrid_alias(port.id)
    links |= {
        qbr: Link(7, qbr, "bridge", None, 1500, True, True, None, alias, None),
        qvb: veth(8, qvb, master=7, alias=alias),
        qvo: veth(9, qvo, alias=alias),
    }
    ports = {
        dev: OvsPort(
            dev,
            "br-int",
            tag=1,
            other_config={"net_uuid": net.id, "network_type": "local", "tag": "1"},
            external_ids={"iface-id": pid, "attached-mac": mac},
            mtu_request=1500,
            ofport=i + 1,
        )
        for i, (dev, pid, mac) in enumerate(
            [(qvo, port.id, port.mac), (bare.device_name, bare.id, bare.mac)]
        )
    }
    actual = ActualState(bridges=br_int, ports=ports, links=links)
    installed: dict[str, dict[int, frozenset[Flow]]] = {}
    for change in ovs_planner.diff(desired, actual, config, supported):
        if isinstance(change, SetFlows):
            installed.setdefault(change.bridge, {})[change.cookie] = frozenset(change.flows)
    actual = replace(actual, flows=installed)
    statuses = {s.port_id: s for s in ovs_planner.statuses(desired, actual, config, supported)}
    assert statuses[port.id] == PortStatus(
        port.id, "DOWN", f"hybrid plug: {port.device_name} is not in {qbr}"
    )
    assert statuses[bare.id] == PortStatus(bare.id, "ACTIVE")
    plan = ovs_planner.diff(desired, actual, config, supported)
    assert plan.changes == (EnsureHybridPlug(port.id, port.device_name, 1500),)
    links[port.device_name] = veth(5, port.device_name, master=7)
    actual = replace(actual, links=links)
    statuses = {s.port_id: s for s in ovs_planner.statuses(desired, actual, config, supported)}
    assert statuses[port.id] == PortStatus(port.id, "ACTIVE")

    # Gone: qvo unwired, hybrid devices and the tap Baryon made deleted, all stale.
    links[port.device_name] = replace(links[port.device_name], alias=f"baryon-port:{port.id}")
    gone = HostState.build([net], [bare])
    plan = ovs_planner.diff(gone, replace(actual, links=links), config, supported)
    assert [c for c in plan if not type(c).__name__.endswith("Flows")] == [
        RemovePort("br-int", qvo),
        DeleteHybridPlug(port.id),
        DeleteDevice(port.device_name),
    ]
    assert all(c.removes_stale for c in plan)
    # Hybrid plug off (no firewall): back to the tap, converging (nothing stale).
    direct = replace(config, hybrid_plug=False)
    plan = ovs_planner.diff(desired, replace(actual, links=links), direct, supported)
    assert RemovePort("br-int", qvo, stale=False) in plan.changes
    assert DeleteHybridPlug(port.id, stale=False) in plan.changes
    assert any(isinstance(c, WirePort) and c.device == port.device_name for c in plan)
    assert not plan.stale_removals


# -- dataplane -------------------------------------------------------------------------


@dataclass
class FwCluster(Cluster):
    """Cluster (tests/test_ovs_dataplane.py) with security groups and a firewall per node."""

    groups: dict[str, SecurityGroupSpec] = field(default_factory=dict)
    extra_members: dict[str, set[str]] = field(default_factory=dict)
    firewalls: dict[str, NftablesFirewall] = field(default_factory=dict)

    async def add_ovs_node(self, index: int, *, tunnel_ip_on_bridge: bool = True) -> NodeEnv:
        ns = await self._node_ns(index)
        daemons = await self.ovs_nodes.start(ns)
        tunnel_ip = f"{UNDERLAY}.{index}"
        await add_physical_bridge(daemons, "br-phys", "eth0", f"{tunnel_ip}/24")
        driver = self.make_driver(ns, daemons.ovsdb, tunnel_ip)
        await driver.start()
        env = NodeEnv(f"node{index}", ns, tunnel_ip, driver, daemons)
        self.nodes[env.name] = env
        await self.start_firewall(env.name)
        return env

    def make_driver(self, ns: str, ovsdb: str, tunnel_ip: str) -> OvsDriver:
        driver = OvsDriver(
            netns=ns,
            ovsdb=ovsdb,
            bridge_mappings={"physnet1": "br-phys"},
            tunnel_ip=tunnel_ip,
            hybrid_plug=True,
        )
        self.drivers.append(driver)
        return driver

    async def start_firewall(self, node: str) -> NftablesFirewall:
        env = self.nodes[node]
        fw = NftablesFirewall.for_driver(env.ns, env.driver)
        await fw.start()
        self.firewalls[node] = fw
        return fw

    def group(self, *rules: RuleSpec) -> SecurityGroupSpec:
        g = SecurityGroupSpec(new_id(), tuple(rules))
        self.groups[g.id] = g
        return g

    def set_rules(self, group: SecurityGroupSpec, *rules: RuleSpec) -> None:
        self.groups[group.id] = replace(group, rules=tuple(rules))

    async def add_sg_port(
        self,
        net_id: str,
        node: str,
        ip: str,
        *groups: SecurityGroupSpec,
        port_security: bool = True,
    ) -> PortRec:
        self._macs += 1
        net = self.networks[net_id]
        spec = PortSpec(
            new_id(),
            net.id,
            mac_for(self._macs),
            True,
            net.mtu,
            (ip,),
            security_group_ids=tuple(g.id for g in groups),
            port_security_enabled=port_security,
        )
        workload = await self.pool.create(f"w{self._macs}")
        rec = PortRec(spec, node, workload, ip)
        await self.plug(rec)
        self.ports[spec.id] = rec
        return rec

    def desired(self, node: str) -> HostState:
        base = super().desired(node)
        members: dict[str, set[str]] = {g: set(v) for g, v in self.extra_members.items()}
        for rec in self.ports.values():  # members on every host, as the controller does
            for gid in rec.spec.security_group_ids:
                members.setdefault(gid, set()).update(rec.spec.fixed_ips)
        return replace(
            base,
            security_groups=dict(self.groups),
            sg_members={g: frozenset(v) for g, v in members.items()},
        )

    async def converge(self, *, remove_stale: bool = True) -> dict[str, str]:
        """The agent's order on every node: firewall, L2, firewall again."""
        statuses: dict[str, str] = {}
        for name, env in self.nodes.items():
            desired = self.desired(name)
            fw = self.firewalls[name]
            await fw.before_l2(desired)
            for status in await env.driver.sync(desired, remove_stale=remove_stale):
                statuses[status.port_id] = f"{status.status} {status.reason}".strip()
            await fw.after_l2(desired)
        return statuses


FwFactory = Callable[[], Awaitable[FwCluster]]


@pytest_asyncio.fixture
async def make_fw_cluster(request: pytest.FixtureRequest) -> AsyncIterator[FwFactory]:
    pool = NamespacePool(request.node.name.replace("_", "")[4:16])
    ovs_nodes = OvsNodes(pool)
    clusters: list[FwCluster] = []

    async def factory() -> FwCluster:
        underlay = await pool.create("underlay")
        await run("ip", "-n", underlay, "link", "add", "ul0", "type", "bridge")
        await ns_run(underlay, "sysctl", "-q", "-w", "net.ipv6.conf.ul0.disable_ipv6=1")
        await run("ip", "-n", underlay, "link", "set", "ul0", "up")
        cluster = FwCluster(pool, ovs_nodes, underlay)
        clusters.append(cluster)
        await cluster.add_ovs_node(1)
        await cluster.add_ovs_node(2)
        return cluster

    try:
        yield factory
    finally:
        try:
            for cluster in clusters:
                for fw in cluster.firewalls.values():
                    await fw.close()
                for driver in cluster.drivers:
                    await driver.close()
        finally:
            try:
                await ovs_nodes.stop_all()
            finally:
                await pool.cleanup()
        assert list_run_namespaces(pool.prefix) == []


def all_active(statuses: dict[str, str], *ports: PortRec) -> None:
    for rec in ports:
        assert statuses[rec.spec.id] == "ACTIVE", statuses[rec.spec.id]


async def spoofed_ping(ns: str, source: str, address: str) -> bool:
    await ns_run(ns, "ip", "addr", "replace", f"{source}/32", "dev", "eth0")
    result = await ns_run(ns, "busybox", "ping", "-c", "1", "-W", "1", "-I", source, address,
                          check=False)  # fmt: skip
    return result.ok


@_needs_ovs
async def test_security_groups_across_ovs_hosts_with_hybrid_plug(
    make_fw_cluster: FwFactory,
) -> None:
    cluster = await make_fw_cluster()
    net = cluster.network("vxlan", 1001)
    friends = cluster.group(EGRESS_ANY)
    web = cluster.group(
        ingress("tcp", 8080, 8080, group=friends.id),
        ingress("tcp", 7000, 7000),
        ingress("icmp"),
        EGRESS_ANY,
    )
    closed = cluster.group(EGRESS_ANY)
    a = await cluster.add_sg_port(net.id, "node1", "10.0.0.1", friends)
    b = await cluster.add_sg_port(net.id, "node1", "10.0.0.3", closed)
    s = await cluster.add_sg_port(net.id, "node2", "10.0.0.2", web)
    o = await cluster.add_sg_port(net.id, "node2", "10.0.0.4", port_security=False)
    all_active(await cluster.converge(), a, b, s, o)

    # Wiring: secured ports hybrid (qvo in br-int, the tap in qbr), the open port direct.
    node2 = cluster.ovs("node2")
    actual = await assert_converged(node2, cluster.desired("node2"))
    qbr, qvb, qvo = hybrid_names(s.spec.id)
    assert actual.ports[qvo].bridge == "br-int"
    assert actual.ports[qvo].external_ids["iface-id"] == s.spec.id
    assert s.spec.device_name not in actual.ports
    assert actual.links[s.spec.device_name].master == actual.links[qbr].index
    assert actual.links[qvb].master == actual.links[qbr].index
    assert actual.ports[o.spec.device_name].bridge == "br-int"
    assert hybrid_names(o.spec.id)[0] not in actual.links
    assert node2.port_bridges(cluster.desired("node2")) == {s.spec.id: qbr}
    await assert_converged(cluster.ovs("node1"), cluster.desired("node1"))
    for name in ("node1", "node2"):  # IPv6 off on the bridge side
        for pid in (p for p, r in cluster.ports.items() if r.node == name and p != o.spec.id):
            for dev in hybrid_names(pid):
                out = await ns_run(cluster.nodes[name].ns, "sysctl", "-n",
                                   f"net.ipv6.conf.{dev}.disable_ipv6")  # fmt: skip
                assert out.stdout.strip() == "1", dev

    # ICMP allowed from anyone (warm up ARP and OVS's VTEP neighbour first).
    assert await ping_within(a.workload, s.ip, tries=3)
    assert await ping(b.workload, s.ip)
    # TCP 8080 only from the remote group "friends", across the VXLAN.
    await start_tcp_server(cluster.pool, s.workload, 8080, "web")
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"
    assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None
    # Ingress closed on a and b: no ICMP in (reply traffic of their own flows works).
    assert not await ping(s.workload, b.ip, wait=1)
    assert not await ping(s.workload, a.ip, wait=1)

    # Port security disabled: nothing filtered at that port, in or out.
    await start_tcp_server(cluster.pool, o.workload, 9090, "open")
    assert await tcp_banner(b.workload, o.ip, 9090) == "open"
    assert await ping(s.workload, o.ip)
    assert await ping(o.workload, s.ip)
    # (a secured destination still filters what the open port sends)
    assert await tcp_banner(o.workload, s.ip, 8080, wait=1) is None

    # Remote group membership: b joins "friends" (a port elsewhere would do the same):
    # one set element on node2, and b now reaches 8080.
    cluster.extra_members[friends.id] = {b.ip}
    fw2 = cluster.firewalls["node2"].fw
    desired2 = cluster.desired("node2")
    result = await fw2.sync(
        replace(desired2, ports={s.spec.id: desired2.ports[s.spec.id]}),
        {},
        port_bridges=node2.port_bridges(desired2),
    )
    assert result.plan.objects_touched == 1
    assert await tcp_banner(b.workload, s.ip, 8080) == "web"
    await cluster.converge()  # and the agent path agrees (nothing more to do)

    # Spoofed source IP: dropped at a's qbr (ICMP to s would be allowed from a.ip).
    assert not await spoofed_ping(a.workload, "10.0.0.50", s.ip)
    assert await ping(a.workload, s.ip)

    # An established TCP flow is cut when its rule goes (conntrack entries deleted).
    await spawn_ready(cluster.pool, s.workload, _TCP_ECHO, "7000")
    talker = await cluster.pool.spawn(a.workload, sys.executable, "-c", _TCP_TALKER, s.ip, "7000")
    assert sum(x.startswith("ok") for x in await drain_lines(talker, 0.8)) >= 3
    cluster.set_rules(web, ingress("tcp", 8080, 8080, group=friends.id), ingress("icmp"),
                      EGRESS_ANY)  # fmt: skip
    await cluster.converge()
    lines = await drain_lines(talker, 3.0)
    assert "dead" in lines, lines
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"

    # Port security turned off on s: re-plugged directly (qvo removed, hybrid devices
    # deleted, not as stale removals), then everything passes.
    s.spec = replace(s.spec, port_security_enabled=False)
    plan = node2.diff(cluster.desired("node2"), await node2.read_actual())
    assert RemovePort("br-int", qvo, stale=False) in plan.changes
    assert DeleteHybridPlug(s.spec.id, stale=False) in plan.changes
    assert not plan.stale_removals
    all_active(await cluster.converge(remove_stale=False), s)
    actual = await assert_converged(node2, cluster.desired("node2"))
    assert actual.ports[s.spec.device_name].bridge == "br-int"
    assert qbr not in actual.links and qvo not in actual.ports
    await start_tcp_server(cluster.pool, s.workload, 7001, "bare")
    assert await tcp_banner(b.workload, s.ip, 7001) == "bare"

    # And back on: hybrid again (tap out of br-int, into a new qbr), filtered again.
    s.spec = replace(s.spec, port_security_enabled=True)
    all_active(await cluster.converge(remove_stale=False), s)
    actual = await assert_converged(node2, cluster.desired("node2"))
    assert s.spec.device_name not in actual.ports and actual.ports[qvo].bridge == "br-int"
    assert await tcp_banner(b.workload, s.ip, 7001, wait=1) is None
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"


@_needs_ovs
async def test_restart_with_hybrid_plug_loses_no_packets_and_keeps_blocking(
    make_fw_cluster: FwFactory,
) -> None:
    cluster = await make_fw_cluster()
    net = cluster.network("vxlan", 2001)
    client = cluster.group(EGRESS_ANY)
    web = cluster.group(ingress("icmp"), ingress("tcp", 8080, 8080, group=client.id), EGRESS_ANY)
    a = await cluster.add_sg_port(net.id, "node1", "10.0.0.1", client)
    b = await cluster.add_sg_port(net.id, "node1", "10.0.0.3", cluster.group(EGRESS_ANY))
    s = await cluster.add_sg_port(net.id, "node2", "10.0.0.2", web)
    gone = await cluster.add_sg_port(net.id, "node2", "10.0.0.5", web)
    all_active(await cluster.converge(), a, b, s, gone)
    await start_tcp_server(cluster.pool, s.workload, 8080, "web")
    assert await ping_within(a.workload, s.ip, tries=3)
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"
    assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None

    # While the agent is down, `gone` is deleted in the controller: stale on node2.
    del cluster.ports[gone.spec.id]
    count = 250
    pinger = await cluster.pool.spawn(
        a.workload, "busybox", "ping", "-i", "0.01", "-c", str(count), "-W", "2", s.ip
    )
    await asyncio.sleep(0.3)

    # Restart node2's driver and firewall (new instances over what is loaded).
    node2 = cluster.nodes["node2"]
    assert node2.ovs is not None
    await cluster.firewalls["node2"].close()
    await node2.driver.close()
    node2.driver = cluster.make_driver(node2.ns, node2.ovs.ovsdb, node2.tunnel_ip)
    await node2.driver.start()
    await cluster.start_firewall("node2")
    restarted = cluster.ovs("node2")
    # Partial view first: nothing removed, nothing rewired.
    assert await restarted.sync(HostState(), remove_stale=False) == []
    desired = cluster.desired("node2")
    plan = restarted.diff(desired, await restarted.read_actual())
    assert plan.without_stale_removals().changes == ()
    assert DeleteHybridPlug(gone.spec.id) in plan.stale_removals
    all_active(await cluster.converge(remove_stale=False), s)
    assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None
    # The restart lost nothing; the stale removal below is not timed against the
    # pinger (deleting a userspace-datapath port can stall forwarding for a moment).
    out, _ = await asyncio.wait_for(pinger.communicate(), 30)
    stats = parse_ping_stats(out.decode())
    assert stats.transmitted == count
    assert stats.lost == 0, out.decode()

    await cluster.converge(remove_stale=True)
    after = await assert_converged(restarted, cluster.desired("node2"))
    gone_qbr, _, gone_qvo = hybrid_names(gone.spec.id)
    assert gone_qbr not in after.links and gone_qvo not in after.ports
    assert gone.spec.device_name not in after.links
    # Still enforcing after the restart: allowed stays allowed, blocked stays blocked.
    assert await tcp_banner(a.workload, s.ip, 8080) == "web"
    assert await tcp_banner(b.workload, s.ip, 8080, wait=1) is None
    assert not await ping(s.workload, b.ip, wait=1)
