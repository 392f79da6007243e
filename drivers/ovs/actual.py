"""What a host's Open vSwitch looks like now: OVSDB rows (read from ovsdbapp's
in-memory replica), our flows (``ovs-ofctl dump-flows``) and the node namespace's links
(netlink: which port devices exist, which ones Baryon made)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.model import FrozenDict
from drivers.netlink import Link
from drivers.ovs.flows import Flow


@dataclass(frozen=True, slots=True)
class OvsBridge:
    name: str
    datapath_type: str
    fail_mode: str | None


@dataclass(frozen=True, slots=True)
class OvsPort:
    """A Port row and its (first) Interface row; ``bridge`` is the Bridge holding it."""

    name: str
    bridge: str
    tag: int | None = None
    other_config: Mapping[str, str] = field(default_factory=lambda: FrozenDict())
    iface_type: str = ""
    options: Mapping[str, str] = field(default_factory=lambda: FrozenDict())
    external_ids: Mapping[str, str] = field(default_factory=lambda: FrozenDict())
    ofport: int | None = None
    mtu_request: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "other_config", FrozenDict(self.other_config))
        object.__setattr__(self, "options", FrozenDict(self.options))
        object.__setattr__(self, "external_ids", FrozenDict(self.external_ids))

    @property
    def applied(self) -> bool:
        """ovs-vswitchd opened it: it has an OpenFlow port number."""
        return self.ofport is not None and self.ofport > 0


@dataclass(frozen=True)
class OvsdbSnapshot:
    bridges: Mapping[str, OvsBridge] = field(default_factory=lambda: FrozenDict())
    ports: Mapping[str, OvsPort] = field(default_factory=lambda: FrozenDict())
    iface_types: frozenset[str] = frozenset()
    datapath_types: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "bridges", FrozenDict(self.bridges))
        object.__setattr__(self, "ports", FrozenDict(self.ports))


@dataclass(frozen=True)
class ActualState:
    """bridges/ports: OVSDB; flows: bridge -> cookie -> Baryon's flows with that cookie;
    links: the node namespace's links by name."""

    bridges: Mapping[str, OvsBridge] = field(default_factory=lambda: FrozenDict())
    ports: Mapping[str, OvsPort] = field(default_factory=lambda: FrozenDict())
    flows: Mapping[str, Mapping[int, frozenset[Flow]]] = field(default_factory=lambda: FrozenDict())
    links: Mapping[str, Link] = field(default_factory=lambda: FrozenDict())

    def __post_init__(self) -> None:
        object.__setattr__(self, "bridges", FrozenDict(self.bridges))
        object.__setattr__(self, "ports", FrozenDict(self.ports))
        object.__setattr__(
            self, "flows", FrozenDict((b, FrozenDict(g)) for b, g in self.flows.items())
        )
        object.__setattr__(self, "links", FrozenDict(self.links))

    def port(self, name: str) -> OvsPort | None:
        return self.ports.get(name)

    def ports_on(self, bridge: str) -> list[OvsPort]:
        return [p for p in self.ports.values() if p.bridge == bridge]

    def flow_group(self, bridge: str, cookie: int) -> frozenset[Flow] | None:
        return self.flows.get(bridge, {}).get(cookie)
