"""Device names, as Neutron's Linux bridge agent spells them."""

from __future__ import annotations

import hashlib

from drivers.model import DEVICE_NAME_MAX_LEN, OWNED_ALIAS_PREFIX, owned_alias, port_device_name

BRIDGE_PREFIX = "brq"
VXLAN_PREFIX = "vxlan-"
TAP_PREFIX = "tap"

__all__ = [
    "BRIDGE_PREFIX",
    "OWNED_ALIAS_PREFIX",
    "TAP_PREFIX",
    "VXLAN_PREFIX",
    "bridge_name",
    "owned_alias",
    "port_device_name",
    "vlan_name",
    "vxlan_name",
]


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:11]


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def vlan_name(physical_interface: str, vlan_id: int) -> str:
    """ "<nic>.<vid>", the NIC part shortened with a hash when the whole is too long."""
    suffix = f".{vlan_id}"
    if len(physical_interface) + len(suffix) <= DEVICE_NAME_MAX_LEN:
        return physical_interface + suffix
    room = DEVICE_NAME_MAX_LEN - len(suffix)
    digest = hashlib.sha1(physical_interface.encode()).hexdigest()[:6]
    return physical_interface[: room - len(digest)] + digest + suffix
