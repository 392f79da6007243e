"""Authentication, project ownership, and the token-free health and reflection services."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from baryon.v1 import (
    network_pb2,
    network_pb2_grpc,
    port_pb2,
    port_pb2_grpc,
    security_group_pb2,
    security_group_pb2_grpc,
    subnet_pb2,
    subnet_pb2_grpc,
)
from tests.support.controller import Env, StatusCode, expect_error, unchanged

BAD_METADATA = [
    pytest.param((), id="none"),
    pytest.param((("authorization", "Basic dG9rLWFkbWlu"),), id="basic-scheme"),
    pytest.param((("authorization", "tok-admin"),), id="no-scheme"),
    pytest.param((("authorization", "Bearer "),), id="empty-token"),
    pytest.param((("authorization", "Bearer nope"),), id="unknown-token"),
    pytest.param((("x-token", "tok-admin"),), id="other-header"),
]


def _calls(channel: grpc.aio.Channel, net_id: str) -> list[Any]:
    """One mutating or reading call of every service, as (method, request)."""
    nets = network_pb2_grpc.NetworkServiceStub(channel)
    subnets = subnet_pb2_grpc.SubnetServiceStub(channel)
    ports = port_pb2_grpc.PortServiceStub(channel)
    sgs = security_group_pb2_grpc.SecurityGroupServiceStub(channel)
    return [
        (nets.CreateNetwork, network_pb2.CreateNetworkRequest(network=network_pb2.Network())),
        (nets.ListNetworks, network_pb2.ListNetworksRequest()),
        (nets.GetNetwork, network_pb2.GetNetworkRequest(id=net_id)),
        (nets.DeleteNetwork, network_pb2.DeleteNetworkRequest(id=net_id)),
        (
            subnets.CreateSubnet,
            subnet_pb2.CreateSubnetRequest(
                subnet=subnet_pb2.Subnet(network_id=net_id, cidr="10.0.0.0/24")
            ),
        ),
        (ports.CreatePort, port_pb2.CreatePortRequest(port=port_pb2.Port(network_id=net_id))),
        (ports.ListPorts, port_pb2.ListPortsRequest()),
        (sgs.ListSecurityGroups, security_group_pb2.ListSecurityGroupsRequest()),
        (
            sgs.CreateSecurityGroup,
            security_group_pb2.CreateSecurityGroupRequest(
                security_group=security_group_pb2.SecurityGroup(name="x")
            ),
        ),
    ]


@pytest.mark.parametrize("metadata", BAD_METADATA)
async def test_unauthenticated(env: Env, metadata: tuple[tuple[str, str], ...]) -> None:
    net = await env.p1.network(name="n")
    async with unchanged(env):
        for method, request in _calls(env.channel, net.id):
            await expect_error(
                method(request, metadata=metadata, timeout=10),
                StatusCode.UNAUTHENTICATED,
                "NotAuthenticated",
                field=None,
            )
    assert [n.id for n in await env.admin.list_networks()] == [net.id]


async def test_bearer_scheme_is_case_insensitive(env: Env) -> None:
    nets = network_pb2_grpc.NetworkServiceStub(env.channel)
    resp = await nets.ListNetworks(
        network_pb2.ListNetworksRequest(), metadata=(("authorization", "bearer tok-p1"),)
    )
    assert list(resp.networks) == []


@pytest.mark.parametrize("kind", ["network", "subnet", "port", "security_group"])
async def test_member_cannot_create_for_another_project(env: Env, kind: str) -> None:
    net = await env.p1.network(name="n")
    creates = {
        "network": lambda: env.p1.network(project_id="p2"),
        "subnet": lambda: env.p1.subnet(net.id, "10.0.0.0/24", project_id="p2"),
        "port": lambda: env.p1.port(net.id, project_id="p2"),
        "security_group": lambda: env.p1.sg(name="x", project_id="p2"),
    }
    async with unchanged(env):
        await expect_error(
            creates[kind](), StatusCode.PERMISSION_DENIED, "PolicyNotAuthorized", field=None
        )
    # Naming one's own project is fine.
    own = await {
        "network": lambda: env.p1.network(project_id="p1"),
        "subnet": lambda: env.p1.subnet(net.id, "10.0.0.0/24", project_id="p1"),
        "port": lambda: env.p1.port(net.id, project_id="p1"),
        "security_group": lambda: env.p1.sg(name="x", project_id="p1"),
    }[kind]()
    assert own.project_id == "p1"


async def test_admin_creates_for_another_project(env: Env) -> None:
    net = await env.admin.network(name="for-p2", project_id="p2")
    assert net.project_id == "p2"
    subnet = await env.admin.subnet(net.id, "10.0.0.0/24", project_id="p2")
    port = await env.admin.port(net.id, project_id="p2")
    sg = await env.admin.sg(name="web", project_id="p2")
    assert (subnet.project_id, port.project_id, sg.project_id) == ("p2", "p2", "p2")
    # The port got p2's default group, made for p2.
    (default,) = await env.p2.list_sgs(name="default")
    assert list(port.security_groups.ids) == [default.id]
    assert [n.id for n in await env.p2.list_networks()] == [net.id]
    assert [p.id for p in await env.p2.list_ports()] == [port.id]
    await expect_error(env.p1.get_network(net.id), StatusCode.NOT_FOUND, "NetworkNotFound")
    # p2 owns it now: it may change and delete it.
    await env.p2.delete_port(port.id)
    await env.p2.delete_network(net.id)


async def test_health_needs_no_token(env: Env) -> None:
    stub = health_pb2_grpc.HealthStub(env.channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(env: Env) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(env.channel)

    async def ask(**fields: Any) -> reflection_pb2.ServerReflectionResponse:
        call = stub.ServerReflectionInfo(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(**fields))
        await call.done_writing()
        responses = [r async for r in call]
        assert len(responses) == 1
        return responses[0]

    resp = await ask(list_services="")
    names = {s.name for s in resp.list_services_response.service}
    assert {
        "baryon.v1.NetworkService",
        "baryon.v1.SubnetService",
        "baryon.v1.PortService",
        "baryon.v1.SecurityGroupService",
        "grpc.health.v1.Health",
    } <= names
    resp = await ask(file_containing_symbol="baryon.v1.PortService")
    assert resp.file_descriptor_response.file_descriptor_proto
