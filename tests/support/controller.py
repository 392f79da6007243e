"""An in-process controller for API tests, with clients for three callers.

Every test gets its own etcd key prefix (``key_prefix``), so controllers of
different tests never see each other's resources even though they share the
session etcd. Starting a controller takes a few milliseconds.

Callers (see ``TOKENS``): ``admin`` (project "admin", role admin), ``p1`` and
``p2`` (role member of projects "p1" and "p2").
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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
from controller.auth import Context, TokenTable
from controller.config import Config
from controller.etcd import EtcdClient
from controller.server import Controller

ADMIN_TOKEN = "tok-admin"
P1_TOKEN = "tok-p1"
P2_TOKEN = "tok-p2"
TOKENS: dict[str, Context] = {
    ADMIN_TOKEN: Context.admin(),
    P1_TOKEN: Context("p1", frozenset({"member"})),
    P2_TOKEN: Context("p2", frozenset({"member"})),
}

StatusCode = grpc.StatusCode


def token_table() -> TokenTable:
    return TokenTable(dict(TOKENS))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class _Authed:
    """A stub whose every call carries one caller's token (unless metadata is given)."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._stub, name)

        async def call(request: Message, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            kwargs.setdefault("timeout", 15.0)
            return await method(request, **kwargs)

        return call


class Client:
    """Stubs of the four services for one caller, plus create/list shorthands."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        md = bearer(token)
        self.token = token
        self.project_id = TOKENS[token].project_id
        self.nets = _Authed(network_pb2_grpc.NetworkServiceStub(channel), md)
        self.subnets = _Authed(subnet_pb2_grpc.SubnetServiceStub(channel), md)
        self.ports = _Authed(port_pb2_grpc.PortServiceStub(channel), md)
        self.sgs = _Authed(security_group_pb2_grpc.SecurityGroupServiceStub(channel), md)

    # -- create
    async def network(self, **fields: Any) -> network_pb2.Network:
        return await self.nets.CreateNetwork(
            network_pb2.CreateNetworkRequest(network=network_pb2.Network(**fields))
        )

    async def subnet(self, network_id: str, cidr: str, **fields: Any) -> subnet_pb2.Subnet:
        return await self.subnets.CreateSubnet(
            subnet_pb2.CreateSubnetRequest(
                subnet=subnet_pb2.Subnet(network_id=network_id, cidr=cidr, **fields)
            )
        )

    async def port(self, network_id: str, **fields: Any) -> port_pb2.Port:
        return await self.ports.CreatePort(
            port_pb2.CreatePortRequest(port=port_pb2.Port(network_id=network_id, **fields))
        )

    async def sg(self, **fields: Any) -> security_group_pb2.SecurityGroup:
        return await self.sgs.CreateSecurityGroup(
            security_group_pb2.CreateSecurityGroupRequest(
                security_group=security_group_pb2.SecurityGroup(**fields)
            )
        )

    async def rule(self, **fields: Any) -> security_group_pb2.SecurityGroupRule:
        return await self.sgs.CreateSecurityGroupRule(
            security_group_pb2.CreateSecurityGroupRuleRequest(
                security_group_rule=security_group_pb2.SecurityGroupRule(**fields)
            )
        )

    # -- read (every page)
    async def list_networks(self, **filters: Any) -> list[network_pb2.Network]:
        return await _all_pages(
            self.nets.ListNetworks, network_pb2.ListNetworksRequest, "networks", filters
        )

    async def list_subnets(self, **filters: Any) -> list[subnet_pb2.Subnet]:
        return await _all_pages(
            self.subnets.ListSubnets, subnet_pb2.ListSubnetsRequest, "subnets", filters
        )

    async def list_ports(self, **filters: Any) -> list[port_pb2.Port]:
        return await _all_pages(self.ports.ListPorts, port_pb2.ListPortsRequest, "ports", filters)

    async def list_sgs(self, **filters: Any) -> list[security_group_pb2.SecurityGroup]:
        return await _all_pages(
            self.sgs.ListSecurityGroups,
            security_group_pb2.ListSecurityGroupsRequest,
            "security_groups",
            filters,
        )

    async def list_rules(self, **filters: Any) -> list[security_group_pb2.SecurityGroupRule]:
        return await _all_pages(
            self.sgs.ListSecurityGroupRules,
            security_group_pb2.ListSecurityGroupRulesRequest,
            "security_group_rules",
            filters,
        )

    async def get_network(self, id_: str) -> network_pb2.Network:
        return await self.nets.GetNetwork(network_pb2.GetNetworkRequest(id=id_))

    async def get_subnet(self, id_: str) -> subnet_pb2.Subnet:
        return await self.subnets.GetSubnet(subnet_pb2.GetSubnetRequest(id=id_))

    async def get_port(self, id_: str) -> port_pb2.Port:
        return await self.ports.GetPort(port_pb2.GetPortRequest(id=id_))

    async def get_sg(self, id_: str) -> security_group_pb2.SecurityGroup:
        return await self.sgs.GetSecurityGroup(security_group_pb2.GetSecurityGroupRequest(id=id_))

    # -- update (mask = the given field names) / delete
    async def update_network(
        self, id_: str, if_revision: int = 0, **fields: Any
    ) -> network_pb2.Network:
        return await self.nets.UpdateNetwork(
            network_pb2.UpdateNetworkRequest(
                network=network_pb2.Network(id=id_, **fields),
                update_mask=FieldMask(paths=list(fields)),
                if_revision=if_revision,
            )
        )

    async def update_subnet(self, id_: str, if_revision: int = 0, **fields: Any) -> Any:
        return await self.subnets.UpdateSubnet(
            subnet_pb2.UpdateSubnetRequest(
                subnet=subnet_pb2.Subnet(id=id_, **fields),
                update_mask=FieldMask(paths=list(fields)),
                if_revision=if_revision,
            )
        )

    async def update_port(self, id_: str, if_revision: int = 0, **fields: Any) -> port_pb2.Port:
        return await self.ports.UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=id_, **fields),
                update_mask=FieldMask(paths=list(fields)),
                if_revision=if_revision,
            )
        )

    async def update_sg(self, id_: str, if_revision: int = 0, **fields: Any) -> Any:
        return await self.sgs.UpdateSecurityGroup(
            security_group_pb2.UpdateSecurityGroupRequest(
                security_group=security_group_pb2.SecurityGroup(id=id_, **fields),
                update_mask=FieldMask(paths=list(fields)),
                if_revision=if_revision,
            )
        )

    async def delete_network(self, id_: str, if_revision: int = 0) -> None:
        await self.nets.DeleteNetwork(
            network_pb2.DeleteNetworkRequest(id=id_, if_revision=if_revision)
        )

    async def delete_subnet(self, id_: str, if_revision: int = 0) -> None:
        await self.subnets.DeleteSubnet(
            subnet_pb2.DeleteSubnetRequest(id=id_, if_revision=if_revision)
        )

    async def delete_port(self, id_: str, if_revision: int = 0) -> None:
        await self.ports.DeletePort(port_pb2.DeletePortRequest(id=id_, if_revision=if_revision))

    async def delete_sg(self, id_: str, if_revision: int = 0) -> None:
        await self.sgs.DeleteSecurityGroup(
            security_group_pb2.DeleteSecurityGroupRequest(id=id_, if_revision=if_revision)
        )

    async def delete_rule(self, id_: str) -> None:
        await self.sgs.DeleteSecurityGroupRule(
            security_group_pb2.DeleteSecurityGroupRuleRequest(id=id_)
        )


async def _all_pages(
    method: Callable[..., Awaitable[Any]],
    request_cls: type[Message],
    field_name: str,
    filters: dict[str, Any],
) -> list[Any]:
    out: list[Any] = []
    token = ""
    for _ in range(1000):
        resp = await method(request_cls(page_token=token, **filters))
        out.extend(getattr(resp, field_name))
        token = resp.next_page_token
        if not token:
            return out
    raise AssertionError("pagination never ended")


@dataclass
class Env:
    """One running controller and a channel to it."""

    controller: Controller
    channel: grpc.aio.Channel
    prefix: str
    endpoint: str
    admin: Client = field(init=False)
    p1: Client = field(init=False)
    p2: Client = field(init=False)

    def __post_init__(self) -> None:
        self.admin = Client(self.channel, ADMIN_TOKEN)
        self.p1 = Client(self.channel, P1_TOKEN)
        self.p2 = Client(self.channel, P2_TOKEN)

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.controller.port}"


def config(prefix: str, **overrides: Any) -> Config:
    """A default Config on `prefix`; ``ml2=`` takes a dict of Ml2Config overrides."""
    ml2 = overrides.pop("ml2", {})
    cfg = Config(**overrides)
    cfg.etcd_prefix = prefix
    cfg.ml2 = dataclasses.replace(cfg.ml2, **ml2)
    return cfg


@asynccontextmanager
async def running_controller(endpoint: str, cfg: Config) -> AsyncIterator[Env]:
    """A started controller on `cfg.etcd_prefix` and an open channel to it; stops both."""
    controller = Controller(cfg, token_table(), [endpoint], "127.0.0.1:0")
    try:
        await controller.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}")
        try:
            yield Env(controller, channel, cfg.etcd_prefix, endpoint)
        finally:
            await channel.close()
    finally:
        await controller.stop()


StartEnv = Callable[..., Awaitable[Env]]


@asynccontextmanager
async def env_factory(endpoint: str, prefix: str) -> AsyncIterator[StartEnv]:
    """``await start(**config_overrides)``: more controllers on the same prefix."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Env:
            return await stack.enter_async_context(
                running_controller(endpoint, config(prefix, **overrides))
            )

        yield start


# --------------------------------------------------------------------------- fixtures
# (imported by tests/conftest.py; etcd_endpoint and key_prefix are defined there)


@pytest.fixture
async def start_env(etcd_endpoint: str, key_prefix: bytes) -> AsyncIterator[StartEnv]:
    """``await start_env(**config_overrides)``: a started controller on this test's
    prefix; call it again for another controller on the same prefix. All are stopped
    (and their channels closed) when the test ends."""
    async with env_factory(etcd_endpoint, key_prefix.decode()) as start:
        yield start


@pytest.fixture
async def env(start_env: StartEnv) -> Env:
    """A started controller with the default config, and admin / p1 / p2 clients."""
    return await start_env()


# --------------------------------------------------------------------------- errors


@dataclass
class ApiFailure:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    fields: list[str]


def failure_of(err: grpc.aio.AioRpcError) -> ApiFailure:
    status = rpc_status.from_call(err)
    reason, domain, metadata, fields = "", "", {}, []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
    return ApiFailure(err.code(), err.details() or "", reason, domain, metadata, fields)


_UNSET: Any = object()


async def expect_error(
    call: Awaitable[Any],
    code: grpc.StatusCode,
    reason: str | None = None,
    field: str | None = _UNSET,
) -> ApiFailure:
    """Await `call`, which must fail with `code`; check ErrorInfo.reason and, for
    INVALID_ARGUMENT (where it is mandatory), the BadRequest field violation."""
    try:
        result = await call
    except grpc.aio.AioRpcError as err:
        failure = failure_of(err)
    else:
        pytest.fail(f"expected {code.name}, got a response: {result}")
    assert failure.code == code, f"expected {code.name}, got {failure}"
    if code != StatusCode.INTERNAL:
        assert failure.domain == "baryon", failure
    if reason is not None:
        assert failure.reason == reason, failure
    if field is _UNSET:
        if code == StatusCode.INVALID_ARGUMENT:
            pytest.fail("give the expected field for INVALID_ARGUMENT")
    elif field is None:
        assert not failure.fields, failure
    else:
        assert field in failure.fields, failure
    return failure


# --------------------------------------------------------------------------- etcd view


async def index_keys(env: Env, index: str) -> dict[str, str]:
    """The index keys below ``<prefix>i/<index>`` (key suffix -> value)."""
    base = f"{env.prefix}i/{index}".encode()
    async with EtcdClient([env.endpoint], timeout=5.0) as client:
        res = await client.get_prefix(base)
    return {kv.key[len(base) :].decode(): kv.value.decode() for kv in res.kvs}


async def etcd_state(env: Env) -> dict[bytes, tuple[bytes, int]]:
    """Every key under the controller's prefix (but the _rev marker) with value and
    mod_revision: resources and index keys, as etcd holds them."""
    base = env.prefix.encode()
    async with EtcdClient([env.endpoint], timeout=5.0) as client:
        res = await client.get_prefix(base)
    return {kv.key: (kv.value, kv.mod_revision) for kv in res.kvs if kv.key != base + b"r/_rev"}


@asynccontextmanager
async def unchanged(env: Env) -> AsyncIterator[None]:
    """Asserts that what runs inside wrote nothing to etcd (no resource, no index key)."""
    before = await etcd_state(env)
    yield
    after = await etcd_state(env)
    added = sorted(k.decode() for k in after.keys() - before.keys())
    removed = sorted(k.decode() for k in before.keys() - after.keys())
    changed = sorted(k.decode() for k in before.keys() & after.keys() if before[k] != after[k])
    assert not (added or removed or changed), f"added {added} removed {removed} changed {changed}"


def ips_of(port: port_pb2.Port) -> list[str]:
    return [ip.ip_address for ip in port.fixed_ips.ips]
