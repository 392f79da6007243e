"""The change objects a DHCP plan is made of: small, frozen, idempotent."""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from typing import Any, Protocol

from drivers import nsdev
from drivers.dhcp import config, process
from drivers.netlink import delete_link, netns_exists


class DhcpHost(Protocol):
    @property
    def node_ipr(self) -> Any: ...

    @property
    def node_netns(self) -> str | None: ...

    async def ipr(self, ns: str) -> Any: ...

    async def forget(self, ns: str) -> None: ...


def write_file(path: str, text: str) -> None:
    """Atomically, world-readable (dnsmasq rereads its files as user nobody)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class EnsureDhcpNamespace:
    namespace: str
    directory: str
    network_id: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"ensure namespace {self.namespace} and state directory {self.directory}"

    async def apply(self, host: DhcpHost) -> None:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        os.chmod(self.directory, 0o755)
        write_file(os.path.join(self.directory, config.MARKER), f"{self.network_id}\n")
        await nsdev.ensure_namespace(self.namespace)


@dataclass(frozen=True, slots=True)
class EnsureDhcpPort:
    namespace: str
    port: nsdev.VethPort

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        p = self.port
        return f"ensure {p.inner} (mac {p.mac} mtu {p.mtu}) in {self.namespace} <-> {p.tap}"

    async def apply(self, host: DhcpHost) -> None:
        inner = await host.ipr(self.namespace)
        await nsdev.ensure_veth_port(
            host.node_ipr, host.node_netns, inner, self.namespace, self.port
        )


@dataclass(frozen=True, slots=True)
class DeleteDhcpDevice:
    """An old DHCP port's device (the port was replaced): its tap goes with it."""

    namespace: str
    device: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"delete {self.device} in {self.namespace}"

    async def apply(self, host: DhcpHost) -> None:
        await delete_link(await host.ipr(self.namespace), self.device)


@dataclass(frozen=True, slots=True)
class SetDhcpAddresses:
    namespace: str
    device: str
    add: tuple[str, ...]
    remove: tuple[str, ...]

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"addresses of {self.device} in {self.namespace}: +{self.add} -{self.remove}"

    async def apply(self, host: DhcpHost) -> None:
        await nsdev.set_addresses(
            await host.ipr(self.namespace), self.device, self.add, self.remove
        )


@dataclass(frozen=True, slots=True)
class WriteFile:
    path: str
    text: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"write {self.path} ({self.text.count(chr(10))} lines)"

    async def apply(self, host: DhcpHost) -> None:
        write_file(self.path, self.text)


@dataclass(frozen=True, slots=True)
class StartDnsmasq:
    """(Re)start the network's dnsmasq: stop `old_pid` (a dnsmasq of this network with
    another command line) first. The marker records that the new one read the files."""

    namespace: str
    directory: str
    argv: tuple[str, ...]
    digest: str
    old_pid: int | None = None

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        again = f" (replacing pid {self.old_pid})" if self.old_pid else ""
        return f"start dnsmasq in {self.namespace}{again}"

    async def apply(self, host: DhcpHost) -> None:
        paths = config.Paths(self.directory)
        if self.old_pid is not None:
            await process.stop(self.old_pid)
        pid = await process.start(
            self.namespace, self.argv, paths.file(config.PIDFILE), paths.file(config.LOG)
        )
        write_file(paths.file(config.LOADED), f"{pid} {self.digest}\n")


@dataclass(frozen=True, slots=True)
class ReloadDnsmasq:
    """SIGHUP: dnsmasq rereads the hosts and options files (same process, no restart)."""

    directory: str
    pid: int
    digest: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"SIGHUP dnsmasq {self.pid}"

    async def apply(self, host: DhcpHost) -> None:
        if not process.signal_pid(self.pid, signal.SIGHUP):
            raise process.ProcessError(f"dnsmasq {self.pid} is gone")
        write_file(config.Paths(self.directory).file(config.LOADED), f"{self.pid} {self.digest}\n")


@dataclass(frozen=True, slots=True)
class DeleteDhcpNetwork:
    """Stop the network's dnsmasq (by PID), delete its namespace and state directory."""

    namespace: str
    directory: str
    pid: int | None
    stale: bool

    @property
    def removes_stale(self) -> bool:
        return self.stale

    def __str__(self) -> str:
        what = f"stop dnsmasq {self.pid}, " if self.pid else ""
        return f"{what}delete {self.namespace} and {self.directory}" + (
            " (stale)" if self.stale else ""
        )

    async def apply(self, host: DhcpHost) -> None:
        if self.pid is not None:
            await process.stop(self.pid)
        if netns_exists(self.namespace):
            await nsdev.purge_links(await host.ipr(self.namespace))
        await host.forget(self.namespace)
        await nsdev.delete_namespace(self.namespace)
        shutil.rmtree(self.directory, ignore_errors=True)


DhcpChange = (
    EnsureDhcpNamespace
    | EnsureDhcpPort
    | DeleteDhcpDevice
    | SetDhcpAddresses
    | WriteFile
    | StartDnsmasq
    | ReloadDnsmasq
    | DeleteDhcpNetwork
)
