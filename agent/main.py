"""``baryon agent``: the node agent.

It connects to a controller (the first of ``--controller`` that answers; on failure the
next, with backoff), says Hello, and keeps a local copy of the host's desired state
from the Snapshot and Deltas the controller streams. A converge loop hands that state
to the mechanism driver whenever it changes (and every ``--poll-interval`` seconds, to
pick up devices plugged in since), acknowledges the revision it applied and reports
the port statuses that changed. Stale devices are only removed once a full snapshot
has been received, so a restarted agent never interrupts traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from agent.firewall import FIREWALLS, NftablesFirewall
from agent.linkwatch import watch_links
from agent.services import Services
from agent.state import DesiredState
from baryon.v1 import agent_pb2, agent_pb2_grpc
from controller.config import default_state_dir
from drivers.base import ApplyError, MechanismDriver
from drivers.dhcp import DhcpDriver
from drivers.l3 import L3Driver
from drivers.linuxbridge import LinuxBridgeDriver
from drivers.model import HostState, PortStatus, port_device_name
from drivers.netlink import avoid_forking_for_netns_sockets

log = logging.getLogger("baryon.agent")

MECHANISMS = ("linuxbridge", "openvswitch")
AGENT_TYPES = {"linuxbridge": "Linux bridge agent", "openvswitch": "Open vSwitch agent"}
SERVICES = ("l2", "dhcp", "l3")
IMPLEMENTED_SERVICES = frozenset({"l2", "dhcp", "l3"})
# See the platform notes: ping_timeout decides when a dead peer is dropped; pings must
# not stop on an idle stream; the server accepts pings every 5 s.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 6_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Reconnect quickly: our own loop does the backoff.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)
Driver = MechanismDriver[Any]
# Seconds without a message before the applied revision is acked, and the longest
# an ack waits while messages keep coming (see Agent.report).
ACK_QUIET = 1.0
ACK_MAX = 10.0
DEFAULT_POLL_INTERVAL = 1.0  # seconds between full syncs when nothing asks for one
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0


class FatalError(Exception):
    """Retrying cannot help (bad token, rejected hello)."""


class UsageError(Exception):
    """The command line asks for something this agent cannot do."""


def _mappings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        physnet, sep, dev = item.partition(":")
        if not sep or not physnet or not dev:
            raise argparse.ArgumentTypeError(f"expected PHYSNET:DEVICE, got {item!r}")
        out[physnet] = dev
    return out


def _services(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    for s in items:
        if s not in SERVICES:
            raise argparse.ArgumentTypeError(f"unknown service {s!r} ({', '.join(SERVICES)})")
    return items


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="baryon agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--controller", required=True, help="ADDR[,ADDR...] of controllers")
    p.add_argument("--host", required=True, help="this host's name (ports bind to it)")
    p.add_argument("--mechanism", choices=MECHANISMS, default="linuxbridge")
    p.add_argument("--token", required=True, help="a token with the agent (or admin) role")
    p.add_argument("--tunnel-ip", default=None, help="local VTEP address (enables VXLAN)")
    p.add_argument(
        "--physical-interface-mappings",
        type=_mappings,
        default={},
        metavar="PHYSNET:DEV[,...]",
        help="linuxbridge: physical network -> NIC",
    )
    p.add_argument(
        "--bridge-mappings",
        type=_mappings,
        default={},
        metavar="PHYSNET:BRIDGE[,...]",
        help="openvswitch: physical network -> existing OVS bridge holding the NIC",
    )
    p.add_argument("--services", type=_services, default=["l2"], metavar="l2[,dhcp,l3]")
    p.add_argument("--netns", default=None, help="the namespace this agent manages as its host")
    p.add_argument("--ovsdb", default=None, help="unix:/abs/db.sock (openvswitch)")
    p.add_argument(
        "--firewall",
        choices=FIREWALLS,
        default="nftables",
        help="security groups: nftables (default) or none (no filtering on this host)",
    )
    p.add_argument(
        "--netns-prefix",
        default=None,
        help="prefix of the router/DHCP namespaces this agent creates (default: HOST-)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="DHCP state (default: $BARYON_STATE_DIR or /var/lib/baryon, + agent-HOST/dhcp)",
    )
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL, metavar="SECONDS")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(list(argv))


def _version() -> str:
    try:
        return importlib.metadata.version("baryon")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class NodeAgent:
    def __init__(
        self,
        args: argparse.Namespace,
        driver: Driver,
        firewall: NftablesFirewall | None = None,
        services: Services | None = None,
    ) -> None:
        self.args = args
        self.driver = driver
        self.firewall = firewall
        self.service_drivers = services
        self.service_report: agent_pb2.ServiceStatusReport | None = None
        self.addresses = [a.strip() for a in args.controller.split(",") if a.strip()]
        self.state = DesiredState()
        self.dirty = asyncio.Event()
        self.call: Any = None  # the live Connect call, once Hello is sent
        self.acked = 0
        self.acked_at = 0.0
        self.last_message_at = 0.0
        # What the next converge must cover: these ports only, or everything.
        self.dirty_ports: set[str] = set()
        self.full_sync = True
        self.firewall_dirty = False
        self._devices: dict[str, str] = {}  # port device name -> port id
        self.scoped_syncs = 0
        self.full_syncs = 0
        self.reported: dict[str, tuple[str, str]] = {}
        self.services = [s for s in args.services if s in IMPLEMENTED_SERVICES]
        self.received = False  # whether the current session got anything yet

    def hello(self) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(
            hello=agent_pb2.Hello(
                host=self.args.host,
                agent_type=AGENT_TYPES[self.args.mechanism],
                mechanism=self.args.mechanism,
                supported_network_types=sorted(self.driver.supported_network_types()),
                physical_network_mappings=physnet_mappings(self.args),
                tunnel_ip=self.args.tunnel_ip or "",
                last_revision=self.state.revision if self.state.complete else 0,
                version=_version(),
                services=self.services,
            )
        )

    async def run(self) -> None:
        converge = asyncio.create_task(self.converge_loop())
        # A workload plugged after its port's Delta: converge now, not at the next poll.
        links = asyncio.create_task(watch_links(self.args.netns, self.link_changed))
        try:
            await self.connect_loop()
        finally:
            converge.cancel()
            links.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await converge
            with contextlib.suppress(asyncio.CancelledError):
                await links

    # -- controller connection
    async def connect_loop(self) -> None:
        """Stay connected: after any session ends, try the next address (a controller
        that just failed is the least likely to answer), with backoff while none does."""
        backoff = BACKOFF_START
        index = 0
        while True:
            address = self.addresses[index % len(self.addresses)]
            self.received = False
            try:
                await self.session(address)
                log.warning("controller %s closed the stream", address)
            except grpc.aio.AioRpcError as err:
                if err.code() in FATAL_CODES:
                    raise FatalError(f"{err.code().name}: {err.details()}") from None
                log.warning("controller %s: %s: %s", address, err.code().name, err.details())
            index += 1
            if self.received:
                backoff = BACKOFF_START  # it worked for a while: come back quickly
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def session(self, address: str) -> None:
        """One Connect stream, until it ends."""
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect(metadata=(("authorization", f"Bearer {self.args.token}"),))
            try:
                try:
                    await call.write(self.hello())
                except grpc.aio.AioRpcError:
                    # The write fails when the server ended the call first (rejected
                    # us); its status says why.
                    code = await call.code()
                    if code in FATAL_CODES:
                        raise FatalError(f"{code.name}: {await call.details()}") from None
                    raise
                self.acked = 0
                self.reported.clear()
                self.service_report = None
                self.call = call
                log.info("connected to %s (had revision %d)", address, self.state.revision)
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        return
                    self.received = True
                    assert isinstance(msg, agent_pb2.ControllerMessage)
                    self.apply(msg)
            finally:
                self.call = None
                call.cancel()

    def apply(self, msg: agent_pb2.ControllerMessage) -> None:
        self.last_message_at = time.monotonic()
        kind = msg.WhichOneof("kind")
        if kind == "snapshot":
            self.state.apply_snapshot(msg.snapshot)
            log.info(
                "snapshot at revision %d: %d networks, %d ports",
                msg.snapshot.revision,
                len(self.state.networks),
                len(self.state.ports),
            )
        elif kind == "delta":
            self.state.apply_delta(msg.delta)
            log.debug("delta at revision %d", msg.delta.revision)
            scope = _delta_scope(msg.delta)
            if scope is not None:
                ports, groups = scope
                self.dirty_ports.update(ports)
                self.firewall_dirty |= groups
                self.dirty.set()
                return
        elif kind == "resync":
            log.warning("controller resyncs this agent: %s", msg.resync.reason)
            return
        if log.isEnabledFor(logging.DEBUG):
            what = getattr(msg, kind) if kind else None
            fields = [f.name for f, _ in what.ListFields()] if what is not None else []
            log.debug("%s (%s): full sync", kind, ", ".join(fields))
        self.full_sync = True
        self.dirty.set()

    def link_changed(self, name: str | None) -> None:
        """A port device appeared, changed or went (None: some may have, unseen)."""
        port_id = None
        if name is not None:
            port_id = self._devices.get(name)
            if port_id is None:
                self._devices = {port_device_name(p): p for p in self.state.ports}
                port_id = self._devices.get(name)
        if port_id is not None and port_id in self.state.ports:
            self.dirty_ports.add(port_id)
        else:
            log.debug("link %s changed: not a port here; full sync", name)
            self.full_sync = True  # not a port we know: maybe a stale device to remove
        self.dirty.set()

    async def send(self, msg: agent_pb2.AgentMessage) -> None:
        call = self.call
        if call is None:
            return
        try:
            await call.write(msg)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as err:
            log.debug("send failed (stream closing): %r", err)

    # -- converge
    async def converge_loop(self) -> None:
        """Converge when told to and at least every poll interval. A wake-up about some
        ports only (their Delta, their device's link notification) converges just those
        when the driver can (``sync_ports``); everything else, and the periodic round,
        is a full sync (read the whole host back, diff, remove what is stale)."""
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), self.args.poll_interval)
            self.dirty.clear()
            if not self.state.complete:
                continue  # nothing is known yet: touch nothing
            full = self.full_sync or loop.time() - last_full >= self.args.poll_interval
            ports, self.dirty_ports = self.dirty_ports, set()
            groups, self.firewall_dirty = self.firewall_dirty, False
            try:
                if not full and (ports or groups):
                    self.scoped_syncs += 1
                    full = not await self.converge_ports(ports)
                    if full:
                        log.debug("the driver cannot sync %s alone; full sync", sorted(ports))
                if full:
                    self.full_sync = False
                    last_full = loop.time()
                    self.full_syncs += 1
                    await self.converge()
            except Exception:
                # Never let the loop die: the next round (at most poll_interval away)
                # starts again from what the host looks like then, in full.
                log.exception("converge failed")
                self.full_sync = True

    async def converge_ports(self, ports: set[str]) -> bool:
        """Converge just `ports`; False when only a full sync can (nothing done then)."""

        async def sync(desired: HostState) -> list[PortStatus] | None:
            return await self.driver.sync_ports(desired, ports) if ports else []

        return await self._converge_l2(sync, partial=True)

    async def converge(self) -> None:
        async def sync(desired: HostState) -> list[PortStatus]:
            return await self.driver.sync(desired, remove_stale=True)

        await self._converge_l2(sync, partial=False)
        if self.service_drivers is not None:
            result = await self.service_drivers.converge(
                dict(self.state.routers), dict(self.state.dhcp_networks)
            )
            if result.changed:
                # New router / DHCP taps: let the L2 driver wire them at once.
                self.dirty.set()
            if self.call is not None and result.report != self.service_report:
                await self.send(agent_pb2.AgentMessage(service_status=result.report))
                self.service_report = result.report

    async def _converge_l2(
        self,
        sync: Callable[[HostState], Awaitable[list[PortStatus] | None]],
        *,
        partial: bool,
    ) -> bool:
        """Firewall, L2 `sync`, firewall again (bridges it created), then the statuses.
        False, having reported nothing, when `sync` declines (None)."""
        desired = self.state.host_state()
        revision = self.state.revision
        if self.firewall is not None:
            await self.firewall.before_l2(desired)
        try:
            statuses = await sync(desired)
        except ApplyError as err:
            log.warning("%s", err)
            statuses = err.statuses
        if statuses is None:
            return False
        if self.firewall is not None:
            await self.firewall.after_l2(desired)
        await self.report(revision, statuses, partial=partial)
        return True

    async def report(
        self, revision: int, statuses: list[PortStatus], *, partial: bool = False
    ) -> None:
        """Send the statuses that changed; `partial`: these are some of the host's
        ports only (a scoped sync), so the others are not forgotten."""
        if self.call is None:
            return
        if not partial:
            current = {s.port_id for s in statuses}
            for gone in self.reported.keys() - current:
                del self.reported[gone]  # left this host: report afresh if it comes back
        changed = [
            agent_pb2.PortStatus(port_id=s.port_id, status=s.status, reason=s.reason)
            for s in statuses
            if self.reported.get(s.port_id) != (s.status, s.reason)
        ]
        if changed:
            await self.send(
                agent_pb2.AgentMessage(port_status=agent_pb2.PortStatusReport(statuses=changed))
            )
            for s in statuses:
                self.reported[s.port_id] = (s.status, s.reason)
        # Acks only feed the applied revision that ListAgents shows, so they are
        # coalesced: one goes with every status report, else once the stream has been
        # quiet for ACK_QUIET (converge runs at least every poll interval, so that is
        # soon), and at least every ACK_MAX while changes keep coming. An ack per delta
        # would cost a controller serving 1,000 agents 1,000 reads per change, in the
        # middle of its fan-out of the next one.
        now = time.monotonic()
        settled = now - self.last_message_at >= ACK_QUIET or now - self.acked_at >= ACK_MAX
        if revision != self.acked and (changed or settled):
            await self.send(agent_pb2.AgentMessage(ack=agent_pb2.Ack(revision=revision)))
            self.acked = revision
            self.acked_at = now


# Delta fields a scoped converge covers: port upserts (the driver's sync_ports) and
# security group data (the firewall, which always syncs the whole desired state).
_SCOPED_FIELDS = frozenset({"revision", "upsert_ports"})
_FIREWALL_FIELDS = frozenset(
    {
        "upsert_security_groups",
        "delete_security_groups",
        "upsert_security_group_members",
        "delete_security_group_members",
    }
)


def _delta_scope(delta: agent_pb2.Delta) -> tuple[list[str], bool] | None:
    """(ports added or changed, whether security group data changed) when that is all a
    Delta does; None when it needs a full sync (deletions, networks, VTEPs, services)."""
    groups = False
    for field, _ in delta.ListFields():
        if field.name in _FIREWALL_FIELDS:
            groups = True
        elif field.name not in _SCOPED_FIELDS:
            return None
    return [p.id for p in delta.upsert_ports], groups


def make_services(args: argparse.Namespace) -> Services | None:
    """The L3 / DHCP service drivers --services asks for (linuxbridge only)."""
    wanted = {"l3", "dhcp"} & set(args.services)
    if not wanted:
        return None
    if args.mechanism != "linuxbridge":
        raise UsageError("the dhcp and l3 services work with the linuxbridge mechanism only")
    prefix = args.netns_prefix if args.netns_prefix is not None else f"{args.host}-"
    l3 = L3Driver(prefix, args.netns) if "l3" in wanted else None
    dhcp = None
    if "dhcp" in wanted:
        state = args.state_dir or os.path.join(str(default_state_dir()), f"agent-{args.host}")
        dhcp_dir = os.path.join(state, "dhcp")
        os.makedirs(dhcp_dir, exist_ok=True)
        dhcp = DhcpDriver(prefix, args.netns, dhcp_dir)
    return Services(l3, dhcp)


def physnet_mappings(args: argparse.Namespace) -> dict[str, str]:
    """Physical network -> NIC (linuxbridge) or OVS bridge (openvswitch)."""
    if args.mechanism == "openvswitch":
        # --physical-interface-mappings is accepted for OVS too, as bridge names.
        return dict(args.bridge_mappings or args.physical_interface_mappings)
    return dict(args.physical_interface_mappings)


def make_driver(args: argparse.Namespace) -> Driver:
    """The mechanism driver for --mechanism; raises UsageError when it cannot be made."""
    if args.mechanism == "linuxbridge":
        if args.bridge_mappings:
            raise UsageError("--bridge-mappings is for --mechanism openvswitch")
        return LinuxBridgeDriver(
            netns=args.netns,
            physical_interface_mappings=args.physical_interface_mappings,
            tunnel_ip=args.tunnel_ip,
        )
    try:
        from drivers.ovs import OvsDriver
    except ImportError as err:
        raise UsageError(f"the openvswitch mechanism is not implemented yet ({err})") from None
    if not args.ovsdb:
        raise UsageError("--mechanism openvswitch needs --ovsdb unix:/abs/db.sock")
    driver: Driver = OvsDriver(
        netns=args.netns,
        ovsdb=args.ovsdb,
        bridge_mappings=physnet_mappings(args),
        tunnel_ip=args.tunnel_ip,
        # Security groups on OVS need Neutron's hybrid plug: a per-port Linux bridge
        # where the nftables firewall sees the port's traffic.
        hybrid_plug=args.firewall == "nftables",
    )
    return driver


async def run(args: argparse.Namespace) -> int:
    avoid_forking_for_netns_sockets()
    for s in args.services:
        if s not in IMPLEMENTED_SERVICES:
            log.warning("service %s is not implemented yet; running without it", s)
    try:
        driver = make_driver(args)
        services = make_services(args)
    except UsageError as err:
        print(f"baryon agent: {err}", file=sys.stderr)
        return 2
    await driver.start()
    firewall = (
        NftablesFirewall.for_driver(args.netns, driver) if args.firewall == "nftables" else None
    )
    if firewall is not None:
        await firewall.start()
    if services is not None:
        await services.start()
    agent = NodeAgent(args, driver, firewall, services)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("stopping (the dataplane is left as it is)")
    except FatalError as err:
        print(f"baryon agent: {err}", file=sys.stderr)
        return 1
    finally:
        if firewall is not None:
            await firewall.close()
        if services is not None:
            await services.close()
        await driver.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(run(args))
    except (ValueError, OSError) as e:
        print(f"baryon agent: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
