"""Load the enabled type drivers from the `baryon.type_drivers` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from controller.config import Ml2Config
from controller.typedrivers.base import TypeDriver

GROUP = "baryon.type_drivers"


def load_type_drivers(cfg: Ml2Config) -> dict[str, TypeDriver]:
    available = {ep.name: ep for ep in entry_points(group=GROUP)}
    drivers: dict[str, TypeDriver] = {}
    for name in cfg.type_drivers:
        ep = available.get(name)
        if ep is None:
            raise ValueError(
                f"type driver {name!r} not found in entry points {GROUP!r}"
                f" (available: {sorted(available)}); is baryon installed (pip install -e .)?"
            )
        cls = ep.load()
        drivers[name] = cls(cfg)
    for t in cfg.tenant_network_types:
        if t not in drivers:
            raise ValueError(f"tenant network type {t!r} is not an enabled type driver")
    return drivers
