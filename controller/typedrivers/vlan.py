from __future__ import annotations

from controller.config import Ml2Config
from controller.errors import InvalidArgument
from controller.typedrivers.base import TypeDriver, parse_ranges


class VlanTypeDriver(TypeDriver):
    """802.1Q-tagged segments on physical networks, tenant IDs from network_vlan_ranges."""

    name = "vlan"
    in_use_reason = "VlanIdInUse"
    has_physnet = True
    max_segmentation_id = 4094

    def __init__(self, cfg: Ml2Config) -> None:
        super().__init__(cfg)
        # "physnet" alone declares a physical network without tenant ranges.
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        for spec in cfg.network_vlan_ranges:
            physnet, _, rng = spec.partition(":")
            self.ranges.setdefault(physnet, [])
            if rng:
                self.ranges[physnet] += parse_ranges([rng], lo=1, hi=4094, what="VLAN")

    def validate(self, physnet: str | None, segid: int | None, field: str) -> None:
        super().validate(physnet, segid, field)
        if segid is not None and not physnet:
            raise InvalidArgument(
                "provider_segmentation_id requires provider_physical_network",
                field=f"{field}.provider_physical_network",
            )
        if physnet and physnet not in self.ranges:
            raise InvalidArgument(
                f"physical network {physnet!r} is unknown to the vlan type driver",
                field=f"{field}.provider_physical_network",
            )

    def tenant_ranges(self, physnet: str) -> list[tuple[int, int]]:
        return self.ranges.get(physnet, [])

    def tenant_physnets(self) -> list[str]:
        return sorted(self.ranges)
