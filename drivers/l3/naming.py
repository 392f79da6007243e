"""Names of the things an L3 host service creates (Neutron's, plus a per-agent prefix)."""

from __future__ import annotations

from drivers.model import port_device_name

NAMESPACE_MARK = "qrouter-"
TAP_PREFIX = "tap"
INTERNAL_PREFIX = "qr-"
GATEWAY_PREFIX = "qg-"

__all__ = [
    "GATEWAY_PREFIX",
    "INTERNAL_PREFIX",
    "TAP_PREFIX",
    "gateway_device",
    "internal_device",
    "namespace_name",
    "port_device_name",
    "router_id_of",
]


def namespace_name(prefix: str, router_id: str) -> str:
    """``<prefix>qrouter-<router id>``: the prefix keeps agents sharing a kernel apart."""
    return f"{prefix}{NAMESPACE_MARK}{router_id}"


def router_id_of(prefix: str, namespace: str) -> str | None:
    head = prefix + NAMESPACE_MARK
    if not namespace.startswith(head) or len(namespace) == len(head):
        return None
    return namespace[len(head) :]


def internal_device(port_id: str) -> str:
    return INTERNAL_PREFIX + port_id[:11]


def gateway_device(port_id: str) -> str:
    return GATEWAY_PREFIX + port_id[:11]
