"""Open vSwitch daemons for one test "node" namespace, and the host prerequisite the
OVS driver expects (a netdev bridge holding the underlay NIC, the tunnel IP on its
internal port).

Each OvsDaemons runs its own ovsdb-server (root namespace: it only listens on a unix
socket) and ovs-vswitchd (inside the node namespace, userspace/netdev datapath only:
this kernel has no openvswitch module) with private OVS_RUNDIR/DBDIR/LOGDIR/
SYSCONFDIR in a temporary directory named with RUN_PREFIX. ``stop()`` asks
ovs-vswitchd to ``exit --cleanup`` (which removes the ``ovs-netdev`` tap and the
bridges' internal devices), then stops both daemons by PID (SIGKILL as a last resort)
and removes the directory. Nothing here touches the root namespace's interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field

from tests.support.names import RUN_PREFIX
from tests.support.netns import NamespacePool, ns_run, run

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


@dataclass
class OvsDaemons:
    ns: str
    dir: str
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def db_sock(self) -> str:
        return os.path.join(self.dir, "db.sock")

    @property
    def ovsdb(self) -> str:
        """The driver's `ovsdb` argument."""
        return "unix:" + self.db_sock

    @property
    def vswitchd_ctl(self) -> str:
        return os.path.join(self.dir, "ovs-vswitchd.ctl")

    @property
    def ovsdb_ctl(self) -> str:
        return os.path.join(self.dir, "ovsdb-server.ctl")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
            env[var] = self.dir
        return env

    async def vsctl(self, *args: str, check: bool = True) -> str:
        result = await run(
            "ovs-vsctl", f"--db={self.ovsdb}", "--timeout=10", *args, check=check, time_limit=15
        )
        return result.stdout

    async def ofctl(self, command: str, bridge: str, *args: str) -> str:
        target = f"unix:{os.path.join(self.dir, bridge)}.mgmt"
        result = await run("ovs-ofctl", "-O", "OpenFlow13", command, target, *args)
        return result.stdout

    async def appctl(self, *args: str, check: bool = True) -> str:
        result = await run("ovs-appctl", "-t", self.vswitchd_ctl, *args, check=check)
        return result.stdout

    async def restart_vswitchd(self) -> None:
        """Stop ovs-vswitchd (exit, flows are lost) and start it again on the same DB."""
        vswitchd = self.procs.pop()
        await run("ovs-appctl", "-t", self.vswitchd_ctl, "exit", check=False, time_limit=10)
        try:
            await asyncio.wait_for(vswitchd.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(vswitchd.pid, signal.SIGKILL)
            await vswitchd.wait()
        await _start_vswitchd(self)
        # ovs-vsctl's wait can return before every bridge listens on <bridge>.mgmt.
        for bridge in (await self.vsctl("list-br")).split():
            await _wait_for_path(os.path.join(self.dir, f"{bridge}.mgmt"), self.procs[-1], 10)

    async def stop(self) -> None:
        """ovs-vswitchd exit --cleanup, then both daemons by PID; remove the directory."""
        vswitchd = self.procs[1] if len(self.procs) > 1 else None
        if vswitchd is not None and vswitchd.returncode is None:
            await run(
                "ovs-appctl",
                "-t",
                self.vswitchd_ctl,
                "exit",
                "--cleanup",
                check=False,
                time_limit=10,
            )
        for proc in reversed(self.procs):
            if proc.returncode is None:
                if proc is not vswitchd:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    await proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )


async def _wait_for_path(path: str, proc: asyncio.subprocess.Process, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):  # noqa: ASYNC240 (a stat per 10 ms poll)
        if proc.returncode is not None:
            raise RuntimeError(f"{path}: daemon exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.01)


async def start_ovs(ns: str) -> OvsDaemons:
    """Start ovsdb-server + ovs-vswitchd for node namespace `ns` (stop() them!)."""
    daemons = OvsDaemons(ns, tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-ovs-", dir="/tmp"))
    try:
        await _start(daemons)
    except BaseException:
        await daemons.stop()
        raise
    return daemons


async def _start(d: OvsDaemons) -> None:
    env = d.env()
    db = os.path.join(d.dir, "conf.db")
    await run("ovsdb-tool", "create", db, SCHEMA)
    server = await _spawn(
        [
            "ovsdb-server",
            db,
            f"--remote=punix:{d.db_sock}",
            f"--unixctl={d.ovsdb_ctl}",
            f"--log-file={os.path.join(d.dir, 'ovsdb-server.log')}",
            "--no-chdir",
        ],
        env,
    )
    d.procs.append(server)
    await _wait_for_path(d.db_sock, server, 10)
    await run("ovs-vsctl", f"--db={d.ovsdb}", "--no-wait", "init")
    await _start_vswitchd(d)


async def _start_vswitchd(d: OvsDaemons) -> None:
    # `ip netns exec` execs the daemon: the PID we hold is ovs-vswitchd's own.
    vswitchd = await _spawn(
        [
            "ip",
            "netns",
            "exec",
            d.ns,
            "ovs-vswitchd",
            d.ovsdb,
            f"--unixctl={d.vswitchd_ctl}",
            f"--log-file={os.path.join(d.dir, 'ovs-vswitchd.log')}",
            "--no-chdir",
        ],
        d.env(),
    )
    d.procs.append(vswitchd)
    await _wait_for_path(d.vswitchd_ctl, vswitchd, 10)
    # Without --no-wait ovs-vsctl waits until ovs-vswitchd has applied the config.
    await d.vsctl("init")


async def add_physical_bridge(
    d: OvsDaemons, bridge: str, nic: str, address: str | None = None
) -> None:
    """The host prerequisite: a netdev bridge holding `nic`, with `address` (the tunnel
    IP, CIDR form) on the bridge's internal port. Userspace tunnels only route out
    through an OVS bridge, so the tunnel IP must live here, not on the NIC."""
    await d.vsctl(
        "--may-exist",
        "add-br",
        bridge,
        "--",
        "set",
        "bridge",
        bridge,
        "datapath_type=netdev",
        "--",
        "--may-exist",
        "add-port",
        bridge,
        nic,
    )
    await ns_run(d.ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{bridge}.disable_ipv6=1", check=False)
    await run("ip", "-n", d.ns, "link", "set", nic, "up")
    if address is not None:
        await run("ip", "-n", d.ns, "addr", "add", address, "dev", bridge)
    await run("ip", "-n", d.ns, "link", "set", bridge, "up")


@dataclass
class OvsNodes:
    """The OVS daemons started for a test; stop_all() in a finalizer."""

    pool: NamespacePool
    daemons: list[OvsDaemons] = field(default_factory=list)

    async def start(self, ns: str) -> OvsDaemons:
        d = await start_ovs(ns)
        self.daemons.append(d)
        return d

    async def stop_all(self) -> None:
        errors: list[BaseException] = []
        for d in reversed(self.daemons):
            try:
                await d.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        self.daemons.clear()
        if errors:
            raise errors[0]
