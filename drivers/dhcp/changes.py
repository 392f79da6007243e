"""The change objects a DHCP plan is made of: small, frozen, idempotent."""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass

from drivers import nsdev
from drivers.changes_common import (
    DeleteServiceDevice,
    EnsureServicePort,
    NamespaceHost,
    SetServiceAddresses,
    delete_service_namespace,
)
from drivers.dhcp import config, process

# What DHCP changes run against: what every namespace service offers, nothing more.
DhcpHost = NamespaceHost


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


class EnsureDhcpPort(EnsureServicePort):
    __slots__ = ()


class DeleteDhcpDevice(DeleteServiceDevice):
    """An old DHCP port's device (the port was replaced): its tap goes with it."""

    __slots__ = ()


class SetDhcpAddresses(SetServiceAddresses):
    __slots__ = ()


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
        await delete_service_namespace(host, self.namespace)
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
