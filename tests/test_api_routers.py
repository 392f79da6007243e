"""RouterService against a real etcd: gateways, interfaces, routes, in-use rules."""

from __future__ import annotations

import ipaddress

from baryon.v1 import port_pb2, router_pb2
from tests.support.controller import (
    Env,
    StartEnv,
    StatusCode,
    expect_error,
    index_keys,
    ips_of,
    unchanged,
)
from tests.support.l3 import L3, Topology, topology

INVALID = StatusCode.INVALID_ARGUMENT
IN_USE = StatusCode.FAILED_PRECONDITION
GW = "router.external_gateway_info"


def gw_ips(router: router_pb2.Router) -> list[tuple[str, str]]:
    return [(ip.subnet_id, ip.ip_address) for ip in router.external_gateway_info.external_fixed_ips]


async def router_ports(env: Env, router_id: str) -> list[port_pb2.Port]:
    return sorted(await env.admin.list_ports(device_id=router_id), key=lambda p: p.device_owner)


async def with_interface(env: Env) -> tuple[Topology, router_pb2.Router, str]:
    """p1's router with a gateway on ext and an interface on p1's subnet."""
    t = await topology(env)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    info = await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    return t, r, info.port_id


# --------------------------------------------------------------------------- CRUD


async def test_create_defaults_get_list_visibility(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r1", description="d", tags=["a"])
    assert (r.project_id, r.name, r.description, list(r.tags)) == ("p1", "r1", "d", ["a"])
    assert r.status == "ACTIVE" and r.HasField("admin_state_up") and r.admin_state_up
    assert not r.HasField("external_gateway_info") and not r.routes
    assert r.revision_number == 1
    assert await t.p1.get_router(r.id) == r
    assert [x.id for x in await t.p1.list_routers()] == [r.id]
    assert [x.id for x in await t.p1.list_routers(name="r1", tags=["a"])] == [r.id]
    assert await t.p1.list_routers(name="other") == []
    # Neutron: routers of one's own project only; admins see all.
    assert await t.p2.list_routers() == []
    await expect_error(t.p2.get_router(r.id), StatusCode.NOT_FOUND, "RouterNotFound")
    assert [x.id for x in await t.admin.list_routers()] == [r.id]
    disabled = await t.p1.router(name="r2", admin_state_up=False)
    assert disabled.admin_state_up is False


async def test_update_plain_fields_and_revision(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    new = await t.p1.update_router(r.id, if_revision=1, name="s", admin_state_up=False)
    assert (new.name, new.admin_state_up, new.revision_number) == ("s", False, 2)
    async with unchanged(env):
        await expect_error(
            t.p1.update_router(r.id, if_revision=1, name="x"),
            StatusCode.ABORTED,
            "RevisionNumberConstraintFailed",
        )
        await expect_error(
            t.p1.update_router(r.id, status="DOWN"), INVALID, "InvalidInput", "router.status"
        )
        await expect_error(
            t.p2.update_router(r.id, name="x"), StatusCode.NOT_FOUND, "RouterNotFound"
        )


async def test_routes_cannot_be_given_on_create(env: Env) -> None:
    t = await topology(env)
    async with unchanged(env):
        await expect_error(
            t.p1.router(routes=[router_pb2.Route(destination="10.9.0.0/24", nexthop="10.0.0.9")]),
            INVALID,
            "InvalidInput",
            "router.routes",
        )


async def test_router_quota(start_env: StartEnv) -> None:
    env = await start_env(quotas={"router": 1})
    t = await topology(env)
    await t.p1.router(name="one")
    async with unchanged(env):
        await expect_error(t.p1.router(name="two"), StatusCode.RESOURCE_EXHAUSTED, "OverQuota")
    assert await index_keys(env, "q/p1/router/") == {"0": (await t.p1.list_routers())[0].id}


# --------------------------------------------------------------------------- gateway


async def test_gateway_on_create(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    gw = r.external_gateway_info
    assert gw.network_id == t.ext.id and gw.HasField("enable_snat") and gw.enable_snat
    ((subnet_id, ip),) = gw_ips(r)
    assert subnet_id == t.ext_subnet.id
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(t.ext_subnet.cidr)
    assert ip != t.ext_subnet.gateway_ip
    (port,) = await router_ports(env, r.id)
    assert port.device_owner == "network:router_gateway" and port.project_id == ""
    assert port.network_id == t.ext.id and ips_of(port) == [ip]
    assert not port.security_groups.ids
    # The member does not see the gateway port (it belongs to no project).
    assert await env.p1.list_ports(device_id=r.id) == []
    assert await index_keys(env, f"rtrport/{r.id}/") == {port.id: port.id}
    assert await index_keys(env, f"ip/{t.ext_subnet.id}/") == {ip: port.id}


async def test_gateway_network_must_be_external(env: Env) -> None:
    t = await topology(env)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.router(external_gateway_info={"network_id": t.net.id}),
            INVALID,
            "BadRequest",
            f"{GW}.network_id",
        )
        assert (
            failure.message == f"Bad router request: Network {t.net.id} is not an external network"
        )
        await expect_error(
            t.p1.router(external_gateway_info={"network_id": "nope"}),
            StatusCode.NOT_FOUND,
            "NetworkNotFound",
        )


async def test_gateway_without_subnets(env: Env) -> None:
    t = await topology(env)
    bare = await env.admin.network(name="bare", external=True)
    async with unchanged(env):
        await expect_error(
            t.p1.router(external_gateway_info={"network_id": bare.id}),
            INVALID,
            "ExternalIpAddressExhausted",
            f"{GW}.network_id",
        )


async def test_gateway_snat_and_fixed_ips_are_admin_only(env: Env) -> None:
    t = await topology(env)
    async with unchanged(env):
        await expect_error(
            t.p1.router(external_gateway_info={"network_id": t.ext.id, "enable_snat": False}),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
        )
        fixed = [router_pb2.ExternalFixedIP(ip_address="203.0.113.50")]
        await expect_error(
            t.p1.router(
                external_gateway_info={"network_id": t.ext.id, "external_fixed_ips": fixed}
            ),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
        )
    r = await t.admin.router(
        project_id="p1",
        external_gateway_info={
            "network_id": t.ext.id,
            "enable_snat": False,
            "external_fixed_ips": fixed,
        },
    )
    assert r.project_id == "p1" and r.external_gateway_info.enable_snat is False
    assert gw_ips(r) == [(t.ext_subnet.id, "203.0.113.50")]


async def test_gateway_fixed_ip_rules(env: Env) -> None:
    t = await topology(env)
    gateway_ip = [router_pb2.ExternalFixedIP(ip_address=t.ext_subnet.gateway_ip)]
    taken = await env.admin.port(t.ext.id)
    async with unchanged(env):
        failure = await expect_error(
            t.admin.router(
                external_gateway_info={"network_id": t.ext.id, "external_fixed_ips": gateway_ip}
            ),
            INVALID,
            "BadRequest",
            f"{GW}.external_fixed_ips[0].ip_address",
        )
        assert "is the same as the gateway IP" in failure.message
        in_use = [router_pb2.ExternalFixedIP(ip_address=ips_of(taken)[0])]
        await expect_error(
            t.admin.router(
                external_gateway_info={"network_id": t.ext.id, "external_fixed_ips": in_use}
            ),
            StatusCode.ALREADY_EXISTS,
            "IpAddressInUse",
            f"{GW}.external_fixed_ips[0].ip_address",
        )
        outside = [router_pb2.ExternalFixedIP(ip_address="192.0.2.1")]
        await expect_error(
            t.admin.router(
                external_gateway_info={"network_id": t.ext.id, "external_fixed_ips": outside}
            ),
            INVALID,
            "InvalidIpForNetwork",
            f"{GW}.external_fixed_ips[0].ip_address",
        )


async def test_set_change_and_clear_gateway(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    r = await t.p1.set_gateway(r.id, t.ext.id)
    assert r.external_gateway_info.network_id == t.ext.id and r.revision_number == 2
    (port,) = await router_ports(env, r.id)
    # Same network: the admin changes SNAT and the address; the port stays.
    r = await t.admin.set_gateway(
        r.id,
        t.ext.id,
        enable_snat=False,
        external_fixed_ips=[router_pb2.ExternalFixedIP(ip_address="203.0.113.77")],
    )
    assert r.external_gateway_info.enable_snat is False
    assert gw_ips(r) == [(t.ext_subnet.id, "203.0.113.77")]
    (same,) = await router_ports(env, r.id)
    assert same.id == port.id and ips_of(same) == ["203.0.113.77"]
    # Another external network: a new gateway port replaces the old one.
    ext2 = await env.admin.network(name="ext2", external=True)
    ext2_subnet = await env.admin.subnet(ext2.id, "198.51.100.0/24")
    r = await t.p1.set_gateway(r.id, ext2.id)
    assert r.external_gateway_info.enable_snat is True  # Neutron: omitted means the default
    assert [s for s, _ in gw_ips(r)] == [ext2_subnet.id]
    (new_port,) = await router_ports(env, r.id)
    assert new_port.id != port.id and new_port.network_id == ext2.id
    assert await index_keys(env, f"ip/{t.ext_subnet.id}/") == {}
    # Cleared: the gateway port goes.
    r = await t.p1.clear_gateway(r.id)
    assert not r.HasField("external_gateway_info")
    assert await router_ports(env, r.id) == []
    assert await index_keys(env, f"ip/{ext2_subnet.id}/") == {}


async def test_external_network_with_gateway_in_use(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    (port,) = await router_ports(env, r.id)
    async with unchanged(env):
        await expect_error(env.admin.delete_network(t.ext.id), IN_USE, "NetworkInUse")
        await expect_error(env.admin.delete_subnet(t.ext_subnet.id), IN_USE, "SubnetInUse")
        failure = await expect_error(env.admin.delete_port(port.id), IN_USE, "ServicePortInUse")
        assert failure.message == (
            f"Port {port.id} cannot be deleted directly via the port API: has device owner"
            " network:router_gateway."
        )
    await t.p1.delete_router(r.id)
    assert await env.admin.list_ports(network_id=t.ext.id) == []
    await env.admin.delete_network(t.ext.id)


# --------------------------------------------------------------------------- interfaces


async def test_add_interface_by_subnet(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    info = await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    assert (info.id, info.router_id, info.project_id) == (r.id, r.id, "p1")
    assert (info.network_id, info.subnet_id) == (t.net.id, t.subnet.id)
    assert list(info.subnet_ids) == [t.subnet.id]
    port = await env.p1.get_port(info.port_id)
    assert (port.device_id, port.device_owner) == (r.id, "network:router_interface")
    assert port.project_id == "p1" and port.network_id == t.net.id
    # The interface takes the subnet's gateway IP.
    assert [(ip.subnet_id, ip.ip_address) for ip in port.fixed_ips.ips] == [
        (t.subnet.id, t.subnet.gateway_ip)
    ]
    assert await index_keys(env, f"rtrport/{r.id}/") == {port.id: port.id}
    assert [p.id for p in await env.p1.list_ports(device_id=r.id)] == [port.id]


async def test_add_interface_request_rules(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    port = await env.p1.port(t.net.id)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.add_interface(r.id, subnet_id=t.subnet.id, port_id=port.id),
            INVALID,
            "BadRequest",
            "port_id",
        )
        assert failure.message == "Bad router request: Cannot specify both subnet-id and port-id"
        await expect_error(t.p1.add_interface(r.id), INVALID, "BadRequest", "subnet_id")
        await expect_error(
            t.p1.add_interface("nope", subnet_id=t.subnet.id),
            StatusCode.NOT_FOUND,
            "RouterNotFound",
        )
        await expect_error(
            t.p2.add_interface(r.id, subnet_id=t.subnet.id), StatusCode.NOT_FOUND, "RouterNotFound"
        )
        await expect_error(
            t.p1.add_interface(r.id, subnet_id="nope"), StatusCode.NOT_FOUND, "SubnetNotFound"
        )


async def test_subnet_without_gateway_ip(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    no_gw = await env.p1.subnet(t.net.id, "10.0.5.0/24", gateway_ip="")
    async with unchanged(env):
        failure = await expect_error(
            t.p1.add_interface(r.id, subnet_id=no_gw.id), INVALID, "BadRequest", "subnet_id"
        )
    assert failure.message == (
        "Bad router request: Subnet for router interface must have a gateway IP"
    )


async def test_duplicate_and_overlapping_subnets(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    other = await env.p1.network(name="other")
    overlapping = await env.p1.subnet(other.id, "10.0.0.128/25")
    async with unchanged(env):
        failure = await expect_error(
            t.p1.add_interface(r.id, subnet_id=t.subnet.id), INVALID, "BadRequest", "subnet_id"
        )
        assert failure.message == (
            f"Bad router request: Router already has a port on subnet {t.subnet.id}"
        )
        failure = await expect_error(
            t.p1.add_interface(r.id, subnet_id=overlapping.id), INVALID, "BadRequest", "subnet_id"
        )
        assert failure.message == (
            f"Bad router request: Cidr 10.0.0.128/25 of subnet {overlapping.id} overlaps with"
            f" cidr {t.subnet.cidr} of subnet {t.subnet.id}"
        )
    # Another router may take it (its gateway IP is free).
    r2 = await t.p1.router(name="r2")
    await t.p1.add_interface(r2.id, subnet_id=overlapping.id)
    # ...but a subnet's gateway IP is held once.
    r3 = await t.p1.router(name="r3")
    async with unchanged(env):
        await expect_error(
            t.p1.add_interface(r3.id, subnet_id=t.subnet.id),
            StatusCode.ALREADY_EXISTS,
            "IpAddressInUse",
            "subnet_id",
        )


async def test_gateway_overlapping_an_interface(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    net = await env.p1.network(name="n2")
    clash = await env.p1.subnet(net.id, "203.0.113.0/25")
    await t.p1.add_interface(r.id, subnet_id=clash.id)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.set_gateway(r.id, t.ext.id), INVALID, "BadRequest", f"{GW}.network_id"
        )
    assert "overlaps with cidr 203.0.113.0/25" in failure.message


async def test_add_interface_by_port(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    port = await env.p1.port(t.net.id, fixed_ips=port_pb2.FixedIPList(
        ips=[port_pb2.FixedIP(subnet_id=t.subnet.id, ip_address="10.0.0.2")]
    ))  # fmt: skip
    info = await t.p1.add_interface(r.id, port_id=port.id)
    assert (info.port_id, info.subnet_id, info.network_id) == (port.id, t.subnet.id, t.net.id)
    got = await env.p1.get_port(port.id)
    assert (got.device_id, got.device_owner) == (r.id, "network:router_interface")
    assert got.revision_number == port.revision_number + 1


async def test_add_interface_by_port_rules(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    vm = await env.p1.port(t.net.id, device_id="vm1", device_owner="compute:nova")
    bare = await env.p1.port(t.net.id, fixed_ips=port_pb2.FixedIPList())
    second = await env.p1.subnet(t.net.id, "10.0.1.0/24")
    two_v4 = await env.p1.port(t.net.id, fixed_ips=port_pb2.FixedIPList(
        ips=[port_pb2.FixedIP(subnet_id=t.subnet.id), port_pb2.FixedIP(subnet_id=second.id)]
    ))  # fmt: skip
    async with unchanged(env):
        failure = await expect_error(t.p1.add_interface(r.id, port_id=vm.id), IN_USE, "PortInUse")
        assert failure.message == (
            f"Unable to complete operation on port {vm.id} for network {t.net.id}. Port already"
            " has an attached device vm1."
        )
        failure = await expect_error(
            t.p1.add_interface(r.id, port_id=bare.id), INVALID, "BadRequest", "port_id"
        )
        assert failure.message == "Bad router request: Router port must have at least one fixed IP"
        failure = await expect_error(
            t.p1.add_interface(r.id, port_id=two_v4.id), INVALID, "BadRequest", "port_id"
        )
        assert failure.message == (
            "Bad router request: Cannot have multiple IPv4 subnets on router port"
        )
        await expect_error(
            t.p1.add_interface(r.id, port_id="nope"), StatusCode.NOT_FOUND, "PortNotFound"
        )
    # A port of another router is in use too.
    r2 = await t.p1.router(name="r2")
    info = await t.p1.add_interface(r2.id, subnet_id=t.subnet.id)
    async with unchanged(env):
        await expect_error(t.p1.add_interface(r.id, port_id=info.port_id), IN_USE, "PortInUse")


async def test_remove_interface_by_subnet_and_by_port(env: Env) -> None:
    t, r, port_id = await with_interface(env)
    info = await t.p1.remove_interface(r.id, subnet_id=t.subnet.id)
    assert (info.router_id, info.port_id, info.subnet_id) == (r.id, port_id, t.subnet.id)
    assert [p.device_owner for p in await router_ports(env, r.id)] == ["network:router_gateway"]
    assert await index_keys(env, f"ip/{t.subnet.id}/") == {}
    # By port: Neutron deletes the port, also one the user created.
    port = await env.p1.port(t.net.id)
    await t.p1.add_interface(r.id, port_id=port.id)
    info = await t.p1.remove_interface(r.id, port_id=port.id)
    assert (info.port_id, list(info.subnet_ids)) == (port.id, [t.subnet.id])
    await expect_error(env.p1.get_port(port.id), StatusCode.NOT_FOUND, "PortNotFound")


async def test_remove_interface_not_found(env: Env) -> None:
    t, r, port_id = await with_interface(env)
    other = await env.p1.port(t.net.id)
    second = await env.p1.subnet(t.net.id, "10.0.1.0/24")
    async with unchanged(env):
        failure = await expect_error(
            t.p1.remove_interface(r.id, subnet_id=second.id),
            StatusCode.NOT_FOUND,
            "RouterInterfaceNotFoundForSubnet",
        )
        assert failure.message == f"Router {r.id} has no interface on subnet {second.id}"
        failure = await expect_error(
            t.p1.remove_interface(r.id, port_id=other.id),
            StatusCode.NOT_FOUND,
            "RouterInterfaceNotFound",
        )
        assert failure.message == f"Router {r.id} does not have an interface with id {other.id}"
        await expect_error(
            t.p1.remove_interface(r.id, port_id=port_id, subnet_id=second.id),
            StatusCode.NOT_FOUND,
            "RouterInterfaceNotFoundForSubnet",
        )
        await expect_error(t.p1.remove_interface(r.id), INVALID, "BadRequest", "subnet_id")


async def test_router_with_interfaces_cannot_be_deleted(env: Env) -> None:
    t, r, port_id = await with_interface(env)
    async with unchanged(env):
        failure = await expect_error(t.p1.delete_router(r.id), IN_USE, "RouterInUse")
    assert failure.message == f"Router {r.id} still has ports"
    assert failure.metadata["ports"] == port_id
    await t.p1.remove_interface(r.id, port_id=port_id)
    await t.p1.delete_router(r.id)
    assert await env.admin.list_ports(device_id=r.id) == []
    await expect_error(t.p1.get_router(r.id), StatusCode.NOT_FOUND, "RouterNotFound")
    assert await index_keys(env, f"rtrport/{r.id}/") == {}
    assert await index_keys(env, "q/p1/router/") == {}


async def test_interface_ports_block_port_network_and_subnet_deletion(env: Env) -> None:
    t, _, port_id = await with_interface(env)
    async with unchanged(env):
        failure = await expect_error(env.p1.delete_port(port_id), IN_USE, "ServicePortInUse")
        assert failure.message == (
            f"Port {port_id} cannot be deleted directly via the port API: has device owner"
            " network:router_interface."
        )
        await expect_error(env.admin.delete_port(port_id), IN_USE, "ServicePortInUse")
        # Neutron: router interfaces are not auto-deleted with their network or subnet.
        await expect_error(env.p1.delete_network(t.net.id), IN_USE, "NetworkInUse")
        await expect_error(env.p1.delete_subnet(t.subnet.id), IN_USE, "SubnetInUse")


# --------------------------------------------------------------------------- routes


async def test_static_routes(env: Env) -> None:
    t, r, _ = await with_interface(env)
    r = await t.p1.set_routes(r.id, ("192.168.0.0/16", "10.0.0.9"), ("0.0.0.0/0", "203.0.113.1"))
    assert [(x.destination, x.nexthop) for x in r.routes] == [
        ("192.168.0.0/16", "10.0.0.9"),
        ("0.0.0.0/0", "203.0.113.1"),
    ]
    assert (await t.p1.get_router(r.id)).routes == r.routes
    r = await t.p1.set_routes(r.id)
    assert not r.routes


async def test_route_nexthop_rules(env: Env) -> None:
    t, r, _ = await with_interface(env)
    own_ip = gw_ips(r)[0][1]
    async with unchanged(env):
        failure = await expect_error(
            t.p1.set_routes(r.id, ("192.168.0.0/16", "172.16.0.1")),
            INVALID,
            "InvalidRoutes",
            "router.routes[0].nexthop",
        )
        assert failure.message == (
            "Invalid format for routes: [{'destination': '192.168.0.0/16', 'nexthop':"
            " '172.16.0.1'}], the nexthop is not connected with router"
        )
        failure = await expect_error(
            t.p1.set_routes(r.id, ("192.168.0.0/16", "10.0.0.9"), ("192.168.1.0/24", own_ip)),
            INVALID,
            "InvalidRoutes",
            "router.routes[1].nexthop",
        )
        assert failure.message.endswith(", the nexthop is used by router")
        await expect_error(
            t.p1.set_routes(r.id, ("192.168.0.1/16", "10.0.0.9")),
            INVALID,
            "InvalidInput",
            "router.routes[0].destination",
        )
        await expect_error(
            t.p1.set_routes(r.id, ("192.168.0.0/16", "10.0.0.x")),
            INVALID,
            "InvalidInput",
            "router.routes[0].nexthop",
        )
        await expect_error(
            t.p1.set_routes(r.id, ("192.168.0.0/16", "10.0.0.9"), ("192.168.0.0/16", "10.0.0.9")),
            INVALID,
            "InvalidInput",
            "router.routes[1]",
        )
        many = [(f"192.168.{i}.0/24", "10.0.0.9") for i in range(31)]
        await expect_error(
            t.p1.set_routes(r.id, *many), INVALID, "RoutesExhausted", "router.routes"
        )


async def test_interface_used_by_a_route_stays(env: Env) -> None:
    t, r, port_id = await with_interface(env)
    await t.p1.set_routes(r.id, ("192.168.0.0/16", "10.0.0.9"))
    async with unchanged(env):
        failure = await expect_error(
            t.p1.remove_interface(r.id, subnet_id=t.subnet.id),
            IN_USE,
            "RouterInterfaceInUseByRoute",
        )
    assert failure.message == (
        f"Router interface for subnet {t.subnet.id} on router {r.id} cannot be deleted, as it is"
        " required by one or more routes."
    )
    await t.p1.set_routes(r.id)
    await t.p1.remove_interface(r.id, port_id=port_id)


async def test_member_cannot_use_another_projects_subnet(env: Env) -> None:
    t = await topology(env)
    r2 = await L3(env, env.p2).router(name="theirs")
    async with unchanged(env):
        await expect_error(
            t.p2.add_interface(r2.id, subnet_id=t.subnet.id), StatusCode.NOT_FOUND, "SubnetNotFound"
        )


async def test_gateway_network_stays_external(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    async with unchanged(env):
        failure = await expect_error(
            env.admin.update_network(t.ext.id, external=False), IN_USE, "ExternalNetworkInUse"
        )
    assert failure.message == (
        f"External network {t.ext.id} cannot be updated to be made non-external, since it has"
        " existing gateway ports."
    )
    await t.p1.clear_gateway(r.id)
    assert (await env.admin.update_network(t.ext.id, external=False)).external is False


async def test_gateway_and_routes_in_one_update(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r")
    req = router_pb2.UpdateRouterRequest(
        router=router_pb2.Router(
            id=r.id,
            external_gateway_info=router_pb2.ExternalGatewayInfo(network_id=t.ext.id),
            routes=[router_pb2.Route(destination="0.0.0.0/0", nexthop=t.ext_subnet.gateway_ip)],
        ),
    )  # an empty mask: every field given
    r = await t.p1.routers.UpdateRouter(req)
    assert r.external_gateway_info.network_id == t.ext.id
    assert [(x.destination, x.nexthop) for x in r.routes] == [("0.0.0.0/0", "203.0.113.1")]


async def test_gateway_address_change_in_use(env: Env) -> None:
    t = await topology(env)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    taken = await env.admin.port(t.ext.id)
    async with unchanged(env):
        await expect_error(
            t.admin.set_gateway(
                r.id,
                t.ext.id,
                external_fixed_ips=[router_pb2.ExternalFixedIP(ip_address=ips_of(taken)[0])],
            ),
            StatusCode.ALREADY_EXISTS,
            "IpAddressInUse",
            f"{GW}.external_fixed_ips[0].ip_address",
        )
