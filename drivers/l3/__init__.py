"""L3 host service (Neutron's L3 agent, re-implemented): routers in namespaces."""

from drivers.l3.driver import L3Driver
from drivers.l3.model import FloatingIp, RouterPort, RouterSpec, StaticRoute

__all__ = ["FloatingIp", "L3Driver", "RouterPort", "RouterSpec", "StaticRoute"]
