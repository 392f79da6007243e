"""Port names and flow cookies, Neutron's OVS agent spelling where it has one."""

from __future__ import annotations

import hashlib
import ipaddress

from drivers.model import DEVICE_NAME_MAX_LEN, port_device_name

__all__ = [
    "COOKIE_MASK",
    "COOKIE_PREFIX",
    "DEAD_VLAN",
    "HYBRID_ALIAS_PREFIX",
    "TUNNEL_TYPES",
    "cookie_for",
    "hybrid_alias",
    "hybrid_names",
    "hybrid_port_of",
    "int_patch_name",
    "is_our_cookie",
    "phys_patch_name",
    "port_device_name",
    "tunnel_port_name",
]

DEAD_VLAN = 4095  # the tag of admin-down ports (Neutron's DEAD_VLAN_TAG)
TUNNEL_TYPES = ("vxlan", "gre")
PATCH_INT_TO_TUN = "patch-tun"  # on the integration bridge
PATCH_TUN_TO_INT = "patch-int"  # on the tunnel bridge

# Flow cookies: 16 bits saying "Baryon's", 48 bits naming the group of flows (a hash
# of a key such as "net:<id>"), so each group can be replaced or deleted on its own,
# and an operator's flows on a physical bridge are never touched.
COOKIE_PREFIX = 0xBA55
COOKIE_MASK = (1 << 64) - 1


def cookie_for(key: str) -> int:
    digest = int.from_bytes(hashlib.sha1(key.encode()).digest()[:6], "big")
    return (COOKIE_PREFIX << 48) | digest


def is_our_cookie(cookie: int) -> bool:
    return cookie >> 48 == COOKIE_PREFIX


def _fit(prefix: str, name: str) -> str:
    full = prefix + name
    if len(full) <= DEVICE_NAME_MAX_LEN:
        return full
    digest = hashlib.sha1(name.encode()).hexdigest()[:6]
    room = DEVICE_NAME_MAX_LEN - len(prefix) - len(digest)
    return prefix + name[:room] + digest


def int_patch_name(physical_bridge: str) -> str:
    """The integration bridge's end of the patch to a physical bridge ("int-br-phys")."""
    return _fit("int-", physical_bridge)


def phys_patch_name(physical_bridge: str) -> str:
    """The physical bridge's end of that patch ("phy-br-phys")."""
    return _fit("phy-", physical_bridge)


# ifalias of the per-port hybrid-plug devices (qbr/qvb/qvo) Baryon made: they may be
# deleted when the port goes away or stops needing them.
HYBRID_ALIAS_PREFIX = "baryon-hybrid:"


def hybrid_names(port_id: str) -> tuple[str, str, str]:
    """Neutron's hybrid plug devices of a port: (qbr bridge, qvb veth end in it, qvo
    veth end in the integration bridge)."""
    short = port_id[:11]
    return "qbr" + short, "qvb" + short, "qvo" + short


def hybrid_alias(port_id: str) -> str:
    return HYBRID_ALIAS_PREFIX + port_id


def hybrid_port_of(name: str, alias: str | None) -> str | None:
    """The port id a hybrid-plug device `name` (ifalias `alias`) was made for, or None
    when it is not one of ours (alias missing, or naming another port's device)."""
    alias = alias or ""
    if not alias.startswith(HYBRID_ALIAS_PREFIX):
        return None
    port_id = alias[len(HYBRID_ALIAS_PREFIX) :]
    return port_id if name in hybrid_names(port_id) else None


def tunnel_port_name(network_type: str, remote_ip: str) -> str:
    """ "vxlan-c0000202": type + the remote VTEP's IPv4 address in hex, as Neutron."""
    return f"{network_type}-{int(ipaddress.IPv4Address(remote_ip)):08x}"
