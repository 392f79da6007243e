"""What a host's routers look like now, read back from the kernel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.l3.model import FloatingIp
from drivers.model import FrozenDict
from drivers.netlink import Link
from drivers.nsdev import TapActual

__all__ = ["L3Actual", "RouterActual", "TapActual"]


@dataclass(frozen=True)
class RouterActual:
    """One router namespace: links and their addresses by device name, static routes
    (destination, next hop), IPv4 forwarding, and the NAT table loaded (digest None:
    no table)."""

    router_id: str
    namespace: str
    links: Mapping[str, Link] = field(default_factory=lambda: FrozenDict())
    addresses: Mapping[str, frozenset[str]] = field(default_factory=lambda: FrozenDict())
    routes: frozenset[tuple[str, str]] = frozenset()
    forwarding: bool = False
    nat_digest: str | None = None
    nat_fips: frozenset[FloatingIp] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", FrozenDict(self.links))
        object.__setattr__(self, "addresses", FrozenDict(self.addresses))


@dataclass(frozen=True)
class L3Actual:
    routers: Mapping[str, RouterActual] = field(default_factory=lambda: FrozenDict())
    taps: Mapping[str, TapActual] = field(default_factory=lambda: FrozenDict())
    bridges: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "routers", FrozenDict(self.routers))
        object.__setattr__(self, "taps", FrozenDict(self.taps))
