"""Topologies for the L3 and DHCP dataplane tests (and bench/l3_dhcp.py).

"Node" namespaces joined by an underlay (support/netns.py), a LinuxBridgeDriver per
node wiring the L2 part exactly as the agent does (router and DHCP ports are ordinary
ports of the host state: their tap devices are made by the L3/DHCP drivers and wired
by the L2 driver), and an "external" namespace on the physical network physnet1
(203.0.113.0/24, documentation range) standing for the world outside the cloud.
Nothing here touches the root namespace.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field

from drivers.linuxbridge import LinuxBridgeDriver
from drivers.linuxbridge.naming import bridge_name
from drivers.model import HostState, NetworkSpec, PortSpec
from drivers.plug import plug
from tests.support.netns import NamespacePool, Underlay, build_underlay, run

EXTERNAL_CIDR = "203.0.113.0/24"
EXTERNAL_HOST = "203.0.113.1"  # the external namespace, also the routers' next hop
VXLAN_MTU = 1450


def new_id() -> str:
    return str(uuid.uuid4())


def mac_for(n: int) -> str:
    return f"fa:16:3e:01:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


@dataclass
class Workload:
    port: PortSpec
    node: str
    ns: str
    ip: str


@dataclass
class World:
    pool: NamespacePool
    underlay: Underlay
    l2: dict[str, LinuxBridgeDriver]
    external_ns: str
    networks: dict[str, NetworkSpec] = field(default_factory=dict)
    ports: dict[str, tuple[PortSpec, str]] = field(default_factory=dict)  # id -> (spec, node)
    _macs: int = 0
    _vni: int = 7000

    def node_ns(self, node: str) -> str:
        return next(n.ns for n in self.underlay.nodes if n.name == node)

    def next_mac(self) -> str:
        self._macs += 1
        return mac_for(self._macs)

    def tenant_network(self) -> NetworkSpec:
        self._vni += 1
        net = NetworkSpec(new_id(), "vxlan", self._vni, None, VXLAN_MTU)
        self.networks[net.id] = net
        return net

    def external_network(self) -> NetworkSpec:
        net = NetworkSpec(new_id(), "flat", None, "physnet1", 1500)
        self.networks[net.id] = net
        return net

    def bridge(self, net: NetworkSpec) -> str:
        return bridge_name(net.id)

    def add_port(self, net: NetworkSpec, node: str, ips: tuple[str, ...] = ()) -> PortSpec:
        """A port bound to `node` (its device is made by whoever plugs it)."""
        spec = PortSpec(new_id(), net.id, self.next_mac(), True, net.mtu, fixed_ips=ips)
        self.ports[spec.id] = (spec, node)
        return spec

    def remove_port(self, port_id: str) -> None:
        self.ports.pop(port_id, None)

    async def workload(
        self,
        net: NetworkSpec,
        node: str,
        ip: str | None,
        *,
        prefixlen: int = 24,
        gateway: str | None = None,
        sync: bool = True,
    ) -> Workload:
        """A workload namespace plugged into a new port (static address if ip given)."""
        spec = self.add_port(net, node, (ip,) if ip else ())
        ns = await self.pool.create(f"w{self._macs}")
        await plug(
            spec.id,
            spec.mac,
            net.mtu,
            netns=ns,
            node_netns=self.node_ns(node),
            fixed_ips=[(ip, prefixlen)] if ip else None,
            gateway=gateway,
        )
        if sync:
            await self.sync_l2()
        return Workload(spec, node, ns, ip or "")

    def desired(self, node: str) -> HostState:
        mine = [spec for spec, where in self.ports.values() if where == node]
        net_ids = {p.network_id for p in mine}
        me = next(n.tunnel_ip for n in self.underlay.nodes if n.name == node)
        vteps: dict[str, dict[str, set[str]]] = {}
        for spec, where in self.ports.values():
            net = self.networks[spec.network_id]
            if net.id not in net_ids or net.network_type != "vxlan":
                continue
            remote = next(n.tunnel_ip for n in self.underlay.nodes if n.name == where)
            if remote != me:
                vteps.setdefault(net.id, {}).setdefault(remote, set()).add(spec.mac)
        return HostState.build(
            networks=[self.networks[n] for n in net_ids], ports=mine, remote_vteps=vteps
        )

    async def sync_l2(self) -> None:
        """Every node's agent syncs (concurrently, as separate agents would)."""
        await asyncio.gather(
            *(drv.sync(self.desired(node), remove_stale=True) for node, drv in self.l2.items())
        )


async def build_world(pool: NamespacePool, nodes: int = 2) -> World:
    underlay = await build_underlay(pool, nodes, physnet=True)
    l2: dict[str, LinuxBridgeDriver] = {}
    for node in underlay.nodes:
        driver = LinuxBridgeDriver(
            netns=node.ns,
            physical_interface_mappings=node.physical_interfaces,
            tunnel_ip=node.tunnel_ip,
        )
        await driver.start()
        l2[node.name] = driver
    ext = await pool.create("ext")
    await run("ip", "-n", ext, "link", "add", "eth0", "type", "veth", "peer", "name", "pext",
              "netns", underlay.ns)  # fmt: skip
    await run("ip", "-n", underlay.ns, "link", "set", "pext", "master", "ph0", "up")
    await run("ip", "-n", ext, "addr", "add", f"{EXTERNAL_HOST}/24", "dev", "eth0")
    await run("ip", "-n", ext, "link", "set", "eth0", "up")
    return World(pool, underlay, l2, ext)


async def close_world(world: World) -> None:
    for driver in world.l2.values():
        await driver.close()


# A TCP server that answers every connection with "<banner> <peer address>".
_PEER_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[2]} {peer[0]}\\n".encode())
    c.close()
"""


async def start_peer_server(pool: NamespacePool, ns: str, port: int, banner: str) -> None:
    proc = await pool.spawn(ns, sys.executable, "-c", _PEER_SERVER, str(port), banner)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    if line.strip() != b"ready":
        raise RuntimeError(f"TCP server in {ns} did not start: {line!r}")


async def ask(ns: str, address: str, port: int, *, wait: int = 2) -> tuple[str, str] | None:
    """Connect from ns: (banner, the peer address the server saw), or None."""
    result = await run(
        "ip", "netns", "exec", ns, "busybox", "nc", "-w", str(wait), address, str(port),
        check=False, time_limit=wait + 10,
    )  # fmt: skip
    words = result.stdout.split()
    if not result.ok or len(words) != 2:
        return None
    return words[0], words[1]


_ISOLATE = """table netdev baryon_test_isolate {{
{chains}}}
"""


async def isolate_node(world: World, node: str, isolated: bool) -> None:
    """A hung node: every frame in and out of its underlay and physical NICs dropped
    (netdev ingress/egress hooks in the node's namespace), links and carrier left up - so
    switches (the underlay bridges) keep their learned MAC entries, as they would."""
    ns = world.node_ns(node)
    if not isolated:
        await run("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev",
                  "baryon_test_isolate", check=False)  # fmt: skip
        return
    chains = "".join(
        f"\tchain {hook}_{dev} {{ type filter hook {hook} device {dev} priority 0;"
        " policy drop; }\n"
        for dev in ("eth0", "eth1")
        for hook in ("ingress", "egress")
    )
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "nft", "-f", "-",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate(_ISOLATE.format(chains=chains).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"isolating {node}: {err.decode().strip()}")
