"""Open vSwitch mechanism driver (Neutron ML2 openvswitch agent, re-implemented)."""

from drivers.ovs.actual import ActualState
from drivers.ovs.config import OvsConfig
from drivers.ovs.driver import OvsDriver

__all__ = ["ActualState", "OvsConfig", "OvsDriver"]
