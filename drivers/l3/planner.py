"""Pure: the plan that converges a host's routers (no I/O).

Per router, in order: namespace (with forwarding), ports (veth pairs), ports the
router no longer has, addresses, routes, the NAT table, gratuitous ARPs for addresses
added, then conntrack flushes for NAT
addresses that went away or now map elsewhere (after the new rules are in, so no new
connection picks up the old mapping). Routers this host no longer runs are removed
last and only these are flagged ``removes_stale``: a desired router's spec is complete,
so what it no longer has is removed on any sync.
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.base import Change, Plan
from drivers.l3 import nat
from drivers.l3.actual import L3Actual, RouterActual
from drivers.l3.changes import (
    AnnounceAddresses,
    DeleteRouter,
    DeleteRouterPort,
    EnsureRouterNamespace,
    EnsureRouterPort,
    FlushConntrack,
    LoadNat,
    SetAddresses,
    SetRoutes,
)
from drivers.l3.model import RouterPort, RouterSpec
from drivers.l3.naming import (
    GATEWAY_PREFIX,
    INTERNAL_PREFIX,
    gateway_device,
    internal_device,
    namespace_name,
    port_device_name,
)
from drivers.nsdev import VethPort, veth_port_ok

DEFAULT_V4 = "0.0.0.0/0"


def desired_addresses(spec: RouterSpec) -> dict[str, frozenset[str]]:
    """device -> addresses: the ports' IPs, plus every floating IP (/32) on the gateway
    device so that the router answers ARP for it."""
    out = {internal_device(p.port_id): frozenset(p.ips) for p in spec.interfaces}
    if spec.gateway is not None:
        fips = {f"{f.floating_ip}/32" for f in spec.floating_ips}
        out[gateway_device(spec.gateway.port_id)] = frozenset(spec.gateway.ips) | fips
    return out


def desired_routes(spec: RouterSpec) -> frozenset[tuple[str, str]]:
    routes = {(r.destination, r.nexthop) for r in spec.routes}
    if spec.gateway is not None and spec.gateway_nexthop is not None:
        routes.add((DEFAULT_V4, spec.gateway_nexthop))
    return frozenset(routes)


def _veth(port: RouterPort, device: str, up: bool) -> VethPort:
    return VethPort(
        port_id=port.port_id,
        tap=port_device_name(port.port_id),
        inner=device,
        mac=port.mac,
        mtu=port.mtu,
        bridge=port.bridge,
        up=up,
        ipv6=any(":" in ip for ip in port.ips),
    )


def _port_ok(veth: VethPort, ra: RouterActual | None, actual: L3Actual) -> bool:
    if ra is None:
        return False
    return veth_port_ok(veth, ra.links.get(veth.inner), actual.taps.get(veth.tap), actual.bridges)


def router_changes(
    prefix: str, spec: RouterSpec, ra: RouterActual | None, actual: L3Actual
) -> list[Change]:
    ns = namespace_name(prefix, spec.id)
    changes: list[Change] = []
    if ra is None or not ra.forwarding:
        changes.append(EnsureRouterNamespace(ns))
    devices: dict[str, RouterPort] = {internal_device(p.port_id): p for p in spec.interfaces}
    if spec.gateway is not None:
        devices[gateway_device(spec.gateway.port_id)] = spec.gateway
    for device, port in devices.items():
        veth = _veth(port, device, spec.admin_state_up)
        if not _port_ok(veth, ra, actual):
            changes.append(EnsureRouterPort(ns, veth))
    flush: set[str] = set()
    if ra is not None:
        for name in sorted(ra.links):
            if name.startswith((INTERNAL_PREFIX, GATEWAY_PREFIX)) and name not in devices:
                changes.append(DeleteRouterPort(ns, name))
                if name.startswith(GATEWAY_PREFIX):
                    flush.update(a.split("/")[0] for a in ra.addresses.get(name, ()))
    announce: list[tuple[str, str, tuple[str, ...]]] = []
    for device, want in sorted(desired_addresses(spec).items()):
        have = ra.addresses.get(device, frozenset()) if ra is not None else frozenset()
        if ra is None or device not in ra.links:
            have = frozenset()
        if want != have:
            added, removed = tuple(sorted(want - have)), tuple(sorted(have - want))
            changes.append(SetAddresses(ns, device, added, removed))
            if device.startswith(GATEWAY_PREFIX):
                flush.update(a.split("/")[0] for a in removed)
            if added and spec.admin_state_up:
                announce.append((device, devices[device].mac, added))
    want_routes = desired_routes(spec)
    have_routes = ra.routes if ra is not None else frozenset()
    if want_routes != have_routes:
        changes.append(
            SetRoutes(
                ns,
                tuple(sorted(want_routes - have_routes)),
                tuple(sorted(have_routes - want_routes)),
            )
        )
    body = nat.render_body(spec)
    digest = nat.digest(body)
    if ra is None or ra.nat_digest != digest:
        changes.append(LoadNat(ns, nat.render_script(spec), digest))
    if announce:  # once the router is ready: addresses, routes and NAT in place
        changes.append(AnnounceAddresses(ns, tuple(announce)))
    if ra is not None:
        flush.update(f.floating_ip for f in ra.nat_fips - set(spec.floating_ips))
    if flush:
        changes.append(FlushConntrack(ns, tuple(sorted(flush))))
    return changes


def diff(prefix: str, desired: Mapping[str, RouterSpec], actual: L3Actual) -> Plan:
    changes: list[Change] = []
    for router_id in sorted(desired):
        spec = desired[router_id]
        changes.extend(router_changes(prefix, spec, actual.routers.get(router_id), actual))
    for router_id in sorted(set(actual.routers) - set(desired)):
        changes.append(DeleteRouter(actual.routers[router_id].namespace))
    return Plan(tuple(changes))
