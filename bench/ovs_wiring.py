"""Benchmark: wire N ports (default 200) on one Open vSwitch host and on one Linux
bridge host, in one run; time from the start of ``sync`` until every port reports
ACTIVE. Prints both and the ratio. Target: 200 ports ACTIVE on one OVS host <= 1 s.

    sudo .venv/bin/python bench/ovs_wiring.py [--ports 200] [--type local|vxlan]

Each host is a network namespace named with the test RUN_PREFIX; the OVS host runs
its own ovsdb-server/ovs-vswitchd (userspace datapath). The ports' devices are
plugged beforehand (drivers.plug, all workload ends in one namespace) and are not
part of the timing: the figure is the driver's work. Everything is removed at the
end, even on failure (daemons by PID, namespaces by name).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from drivers.linuxbridge import LinuxBridgeDriver
from drivers.model import HostState, NetworkSpec, PortSpec, PortStatus
from drivers.ovs import OvsDriver
from drivers.plug import plug
from tests.support.netns import NamespacePool, run
from tests.support.ovs import OvsNodes, add_physical_bridge

Driver = OvsDriver | LinuxBridgeDriver


async def _plug_all(node_ns: str, workload: str, ports: list[PortSpec]) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int, port: PortSpec) -> None:
        async with sem:
            await plug(
                port.id, port.mac, port.mtu, netns=workload, ifname=f"e{i}", node_netns=node_ns
            )

    await asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))


async def _time_until_active(driver: Driver, desired: HostState) -> tuple[float, float]:
    """(seconds until all ACTIVE, seconds the first sync took)."""
    t0 = time.monotonic()
    statuses = await driver.sync(desired, remove_stale=True)
    first = time.monotonic() - t0
    while not all(s.status == "ACTIVE" for s in statuses):
        if time.monotonic() - t0 > 60:
            bad: list[PortStatus] = [s for s in statuses if s.status != "ACTIVE"]
            raise RuntimeError(f"{len(bad)} port(s) not ACTIVE after 60 s: {bad[:3]}")
        await asyncio.sleep(0.01)
        statuses = await driver.port_statuses(desired)
    return time.monotonic() - t0, first


def _ports(net: NetworkSpec, count: int, base: int) -> list[PortSpec]:
    return [
        PortSpec(
            str(uuid.uuid4()),
            net.id,
            f"fa:16:3e:{base:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}",
            True,
            net.mtu,
        )
        for i in range(count)
    ]


async def main(count: int, network_type: str) -> None:
    pool = NamespacePool("bench")
    ovs_nodes = OvsNodes(pool)
    drivers: list[Driver] = []
    try:
        seg = 1001 if network_type == "vxlan" else None
        net = NetworkSpec(str(uuid.uuid4()), network_type, seg, None, 1450)
        remote = {net.id: {"192.0.2.9": frozenset()}} if network_type == "vxlan" else {}

        # Open vSwitch host.
        ovs_ns = await pool.create("ovs")
        await run("ip", "-n", ovs_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth9")
        daemons = await ovs_nodes.start(ovs_ns)
        await add_physical_bridge(daemons, "br-phys", "eth0", "192.0.2.1/24")
        ovs = OvsDriver(netns=ovs_ns, ovsdb=daemons.ovsdb, tunnel_ip="192.0.2.1")
        drivers.append(ovs)
        await ovs.start()
        ovs_work = await pool.create("ovsw")
        ovs_ports = _ports(net, count, 1)
        await _plug_all(ovs_ns, ovs_work, ovs_ports)

        # Linux bridge host.
        lb_ns = await pool.create("lb")
        await run("ip", "-n", lb_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth9")
        await run("ip", "-n", lb_ns, "addr", "add", "192.0.2.2/24", "dev", "eth0")
        await run("ip", "-n", lb_ns, "link", "set", "eth0", "up")
        lb = LinuxBridgeDriver(netns=lb_ns, tunnel_ip="192.0.2.2")
        drivers.append(lb)
        await lb.start()
        lb_work = await pool.create("lbw")
        lb_ports = _ports(net, count, 2)
        await _plug_all(lb_ns, lb_work, lb_ports)

        ovs_total, ovs_first = await _time_until_active(
            ovs, HostState.build([net], ovs_ports, remote)
        )
        lb_total, lb_first = await _time_until_active(lb, HostState.build([net], lb_ports, remote))

        print(f"{count} ports, {network_type} network, time from sync start to all ACTIVE:")
        print(
            f"  openvswitch (userspace datapath): {ovs_total:.3f} s (first sync {ovs_first:.3f} s)"
        )
        print(f"  linuxbridge:                      {lb_total:.3f} s (first sync {lb_first:.3f} s)")
        print(f"  ratio openvswitch / linuxbridge:  {ovs_total / lb_total:.2f}")
        print(f"  target (OVS <= 1 s): {'met' if ovs_total <= 1.0 else 'MISSED'}")
    finally:
        for driver in drivers:
            await driver.close()
        await ovs_nodes.stop_all()
        await pool.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=200)
    parser.add_argument("--type", choices=["local", "vxlan"], default="local")
    args = parser.parse_args()
    asyncio.run(main(args.ports, args.type))
