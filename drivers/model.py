"""Desired state of one host's dataplane, as the agent hands it to a mechanism driver.

Everything here is immutable and hashable so that states and their parts can be
compared cheaply (the agent skips a sync when nothing changed) and used as keys.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

K = TypeVar("K")
V = TypeVar("V")

NETWORK_TYPES = frozenset({"local", "flat", "vlan", "vxlan", "gre"})
PortStatusValue = Literal["ACTIVE", "DOWN", "ERROR"]

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
DEVICE_NAME_MAX_LEN = 15  # IFNAMSIZ - 1


def normalize_mac(mac: str) -> str:
    """Lower-case colon form; raises ValueError for anything else."""
    value = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(value):
        raise ValueError(f"invalid MAC address {mac!r}")
    return value


# ifalias that marks a port's host-side device as created by Baryon (drivers.plug): a
# driver may delete such a device when the port goes away; others it only unwires.
OWNED_ALIAS_PREFIX = "baryon-port:"


def port_device_name(port_id: str) -> str:
    """Neutron's name for a port's host-side device: "tap" + the first 11 chars of the id."""
    return "tap" + port_id[:11]


def owned_alias(port_id: str) -> str:
    return OWNED_ALIAS_PREFIX + port_id


def is_owned_device(name: str, alias: str | None) -> bool:
    """Whether the device `name` (ifalias `alias`) is a port device Baryon created: its
    alias is owned_alias() of the port the device is named after."""
    alias = alias or ""
    return alias.startswith(OWNED_ALIAS_PREFIX) and (
        port_device_name(alias[len(OWNED_ALIAS_PREFIX) :]) == name
    )


def specs_by_id(
    specs: Mapping[str, V] | Iterable[V], id_of: Callable[[V], str], kind: str
) -> dict[str, V]:
    """Specs by id, from an id -> spec mapping (each key must be its spec's id) or an
    iterable of specs (each id once); ValueError otherwise. kind: what a spec is
    ("router"), for the messages."""
    if isinstance(specs, Mapping):
        out = dict(specs)
        for key, spec in out.items():
            if key != id_of(spec):
                raise ValueError(f"{kind}s[{key!r}] holds {kind} {id_of(spec)!r}")
        return out
    out = {}
    for spec in specs:
        if id_of(spec) in out:
            raise ValueError(f"{kind} {id_of(spec)} listed twice")
        out[id_of(spec)] = spec
    return out


class FrozenDict(Mapping[K, V]):
    """A read-only, hashable mapping (the hash is computed once, lazily)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            if self._hash is not None and other._hash is not None and self._hash != other._hash:
                return False
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    id: str
    network_type: str
    segmentation_id: int | None
    physical_network: str | None
    mtu: int

    def __post_init__(self) -> None:
        if self.network_type not in NETWORK_TYPES:
            raise ValueError(f"unknown network type {self.network_type!r}")
        if self.mtu < 68:
            raise ValueError(f"network {self.id}: mtu {self.mtu} below 68")


SG_DIRECTIONS = frozenset({"ingress", "egress"})
SG_ETHERTYPES = frozenset({"IPv4", "IPv6"})


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One security group rule, in the stored form of controller.sgrules.NormalizedRule.

    protocol: lower-case name or decimal number string (None: any); for icmp/ipv6-icmp
    port_range_min/max are the ICMP type/code; remote_ip_prefix and remote_group_id are
    mutually exclusive (neither: any remote).
    """

    direction: str
    ethertype: str = "IPv4"
    protocol: str | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in SG_DIRECTIONS:
            raise ValueError(f"bad rule direction {self.direction!r}")
        if self.ethertype not in SG_ETHERTYPES:
            raise ValueError(f"bad rule ethertype {self.ethertype!r}")


@dataclass(frozen=True, slots=True)
class SecurityGroupSpec:
    """A security group as the firewall needs it. stateful=False: rules only, no
    connection tracking accepts return traffic."""

    id: str
    rules: tuple[RuleSpec, ...] = ()
    stateful: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))


@dataclass(frozen=True, slots=True)
class PortSpec:
    """allowed_address_pairs: (IP address or CIDR, MAC) pairs the port may also send
    from (an empty MAC means the port's own)."""

    id: str
    network_id: str
    mac: str
    admin_state_up: bool
    mtu: int
    fixed_ips: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    port_security_enabled: bool = True
    allowed_address_pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        object.__setattr__(self, "fixed_ips", tuple(self.fixed_ips))
        object.__setattr__(self, "security_group_ids", tuple(self.security_group_ids))
        object.__setattr__(
            self,
            "allowed_address_pairs",
            tuple(
                (str(ip), normalize_mac(mac) if mac else self.mac)
                for ip, mac in self.allowed_address_pairs
            ),
        )

    @property
    def device_name(self) -> str:
        return port_device_name(self.id)


def _freeze_vteps(
    vteps: Mapping[str, Mapping[str, Iterable[str]]],
) -> FrozenDict[str, FrozenDict[str, frozenset[str]]]:
    def macs(values: Iterable[str]) -> frozenset[str]:
        return frozenset(normalize_mac(m) for m in values)

    return FrozenDict(
        (net_id, FrozenDict((ip, macs(values)) for ip, values in by_ip.items()))
        for net_id, by_ip in vteps.items()
    )


@dataclass(frozen=True)
class HostState:
    """What one host should look like.

    networks: network id -> spec (networks this host needs; one without ports here
        gets no bridge).
    ports: port id -> spec (ports bound to this host).
    remote_vteps: network id -> remote tunnel IP -> MACs of that network's ports behind
        it (l2population). A remote VTEP with no MACs still gets a flood entry.
    security_groups: group id -> spec, for every group a port here uses (and every
        group their rules name as remote group, if known).
    sg_members: group id -> IP addresses (or CIDRs of allowed address pairs) of all the
        ports in that group, on any host; needed for every remote group named by a rule.
    """

    networks: Mapping[str, NetworkSpec] = field(default_factory=lambda: FrozenDict())
    ports: Mapping[str, PortSpec] = field(default_factory=lambda: FrozenDict())
    remote_vteps: Mapping[str, Mapping[str, frozenset[str]]] = field(
        default_factory=lambda: FrozenDict()
    )
    security_groups: Mapping[str, SecurityGroupSpec] = field(default_factory=lambda: FrozenDict())
    sg_members: Mapping[str, frozenset[str]] = field(default_factory=lambda: FrozenDict())

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", FrozenDict(self.networks))
        object.__setattr__(self, "ports", FrozenDict(self.ports))
        object.__setattr__(self, "remote_vteps", _freeze_vteps(self.remote_vteps))
        object.__setattr__(self, "security_groups", FrozenDict(self.security_groups))
        object.__setattr__(
            self,
            "sg_members",
            FrozenDict((k, frozenset(v)) for k, v in self.sg_members.items()),
        )
        for key, group in self.security_groups.items():
            if key != group.id:
                raise ValueError(f"security_groups[{key!r}] holds group {group.id!r}")
        for key, net in self.networks.items():
            if key != net.id:
                raise ValueError(f"networks[{key!r}] holds network {net.id!r}")
        for key, port in self.ports.items():
            if key != port.id:
                raise ValueError(f"ports[{key!r}] holds port {port.id!r}")

    @classmethod
    def build(
        cls,
        networks: Iterable[NetworkSpec] = (),
        ports: Iterable[PortSpec] = (),
        remote_vteps: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
        security_groups: Iterable[SecurityGroupSpec] = (),
        sg_members: Mapping[str, Iterable[str]] | None = None,
    ) -> HostState:
        """Convenience constructor from iterables of specs."""
        return cls(
            networks={n.id: n for n in networks},
            ports={p.id: p for p in ports},
            remote_vteps=_freeze_vteps(remote_vteps or {}),
            security_groups={g.id: g for g in security_groups},
            sg_members={k: frozenset(v) for k, v in (sg_members or {}).items()},
        )


def remote_vteps_of(
    desired: HostState, network_id: str, local_ip: str | None
) -> dict[str, frozenset[str]]:
    """l2population: a network's remote VTEPs (tunnel IP -> MACs behind it), leaving out
    this host's own tunnel IP."""
    remote = desired.remote_vteps.get(network_id, {})
    return {ip: macs for ip, macs in remote.items() if ip != local_ip}


def unicast_targets(vteps: Mapping[str, frozenset[str]]) -> dict[str, str]:
    """MAC -> VTEP; a MAC listed behind several VTEPs (mid-move) goes to the lowest IP."""
    out: dict[str, str] = {}
    for ip in sorted(vteps, key=ipaddress.ip_address, reverse=True):
        for mac in vteps[ip]:
            out[mac] = ip
    return out


@dataclass(frozen=True, slots=True)
class PortStatus:
    port_id: str
    status: PortStatusValue
    reason: str = ""
