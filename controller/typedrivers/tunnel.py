from __future__ import annotations

from controller.config import Ml2Config
from controller.typedrivers.base import (
    GRE_ENCAP_OVERHEAD,
    VXLAN_ENCAP_OVERHEAD,
    TypeDriver,
    parse_ranges,
)


class _TunnelTypeDriver(TypeDriver):
    overhead = 0
    ranges_option = ""
    in_use_reason = "TunnelIdInUse"

    def __init__(self, cfg: Ml2Config) -> None:
        super().__init__(cfg)
        specs: list[str] = getattr(cfg, self.ranges_option)
        self.ranges = parse_ranges(specs, lo=1, hi=self.max_segmentation_id, what=self.name)

    def tenant_ranges(self, physnet: str) -> list[tuple[int, int]]:
        return self.ranges

    def mtu(self, physnet: str) -> int:
        return min(self.cfg.path_mtu, self.cfg.global_physnet_mtu) - self.overhead


class VxlanTypeDriver(_TunnelTypeDriver):
    name = "vxlan"
    max_segmentation_id = 2**24 - 1
    overhead = VXLAN_ENCAP_OVERHEAD
    ranges_option = "vni_ranges"


class GreTypeDriver(_TunnelTypeDriver):
    name = "gre"
    max_segmentation_id = 2**32 - 1
    overhead = GRE_ENCAP_OVERHEAD
    ranges_option = "tunnel_id_ranges"
