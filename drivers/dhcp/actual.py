"""What a host's DHCP service looks like now: namespaces, devices, files, processes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.l3.actual import TapActual
from drivers.model import FrozenDict
from drivers.netlink import Link


@dataclass(frozen=True)
class DhcpActual:
    """One network. namespace_exists False: links/addresses are empty. pid: the dnsmasq
    named by the PID file if it is alive (None otherwise), cmdline: its argv. files:
    the hosts/opts files' text (None: missing); loaded: the marker "<pid> <digest>"."""

    network_id: str
    namespace: str
    namespace_exists: bool = False
    links: Mapping[str, Link] = field(default_factory=lambda: FrozenDict())
    addresses: Mapping[str, frozenset[str]] = field(default_factory=lambda: FrozenDict())
    hosts: str | None = None
    opts: str | None = None
    loaded: str | None = None
    pid: int | None = None
    cmdline: tuple[str, ...] | None = None
    has_state_dir: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", FrozenDict(self.links))
        object.__setattr__(self, "addresses", FrozenDict(self.addresses))


@dataclass(frozen=True)
class DhcpHostActual:
    networks: Mapping[str, DhcpActual] = field(default_factory=lambda: FrozenDict())
    taps: Mapping[str, TapActual] = field(default_factory=lambda: FrozenDict())
    bridges: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", FrozenDict(self.networks))
        object.__setattr__(self, "taps", FrozenDict(self.taps))
