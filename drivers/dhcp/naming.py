"""Names of what the DHCP host service creates (Neutron's, plus a per-agent prefix)."""

from __future__ import annotations

NAMESPACE_MARK = "qdhcp-"
DEVICE_PREFIX = "ns-"
TAP_PREFIX = "tap"


def namespace_name(prefix: str, network_id: str) -> str:
    """``<prefix>qdhcp-<network id>``: the prefix keeps agents sharing a kernel apart."""
    return f"{prefix}{NAMESPACE_MARK}{network_id}"


def network_id_of(prefix: str, namespace: str) -> str | None:
    head = prefix + NAMESPACE_MARK
    if not namespace.startswith(head) or len(namespace) == len(head):
        return None
    return namespace[len(head) :]


def dhcp_device(port_id: str) -> str:
    return DEVICE_PREFIX + port_id[:11]
