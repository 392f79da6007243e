from __future__ import annotations

from controller.errors import InvalidArgument
from controller.typedrivers.base import TypeDriver


class FlatTypeDriver(TypeDriver):
    """Untagged traffic on a physical network; one flat network per physical network."""

    name = "flat"
    in_use_reason = "FlatNetworkInUse"
    has_physnet = True

    def validate(self, physnet: str | None, segid: int | None, field: str) -> None:
        super().validate(physnet, segid, field)
        if not physnet:
            raise InvalidArgument(
                "provider_physical_network is required for flat networks",
                field=f"{field}.provider_physical_network",
            )
        allowed = self.cfg.flat_networks
        if "*" not in allowed and physnet not in allowed:
            raise InvalidArgument(
                f"physical network {physnet!r} is not a configured flat network",
                field=f"{field}.provider_physical_network",
            )
