"""The change objects an L3 plan is made of: small, frozen, idempotent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from drivers import nsdev
from drivers.changes_common import (
    DeleteServiceDevice,
    EnsureServicePort,
    NamespaceHost,
    SetServiceAddresses,
    delete_service_namespace,
)


class RouterHost(NamespaceHost, Protocol):
    """What changes run against (implemented by the driver)."""

    async def nft(self, ns: str, script: str) -> str: ...


@dataclass(frozen=True, slots=True)
class EnsureRouterNamespace:
    namespace: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"ensure namespace {self.namespace} (lo up, ip_forward 1)"

    async def apply(self, host: RouterHost) -> None:
        await nsdev.ensure_namespace(self.namespace)
        await nsdev.enable_ip_forwarding(self.namespace)


class EnsureRouterPort(EnsureServicePort):
    __slots__ = ()

    def __str__(self) -> str:
        p = self.port
        state = "up" if p.up else "down"
        return (
            f"ensure {p.inner} (mac {p.mac} mtu {p.mtu} {state}) in {self.namespace}"
            f" <-> {p.tap} in {p.bridge}"
        )


class DeleteRouterPort(DeleteServiceDevice):
    """A port the router no longer has: deleting the inner end deletes the tap too."""

    __slots__ = ()


class SetAddresses(SetServiceAddresses):
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class AnnounceAddresses:
    """Gratuitous ARP for addresses just added (a router built anew, on another node
    after a failover, or a new floating IP), once the router is ready to forward: the
    outside learns where they are now. announcements: (device, MAC, addresses)."""

    namespace: str
    announcements: tuple[tuple[str, str, tuple[str, ...]], ...]

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        what = "; ".join(f"{', '.join(a)} from {d}" for d, _, a in self.announcements)
        return f"gratuitous ARP for {what} in {self.namespace}"

    async def apply(self, host: RouterHost) -> None:
        await nsdev.send_garp(self.namespace, self.announcements)


@dataclass(frozen=True, slots=True)
class SetRoutes:
    """(destination, next hop) routes to add (replace) and to delete."""

    namespace: str
    add: tuple[tuple[str, str], ...]
    remove: tuple[tuple[str, str], ...]

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"routes in {self.namespace}: +{self.add} -{self.remove}"

    async def apply(self, host: RouterHost) -> None:
        """Every route is tried; the first failure (e.g. a next hop on no connected
        subnet) is raised after the others are in."""
        ipr = await host.ipr(self.namespace)
        errors: list[Exception] = []
        for dst, via in self.remove:
            await nsdev.delete_route(ipr, dst, via)
        for dst, via in self.add:
            try:
                await nsdev.replace_route(ipr, dst, via)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@dataclass(frozen=True, slots=True)
class LoadNat:
    """Replace the router's NAT table in one nft transaction."""

    namespace: str
    script: str
    digest: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"load NAT table {self.digest} in {self.namespace}"

    async def apply(self, host: RouterHost) -> None:
        await host.nft(self.namespace, self.script)


@dataclass(frozen=True, slots=True)
class FlushConntrack:
    """Forget the connections of NAT addresses that went away or now map elsewhere:
    entries to them (DNAT: orig destination) and from them (SNAT: reply destination)."""

    namespace: str
    addresses: tuple[str, ...]

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"flush conntrack of {', '.join(self.addresses)} in {self.namespace}"

    async def apply(self, host: RouterHost) -> None:
        for address in self.addresses:
            await nsdev.conntrack_delete(self.namespace, "-d", address)
            await nsdev.conntrack_delete(self.namespace, "-q", address)


@dataclass(frozen=True, slots=True)
class DeleteRouter:
    """A router this host no longer runs: its namespace, devices (taps included) and
    connection tracking go at once."""

    namespace: str

    @property
    def removes_stale(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"delete router namespace {self.namespace}"

    async def apply(self, host: RouterHost) -> None:
        await delete_service_namespace(host, self.namespace)


L3Change = (
    EnsureRouterNamespace
    | EnsureRouterPort
    | DeleteRouterPort
    | SetAddresses
    | AnnounceAddresses
    | SetRoutes
    | LoadNat
    | FlushConntrack
    | DeleteRouter
)
