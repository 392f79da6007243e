"""Change objects shared by the services that live in namespaces of their own (L3
routers, DHCP): a service port's veth pair, deleting one of its devices, its addresses,
and tearing a service namespace down.

Each service subclasses these under its own names (EnsureRouterPort, EnsureDhcpPort,
...), so that its plans keep their own change types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from drivers import nsdev
from drivers.netlink import delete_link, netns_exists


class NamespaceHost(Protocol):
    """What these changes run against (implemented by the service's driver)."""

    @property
    def node_ipr(self) -> Any: ...

    @property
    def node_netns(self) -> str | None: ...

    async def ipr(self, ns: str) -> Any: ...

    async def forget(self, ns: str) -> None: ...


async def delete_service_namespace(host: NamespaceHost, namespace: str) -> None:
    """Delete a service namespace with its devices (the taps in the node namespace go at
    once) and drop the host's sockets there."""
    if netns_exists(namespace):
        await nsdev.purge_links(await host.ipr(namespace))
    await host.forget(namespace)
    await nsdev.delete_namespace(namespace)


@dataclass(frozen=True, slots=True)
class EnsureServicePort:
    namespace: str
    port: nsdev.VethPort

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        p = self.port
        return f"ensure {p.inner} (mac {p.mac} mtu {p.mtu}) in {self.namespace} <-> {p.tap}"

    async def apply(self, host: NamespaceHost) -> None:
        inner = await host.ipr(self.namespace)
        await nsdev.ensure_veth_port(
            host.node_ipr, host.node_netns, inner, self.namespace, self.port
        )


@dataclass(frozen=True, slots=True)
class DeleteServiceDevice:
    """A device of a service namespace: deleting the inner end of a veth pair deletes
    its tap too."""

    namespace: str
    device: str

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"delete {self.device} in {self.namespace}"

    async def apply(self, host: NamespaceHost) -> None:
        await delete_link(await host.ipr(self.namespace), self.device)


@dataclass(frozen=True, slots=True)
class SetServiceAddresses:
    namespace: str
    device: str
    add: tuple[str, ...]
    remove: tuple[str, ...]

    @property
    def removes_stale(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"addresses of {self.device} in {self.namespace}: +{self.add} -{self.remove}"

    async def apply(self, host: NamespaceHost) -> None:
        await nsdev.set_addresses(
            await host.ipr(self.namespace), self.device, self.add, self.remove
        )
