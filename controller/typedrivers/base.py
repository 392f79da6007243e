"""What a type driver does: validate provider attributes, allocate and size segments."""

from __future__ import annotations

import random
from dataclasses import dataclass

from controller.config import Ml2Config
from controller.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from controller.ipam import PoolAllocator
from controller.store import Cache, Txn

# Encapsulation overheads over IPv4 (Neutron's constants).
VXLAN_ENCAP_OVERHEAD = 50
GRE_ENCAP_OVERHEAD = 42


@dataclass(frozen=True, slots=True)
class Segment:
    network_type: str
    physical_network: str  # "" when the type has none
    segmentation_id: int  # 0 when the type has none


def parse_ranges(specs: list[str], *, lo: int, hi: int, what: str) -> list[tuple[int, int]]:
    """'MIN:MAX' strings to validated int ranges."""
    out = []
    for spec in specs:
        a, _, b = spec.partition(":")
        first, last = int(a), int(b)
        if not (lo <= first <= last <= hi):
            raise ValueError(f"invalid {what} range {spec!r} (allowed {lo}..{hi})")
        out.append((first, last))
    return out


class TypeDriver:
    name = ""
    in_use_reason = "SegmentInUse"
    has_physnet = False
    max_segmentation_id = 0

    def __init__(self, cfg: Ml2Config) -> None:
        self.cfg = cfg

    # -- hooks per type
    def validate(self, physnet: str | None, segid: int | None, field: str) -> None:
        if physnet and not self.has_physnet:
            raise InvalidArgument(
                f"provider_physical_network is not allowed for {self.name} networks",
                field=f"{field}.provider_physical_network",
            )
        if segid is not None and not self.max_segmentation_id:
            raise InvalidArgument(
                f"provider_segmentation_id is not allowed for {self.name} networks",
                field=f"{field}.provider_segmentation_id",
            )
        if segid is not None and not 1 <= segid <= self.max_segmentation_id:
            raise InvalidArgument(
                f"segmentation_id {segid} out of range 1..{self.max_segmentation_id}"
                f" for {self.name} networks",
                field=f"{field}.provider_segmentation_id",
            )

    def tenant_ranges(self, physnet: str) -> list[tuple[int, int]]:
        return []

    def tenant_physnets(self) -> list[str]:
        return [""]

    def mtu(self, physnet: str) -> int:
        return self.cfg.physical_network_mtus.get(physnet, self.cfg.global_physnet_mtu)

    # -- shared allocation
    def allocate(
        self,
        cache: Cache,
        txn: Txn,
        physnet: str | None,
        segid: int | None,
        rng: random.Random,
    ) -> Segment:
        """A segment for a new network: the requested one if free, else one from the ranges."""
        if segid is not None or (physnet is not None and not self.max_segmentation_id):
            seg = Segment(self.name, physnet or "", segid or 0)
            if cache.has("segment", _key(seg)) or not txn.reserve(("segment", _key(seg))):
                raise AlreadyExists(
                    f"{self.name} segment {seg.physical_network or '-'}:{seg.segmentation_id}"
                    " is already in use",
                    reason=self.in_use_reason,
                    field="network.provider_segmentation_id"
                    if segid is not None
                    else "network.provider_physical_network",
                )
            return seg
        if not self.max_segmentation_id:
            return Segment(self.name, "", 0)
        physnets = [physnet] if physnet is not None else self.tenant_physnets()
        for pn in physnets:
            ranges = self.tenant_ranges(pn)

            def taken(v: int, pn: str = pn) -> bool:
                key = ("segment", (self.name, pn, v))
                return cache.has(*key) or key in txn.store.reserved

            value = PoolAllocator(ranges).pick(taken, rng)
            if value is not None:
                seg = Segment(self.name, pn, value)
                txn.reserve(("segment", _key(seg)))
                return seg
        raise ResourceExhausted(
            f"no free {self.name} segment left in the configured ranges",
            reason="NoNetworkAvailable",
        )


def _key(seg: Segment) -> tuple[str, str, int]:
    return seg.network_type, seg.physical_network, seg.segmentation_id
