"""FloatingIPService against a real etcd: allocation, association through a router,
and what deleting ports, interfaces and gateways does to floating IPs."""

from __future__ import annotations

import ipaddress

from baryon.v1 import floating_ip_pb2, port_pb2
from tests.support.controller import (
    Env,
    StartEnv,
    StatusCode,
    expect_error,
    index_keys,
    ips_of,
    unchanged,
)
from tests.support.l3 import Topology, topology

INVALID = StatusCode.INVALID_ARGUMENT
IN_USE = StatusCode.FAILED_PRECONDITION
F = "floating_ip"


async def routed(env: Env) -> tuple[Topology, str, port_pb2.Port]:
    """The topology with p1's router between its subnet and ext, and a VM port of p1."""
    t = await topology(env)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    vm = await env.p1.port(t.net.id, device_id="vm1", device_owner="compute:nova")
    return t, r.id, vm


async def test_create_allocates_a_port_on_the_external_network(env: Env) -> None:
    t = await topology(env)
    fip = await t.p1.fip(t.ext.id, description="d")
    assert (fip.project_id, fip.floating_network_id, fip.description) == ("p1", t.ext.id, "d")
    assert fip.subnet_id == t.ext_subnet.id
    assert ipaddress.ip_address(fip.floating_ip_address) in ipaddress.ip_network(t.ext_subnet.cidr)
    assert fip.status == "DOWN" and fip.revision_number == 1
    assert (fip.port_id, fip.fixed_ip_address, fip.router_id) == ("", "", "")
    (port,) = await env.admin.list_ports(device_id=fip.id)
    assert (port.device_owner, port.project_id, port.network_id) == (
        "network:floatingip",
        "",
        t.ext.id,
    )
    assert ips_of(port) == [fip.floating_ip_address]
    assert await index_keys(env, f"ip/{t.ext_subnet.id}/") == {fip.floating_ip_address: port.id}
    assert await t.p1.get_fip(fip.id) == fip
    assert [f.id for f in await t.p1.list_fips()] == [fip.id]
    assert [f.id for f in await t.p1.list_fips(floating_network_id=t.ext.id)] == [fip.id]
    assert await t.p1.list_fips(port_id="x") == []
    # Visibility: own project only.
    assert await t.p2.list_fips() == []
    failure = await expect_error(t.p2.get_fip(fip.id), StatusCode.NOT_FOUND, "FloatingIPNotFound")
    assert failure.message == f"Floating IP {fip.id} could not be found"
    # Its port goes with it only.
    async with unchanged(env):
        failure = await expect_error(env.admin.delete_port(port.id), IN_USE, "ServicePortInUse")
    assert "has device owner network:floatingip" in failure.message


async def test_network_must_be_external(env: Env) -> None:
    t = await topology(env)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.fip(t.net.id), INVALID, "BadRequest", f"{F}.floating_network_id"
        )
        assert failure.message == (
            f"Bad floatingip request: Network {t.net.id} is not a valid external network"
        )
        await expect_error(t.p1.fip("nope"), StatusCode.NOT_FOUND, "NetworkNotFound")
        await expect_error(t.p1.fip(""), INVALID, None, f"{F}.floating_network_id")


async def test_external_network_needs_an_ipv4_subnet(env: Env) -> None:
    t = await topology(env)
    v6 = await env.admin.network(name="v6", external=True)
    await env.admin.subnet(v6.id, "2001:db8::/64")
    async with unchanged(env):
        failure = await expect_error(
            t.p1.fip(v6.id), INVALID, "BadRequest", f"{F}.floating_network_id"
        )
    assert failure.message.endswith(f"Network {v6.id} does not contain any IPv4 subnet")


async def test_chosen_address_and_subnet(env: Env) -> None:
    t = await topology(env)
    async with unchanged(env):
        await expect_error(
            t.p1.fip(t.ext.id, floating_ip_address="203.0.113.10"),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
        )
    fip = await t.admin.fip(t.ext.id, floating_ip_address="203.0.113.10", project_id="p1")
    assert (fip.floating_ip_address, fip.project_id) == ("203.0.113.10", "p1")
    async with unchanged(env):
        await expect_error(
            t.admin.fip(t.ext.id, floating_ip_address="203.0.113.10"),
            StatusCode.ALREADY_EXISTS,
            "IpAddressInUse",
            f"{F}.floating_ip_address",
        )
        await expect_error(
            t.admin.fip(t.ext.id, floating_ip_address="192.0.2.1"),
            INVALID,
            "InvalidIpForNetwork",
            f"{F}.floating_ip_address",
        )
        await expect_error(
            t.p1.fip(t.ext.id, subnet_id=t.subnet.id), INVALID, "BadRequest", f"{F}.subnet_id"
        )
    second = await env.admin.subnet(t.ext.id, "198.51.100.0/24")
    from_second = await t.p1.fip(t.ext.id, subnet_id=second.id)
    assert from_second.subnet_id == second.id
    assert from_second.floating_ip_address.startswith("198.51.100.")


async def test_exhausted_external_network(env: Env) -> None:
    t = await topology(env)
    tiny = await env.admin.network(name="tiny", external=True)
    await env.admin.subnet(tiny.id, "192.0.2.0/30")  # one usable address besides the gateway
    await t.p1.fip(tiny.id)
    async with unchanged(env):
        await expect_error(
            t.p1.fip(tiny.id), StatusCode.RESOURCE_EXHAUSTED, "IpAddressGenerationFailure"
        )


async def test_floatingip_quota(start_env: StartEnv) -> None:
    env = await start_env(quotas={"floatingip": 1})
    t = await topology(env)
    fip = await t.p1.fip(t.ext.id)
    async with unchanged(env):
        await expect_error(t.p1.fip(t.ext.id), StatusCode.RESOURCE_EXHAUSTED, "OverQuota")
    assert await index_keys(env, "q/p1/floatingip/") == {"0": fip.id}
    await t.p1.delete_fip(fip.id)
    assert await index_keys(env, "q/p1/floatingip/") == {}
    await t.p1.fip(t.ext.id)


async def test_delete_frees_port_and_address(env: Env) -> None:
    t = await topology(env)
    fip = await t.p1.fip(t.ext.id)
    async with unchanged(env):
        await expect_error(
            t.p1.delete_fip(fip.id, if_revision=7),
            StatusCode.ABORTED,
            "RevisionNumberConstraintFailed",
        )
        await expect_error(t.p2.delete_fip(fip.id), StatusCode.NOT_FOUND, "FloatingIPNotFound")
    await t.p1.delete_fip(fip.id)
    assert await env.admin.list_ports(network_id=t.ext.id) == []
    assert await index_keys(env, f"ip/{t.ext_subnet.id}/") == {}
    await expect_error(t.p1.get_fip(fip.id), StatusCode.NOT_FOUND, "FloatingIPNotFound")


# --------------------------------------------------------------------------- association


async def test_associate_on_create_and_by_update(env: Env) -> None:
    t, router_id, vm = await routed(env)
    fip = await t.p1.fip(t.ext.id, port_id=vm.id)
    assert (fip.port_id, fip.fixed_ip_address, fip.router_id) == (vm.id, ips_of(vm)[0], router_id)
    assert fip.status == "DOWN"
    key = f"{vm.id}/{ips_of(vm)[0]}/{t.ext.id}"
    assert await index_keys(env, "fipassoc/") == {key: fip.id}
    assert await index_keys(env, f"fiprtr/{router_id}/") == {fip.id: fip.id}
    assert [f.id for f in await t.p1.list_fips(port_id=vm.id, router_id=router_id)] == [fip.id]
    # Disassociate: port_id "" clears the fixed IP and router too.
    fip = await t.p1.update_fip(fip.id, port_id="")
    assert (fip.port_id, fip.fixed_ip_address, fip.router_id) == ("", "", "")
    assert await index_keys(env, "fipassoc/") == {}
    # Associate by update, naming the fixed IP.
    fip = await t.p1.update_fip(fip.id, port_id=vm.id, fixed_ip_address=ips_of(vm)[0])
    assert (fip.port_id, fip.router_id, fip.revision_number) == (vm.id, router_id, 3)
    # Moving it to another port.
    vm2 = await env.p1.port(t.net.id)
    fip = await t.p1.update_fip(fip.id, port_id=vm2.id)
    assert (fip.port_id, fip.fixed_ip_address) == (vm2.id, ips_of(vm2)[0])
    assert list(await index_keys(env, "fipassoc/")) == [f"{vm2.id}/{ips_of(vm2)[0]}/{t.ext.id}"]


async def test_no_router_to_the_external_network(env: Env) -> None:
    t = await topology(env)
    vm = await env.p1.port(t.net.id)
    fip = await t.p1.fip(t.ext.id)
    # A router on the subnet without a gateway on ext does not count.
    r = await t.p1.router(name="r")
    await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.update_fip(fip.id, port_id=vm.id),
            StatusCode.NOT_FOUND,
            "ExternalGatewayForFloatingIPNotFound",
        )
        assert failure.message == (
            f"External network {t.ext.id} is not reachable from subnet {t.subnet.id}."
            f"  Therefore, cannot associate Port {vm.id} with a Floating IP."
        )
        await expect_error(
            t.p1.fip(t.ext.id, port_id=vm.id),
            StatusCode.NOT_FOUND,
            "ExternalGatewayForFloatingIPNotFound",
        )
    await t.p1.set_gateway(r.id, t.ext.id)
    assert (await t.p1.update_fip(fip.id, port_id=vm.id)).router_id == r.id


async def test_one_floating_ip_per_fixed_ip(env: Env) -> None:
    t, _, vm = await routed(env)
    first = await t.p1.fip(t.ext.id, port_id=vm.id)
    second = await t.p1.fip(t.ext.id)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.update_fip(second.id, port_id=vm.id), IN_USE, "FloatingIPPortAlreadyAssociated"
        )
        assert failure.message == (
            f"Cannot associate floating IP {second.floating_ip_address} ({second.id}) with port"
            f" {vm.id} using fixed IP {ips_of(vm)[0]}, as that fixed IP already has a floating"
            f" IP on external network {t.ext.id}."
        )
        assert failure.metadata["floating_ip_id"] == first.id
        await expect_error(
            t.p1.fip(t.ext.id, port_id=vm.id), IN_USE, "FloatingIPPortAlreadyAssociated"
        )
    # Re-associating the same floating IP is a no-op association.
    again = await t.p1.update_fip(first.id, port_id=vm.id)
    assert again.port_id == vm.id


async def test_fixed_ip_choice_rules(env: Env) -> None:
    t, _, vm = await routed(env)
    fip = await t.p1.fip(t.ext.id)
    second = await env.p1.subnet(t.net.id, "10.0.1.0/24")
    two = await env.p1.port(t.net.id, fixed_ips=port_pb2.FixedIPList(
        ips=[port_pb2.FixedIP(subnet_id=t.subnet.id), port_pb2.FixedIP(subnet_id=second.id)]
    ))  # fmt: skip
    bare = await env.p1.port(t.net.id, fixed_ips=port_pb2.FixedIPList())
    async with unchanged(env):
        failure = await expect_error(
            t.p1.update_fip(fip.id, port_id=vm.id, fixed_ip_address="10.0.0.250"),
            INVALID,
            "BadRequest",
            f"{F}.fixed_ip_address",
        )
        assert failure.message == (
            f"Bad floatingip request: Port {vm.id} does not have fixed ip 10.0.0.250"
        )
        failure = await expect_error(
            t.p1.update_fip(fip.id, port_id=two.id), INVALID, "BadRequest", f"{F}.fixed_ip_address"
        )
        assert "has multiple fixed IPv4 addresses" in failure.message
        failure = await expect_error(
            t.p1.update_fip(fip.id, port_id=bare.id), INVALID, "BadRequest", f"{F}.port_id"
        )
        assert "that has no fixed IPv4 addresses" in failure.message
        await expect_error(
            t.p1.update_fip(fip.id, port_id="nope"), StatusCode.NOT_FOUND, "PortNotFound"
        )
        await expect_error(
            t.p1.fip(t.ext.id, fixed_ip_address="10.0.0.5"),
            INVALID,
            "BadRequest",
            f"{F}.fixed_ip_address",
        )
        await expect_error(
            t.p1.update_fip(fip.id, floating_ip_address="203.0.113.99"),
            INVALID,
            "InvalidInput",
            f"{F}.floating_ip_address",
        )
    # The subnet the chosen address is on decides the router: no router on `second`.
    async with unchanged(env):
        await expect_error(
            t.p1.update_fip(fip.id, port_id=two.id, fixed_ip_address=ips_of(two)[1]),
            StatusCode.NOT_FOUND,
            "ExternalGatewayForFloatingIPNotFound",
        )
    fip = await t.p1.update_fip(fip.id, port_id=two.id, fixed_ip_address=ips_of(two)[0])
    assert fip.fixed_ip_address == ips_of(two)[0]


async def test_port_of_another_project(env: Env) -> None:
    t, _, _ = await routed(env)
    theirs = await env.admin.port(t.net.id, project_id="p2")
    fip = await t.p1.fip(t.ext.id)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.update_fip(fip.id, port_id=theirs.id), INVALID, "BadRequest", f"{F}.port_id"
        )
    assert "owned by a different tenant" in failure.message


async def test_deleting_the_port_disassociates(env: Env) -> None:
    t, _, vm = await routed(env)
    fip = await t.p1.fip(t.ext.id, port_id=vm.id)
    await env.p1.delete_port(vm.id)
    got = await t.p1.get_fip(fip.id)
    assert (got.port_id, got.fixed_ip_address, got.router_id) == ("", "", "")
    assert got.revision_number == fip.revision_number + 1
    assert await index_keys(env, "fipassoc/") == {}


async def test_interface_and_gateway_in_use_by_a_floating_ip(env: Env) -> None:
    t, router_id, vm = await routed(env)
    fip = await t.p1.fip(t.ext.id, port_id=vm.id)
    async with unchanged(env):
        failure = await expect_error(
            t.p1.remove_interface(router_id, subnet_id=t.subnet.id),
            IN_USE,
            "RouterInterfaceInUseByFloatingIP",
        )
        assert failure.message == (
            f"Router interface for subnet {t.subnet.id} on router {router_id} cannot be deleted,"
            " as it is required by one or more floating IPs."
        )
        failure = await expect_error(
            t.p1.clear_gateway(router_id), IN_USE, "RouterExternalGatewayInUseByFloatingIp"
        )
        assert failure.message == (
            f"Gateway cannot be updated for router {router_id}, since a gateway to external"
            f" network {t.ext.id} is required by one or more floating IPs."
        )
        await expect_error(t.p1.delete_router(router_id), IN_USE, "RouterInUse")
    await t.p1.update_fip(fip.id, port_id="")
    await t.p1.remove_interface(router_id, subnet_id=t.subnet.id)
    await t.p1.delete_router(router_id)


async def test_update_fields(env: Env) -> None:
    t = await topology(env)
    fip = await t.p1.fip(t.ext.id)
    got = await t.p1.update_fip(fip.id, description="web", tags=["x"])
    assert (got.description, list(got.tags), got.revision_number) == ("web", ["x"], 2)
    msg = floating_ip_pb2.FloatingIP(id=fip.id, status="ACTIVE")
    async with unchanged(env):
        await expect_error(
            t.p1.update_fip(fip.id, status=msg.status), INVALID, "InvalidInput", f"{F}.status"
        )
