from __future__ import annotations

from controller.typedrivers.base import TypeDriver


class LocalTypeDriver(TypeDriver):
    """A network confined to one host's bridge: no segment, no physical network."""

    name = "local"
