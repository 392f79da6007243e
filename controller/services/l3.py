"""What routers and floating IPs share, and what the port service asks of them.

Kept free of the router / floating IP services so that ports.py can import it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from controller.errors import BaryonError, FailedPrecondition, InvalidArgument
from controller.indexes import FLOATINGIP_OWNER, L3_OWNERS, ROUTER_GATEWAY, ROUTER_INTERFACE
from controller.model import FloatingIP, Network, Pair, Port, Router, Subnet
from controller.store import Cache, Txn

if TYPE_CHECKING:
    from controller.services.ports import PortService


def bad_request(resource: str, msg: str, field: str) -> InvalidArgument:
    """neutron_lib's BadRequest: "Bad <resource> request: <msg>"."""
    return InvalidArgument(f"Bad {resource} request: {msg}", reason="BadRequest", field=field)


def check_port_delete(cache: Cache, port: Port) -> None:
    """Neutron's prevent_l3_port_deletion: a port a router or floating IP holds goes with it."""
    if port.device_owner not in L3_OWNERS or not port.device_id:
        return
    owner = (
        cache.get(FloatingIP, port.device_id)
        if port.device_owner == FLOATINGIP_OWNER
        else cache.get(Router, port.device_id)
    )
    if owner is None:
        return  # a leftover: let it go
    raise FailedPrecondition(
        f"Port {port.id} cannot be deleted directly via the port API: has device owner"
        f" {port.device_owner}.",
        reason="ServicePortInUse",
        port_id=port.id,
    )


def disassociated() -> dict[str, str]:
    return {"port_id": "", "fixed_ip_address": "", "router_id": ""}


def on_port_delete(cache: Cache, txn: Txn, port: Port) -> None:
    """Refuse deleting an L3 port; clear the floating IPs of a deleted port (same txn)."""
    from controller.services.base import bump

    check_port_delete(cache, port)
    for fip in cache.related(FloatingIP, "fip_port", port.id):
        txn.update(fip, bump(fip, disassociated()))
    # No floating IP gets associated with it meanwhile.
    txn.prefix_unchanged(f"fipassoc/{port.id}/")


def check_external_unused(cache: Cache, txn: Txn, net: Network) -> None:
    """Neutron's ExternalNetworkInUse: a network routers use as gateway stays external."""
    gateways = [
        p for p in cache.related(Port, "net_ports", net.id) if p.device_owner == ROUTER_GATEWAY
    ]
    if gateways:
        raise FailedPrecondition(
            f"External network {net.id} cannot be updated to be made non-external, since it"
            " has existing gateway ports.",
            reason="ExternalNetworkInUse",
        )
    txn.prefix_unchanged(f"netport/{net.id}/")


def new_port(
    ports: PortService,
    txn: Txn,
    net: Network,
    *,
    project_id: str,
    device_id: str,
    device_owner: str,
    fixed_ips: list[Pair] | None,
    field: str,
    exact: bool = False,
    allocated: bool = False,
) -> Port:
    """A port the L3 services create (not counted in any quota, no security groups).

    ``fixed_ips`` None: Neutron's default allocation; ``allocated``: addresses the
    caller already reserved in txn. Field violations of the port
    rules are reported under ``field`` (in place of port.fixed_ips, or as is when ``exact``).
    """
    mac = ports._mac(txn, net, "")
    subnets = sorted(
        ports.cache.related(Subnet, "net_subnets", net.id), key=lambda s: (s.created_at, s.id)
    )
    try:
        if allocated and fixed_ips is not None:
            ips = list(fixed_ips)
        elif fixed_ips is None:
            ips = ports._default_ips(txn, net, subnets, mac)
        else:
            ips = ports._requested_ips(txn, net, subnets, fixed_ips, device_owner, mac, [])
    except BaryonError as err:
        err.field_violations = [
            (field if exact else f.replace("port.fixed_ips", field, 1), m)
            for f, m in err.field_violations
        ]
        raise
    txn.depends_on(net)
    now = time.time()
    return Port(
        id=str(uuid.uuid4()),
        project_id=project_id,
        revision_number=1,
        created_at=now,
        updated_at=now,
        network_id=net.id,
        mac_address=mac,
        fixed_ips=ips,
        device_id=device_id,
        device_owner=device_owner,
        security_groups=[],
        port_security_enabled=False,
    )


def router_ports(cache: Cache, router_id: str) -> Iterator[Port]:
    """The router's interface and gateway ports."""
    for port in cache.related(Port, "device", router_id):
        if port.device_owner in (ROUTER_INTERFACE, ROUTER_GATEWAY):
            yield port
