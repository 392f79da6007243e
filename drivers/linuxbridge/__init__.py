"""Linux bridge mechanism driver (Neutron ML2 linuxbridge, re-implemented)."""

from drivers.linuxbridge.actual import ActualState
from drivers.linuxbridge.config import LinuxBridgeConfig
from drivers.linuxbridge.driver import LinuxBridgeDriver

__all__ = ["ActualState", "LinuxBridgeConfig", "LinuxBridgeDriver"]
