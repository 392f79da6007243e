"""AgentService without a dataplane: fake agents speak the Connect protocol to an
in-process controller on the session etcd (own key prefix per test)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from baryon.v1 import agent_pb2, agent_pb2_grpc, port_pb2
from controller.auth import Context, TokenTable
from controller.server import Controller
from tests.support.controller import (
    ADMIN_TOKEN,
    P1_TOKEN,
    TOKENS,
    Client,
    bearer,
    config,
)

pytestmark = pytest.mark.timeout(60)

AGENT_TOKEN = "tok-agent"


class FakeAgent:
    def __init__(self, channel: grpc.aio.Channel, host: str, tunnel_ip: str, token: str) -> None:
        self.host = host
        self.tunnel_ip = tunnel_ip
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.token = token
        self.call: Any = None
        self.inbox: asyncio.Queue[agent_pb2.ControllerMessage] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, last_revision: int = 0) -> None:
        self.call = self.stub.Connect(metadata=bearer(self.token))
        await self.call.write(
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    host=self.host,
                    mechanism="linuxbridge",
                    supported_network_types=["local", "vxlan"],
                    tunnel_ip=self.tunnel_ip,
                    last_revision=last_revision,
                )
            )
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.call.read()
            if msg is grpc.aio.EOF:
                return
            await self.inbox.put(msg)

    async def next(self, timeout: float = 5.0) -> agent_pb2.ControllerMessage:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def report(self, port_id: str, status: str, reason: str = "") -> None:
        await self.call.write(
            agent_pb2.AgentMessage(
                port_status=agent_pb2.PortStatusReport(
                    statuses=[agent_pb2.PortStatus(port_id=port_id, status=status, reason=reason)]
                )
            )
        )

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


@asynccontextmanager
async def controller(
    etcd_endpoint: str, key_prefix: bytes, **overrides: Any
) -> AsyncIterator[tuple[Controller, grpc.aio.Channel]]:
    tokens = dict(TOKENS)
    tokens[AGENT_TOKEN] = Context("service", frozenset({"agent"}))
    cfg = config(key_prefix.decode(), **overrides)
    ctl = Controller(cfg, TokenTable(tokens), [etcd_endpoint], "127.0.0.1:0")
    await ctl.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ctl.port}")
    try:
        yield ctl, channel
    finally:
        await channel.close()
        await ctl.stop()


async def wait_until(pred: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def test_member_cannot_connect(etcd_endpoint: str, key_prefix: bytes) -> None:
    async with controller(etcd_endpoint, key_prefix) as (_, channel):
        agent = FakeAgent(channel, "h1", "192.0.2.1", P1_TOKEN)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await agent.connect()
        assert await agent.call.code() == grpc.StatusCode.PERMISSION_DENIED
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListAgents(agent_pb2.ListAgentsRequest(), metadata=bearer(P1_TOKEN))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await agent.close()


async def test_binding_snapshot_delta_status_liveness(
    etcd_endpoint: str, key_prefix: bytes
) -> None:
    async with controller(etcd_endpoint, key_prefix, agent_lease_ttl=1) as (_, channel):
        admin = Client(channel, ADMIN_TOKEN)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        md = bearer(ADMIN_TOKEN)
        net = await admin.network(name="n")
        await admin.subnet(net.id, "10.9.0.0/24")
        # No agent on h1 yet: binding fails, with a reason.
        early = await admin.port(net.id, binding_host_id="h1")
        assert early.binding_vif_type == "binding_failed"
        assert "no live agent" in early.binding_vif_details["reason"]

        a1 = FakeAgent(channel, "h1", "192.0.2.1", AGENT_TOKEN)
        a2 = FakeAgent(channel, "h2", "192.0.2.2", AGENT_TOKEN)
        await a1.connect()
        first = await a1.next()
        assert first.WhichOneof("kind") == "snapshot"
        # The failed binding was retried when h1's agent registered.
        rebound = await admin.ports.GetPort(port_pb2.GetPortRequest(id=early.id))
        assert rebound.binding_vif_type == "bridge"
        if not first.snapshot.state.ports:
            first = await a1.next()
            assert [p.id for p in first.delta.upsert_ports] == [early.id]
        await a2.connect()
        assert (await a2.next()).WhichOneof("kind") == "snapshot"

        agents = (await stub.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md)).agents
        assert [(a.host, a.alive, a.mechanism) for a in agents] == [
            ("h1", True, "linuxbridge"),
            ("h2", True, "linuxbridge"),
        ]

        # A port bound to h2: h2 gets it, h1 learns h2's VTEP and the port's MAC.
        p2 = await admin.port(net.id, binding_host_id="h2")
        assert p2.binding_vif_type == "bridge"
        assert p2.binding_vif_details["bridge_name"] == "brq" + net.id[:11]
        assert p2.status == "DOWN"
        d2 = (await a2.next()).delta
        assert [p.id for p in d2.upsert_ports] == [p2.id]
        assert [n.id for n in d2.upsert_networks] == [net.id]
        d1 = (await a1.next()).delta
        assert [(v.tunnel_ip, list(v.mac_addresses)) for v in d1.upsert_remote_vteps] == [
            ("192.0.2.2", [p2.mac_address])
        ]
        # ... and in the same delta h2 learns h1's port behind h1's VTEP.
        assert [(v.tunnel_ip, list(v.mac_addresses)) for v in d2.upsert_remote_vteps] == [
            ("192.0.2.1", [early.mac_address])
        ]

        # Status reports: only through h2's agent; an ERROR keeps the agent's reason.
        await a2.report(p2.id, "ERROR", "physical network physnet9 is not mapped")

        async def error_with_reason() -> bool:
            got = await admin.ports.GetPort(port_pb2.GetPortRequest(id=p2.id))
            return (got.status, got.status_reason) == (
                "ERROR",
                "physical network physnet9 is not mapped",
            )

        await wait_until(error_with_reason)
        await a1.report(p2.id, "ACTIVE")  # not bound there: ignored
        await a2.report(p2.id, "ACTIVE")

        async def active() -> bool:
            got = await admin.ports.GetPort(port_pb2.GetPortRequest(id=p2.id))
            return bool(got.status == "ACTIVE" and not got.status_reason)

        await wait_until(active)

        # Re-binding to the same host resets the status to DOWN; the agent sees no change
        # and reports nothing new, so the controller restores what it last reported.
        again = await admin.ports.UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=p2.id, binding_host_id="h2"),
                update_mask=FieldMask(paths=["binding_host_id"]),
            )
        )
        assert again.binding_vif_type == "bridge" and again.status == "DOWN"
        await wait_until(active)

        # admin_state_up false reaches h2 as a port upsert.
        await admin.ports.UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=p2.id, admin_state_up=False),
                update_mask=FieldMask(paths=["admin_state_up"]),
            )
        )
        d = (await a2.next()).delta
        assert [(p.id, p.admin_state_up) for p in d.upsert_ports] == [(p2.id, False)]
        revision = d.revision

        # h2 goes away: dead within the TTL (1 s) + margin; h1 loses its VTEP.
        await a2.close()
        t0 = time.monotonic()

        async def h2_dead() -> bool:
            resp = await stub.ListAgents(
                agent_pb2.ListAgentsRequest(host="h2", alive=False), metadata=md
            )
            return len(resp.agents) == 1

        await wait_until(h2_dead, timeout=4.0)
        assert time.monotonic() - t0 < 3.0
        d1 = (await a1.next()).delta
        assert [k.tunnel_ip for k in d1.delete_remote_vteps] == ["192.0.2.2"]

        # While h2 is away its port is moved to h1; h2 comes back with its revision and
        # gets a catch-up delta that removes it.
        await admin.ports.UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=p2.id, binding_host_id="h1"),
                update_mask=FieldMask(paths=["binding_host_id"]),
            )
        )
        a2 = FakeAgent(channel, "h2", "192.0.2.2", AGENT_TOKEN)
        await a2.connect(last_revision=revision)
        back = await a2.next()
        assert back.WhichOneof("kind") == "delta", back
        assert list(back.delta.delete_ports) == [p2.id]
        assert list(back.delta.delete_networks) == [net.id]

        # Only dead agents can be deleted.
        h2 = (await stub.ListAgents(agent_pb2.ListAgentsRequest(host="h2"), metadata=md)).agents
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteAgent(agent_pb2.DeleteAgentRequest(id=h2[0].id), metadata=md)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await a2.close()
        await wait_until(h2_dead, timeout=4.0)
        await stub.DeleteAgent(agent_pb2.DeleteAgentRequest(id=h2[0].id), metadata=md)
        got = await stub.ListAgents(agent_pb2.ListAgentsRequest(), metadata=md)
        assert [a.host for a in got.agents] == ["h1"]
        await a1.close()


async def test_overflowed_stream_gets_resync_then_snapshot(
    etcd_endpoint: str, key_prefix: bytes
) -> None:
    async with controller(etcd_endpoint, key_prefix, agent_queue_size=4) as (ctl, channel):
        admin = Client(channel, ADMIN_TOKEN)
        agent = FakeAgent(channel, "h1", "192.0.2.1", AGENT_TOKEN)
        await agent.connect()
        assert (await agent.next()).WhichOneof("kind") == "snapshot"
        assert ctl.agents is not None
        (stream,) = ctl.agents.fanout.streams
        net = await admin.network(name="n")
        await admin.subnet(net.id, "10.9.0.0/24")
        port = await admin.port(net.id, binding_host_id="h1")
        assert [p.id for p in (await agent.next()).delta.upsert_ports] == [port.id]
        # Stall the writer the way a stuck HTTP/2 stream would: it waits on the old queue
        # while the fan-out fills a new one, which then overflows on the next change.
        stalled = stream.queue
        stream.queue = asyncio.Queue(4)
        for _ in range(4):
            stream.queue.put_nowait(agent_pb2.ControllerMessage(delta=agent_pb2.Delta()))
        await admin.ports.UpdatePort(
            port_pb2.UpdatePortRequest(
                port=port_pb2.Port(id=port.id, admin_state_up=False),
                update_mask=FieldMask(paths=["admin_state_up"]),
            )
        )
        assert stream.overflowed
        stalled.put_nowait(agent_pb2.ControllerMessage(delta=agent_pb2.Delta()))
        kinds = []
        while not kinds or kinds[-1] != "snapshot":
            kinds.append((msg := await agent.next()).WhichOneof("kind"))
        assert kinds[-2:] == ["resync", "snapshot"], kinds
        assert [p.id for p in msg.snapshot.state.ports] == [port.id]
        assert stream.resyncs == 1
        await agent.close()


def test_agent_keepalive_is_accepted_by_the_server() -> None:
    """The agent's ping interval must be allowed by the server, or it sends GOAWAY
    "too_many_pings" and every idle agent stream is cut after ~20 s."""
    from agent.main import CHANNEL_OPTIONS
    from controller.server import SERVER_OPTIONS

    server, client = dict(SERVER_OPTIONS), dict(CHANNEL_OPTIONS)
    allowed = server["grpc.http2.min_ping_interval_without_data_ms"]
    assert allowed < client["grpc.keepalive_time_ms"]
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0
    # A dead controller is noticed within keepalive time + ping timeout.
    assert client["grpc.keepalive_time_ms"] + client["grpc.http2.ping_timeout_ms"] <= 15_000


async def test_bad_hello_is_rejected(etcd_endpoint: str, key_prefix: bytes) -> None:
    async with controller(etcd_endpoint, key_prefix) as (_, channel):
        for host, ip in (("", "192.0.2.1"), ("h1", "not-an-ip")):
            agent = FakeAgent(channel, host, ip, AGENT_TOKEN)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await agent.connect()
                await agent.call.read()
            assert await agent.call.code() == grpc.StatusCode.INVALID_ARGUMENT
            await agent.close()


async def test_list_agents_pages(etcd_endpoint: str, key_prefix: bytes) -> None:
    async with controller(etcd_endpoint, key_prefix) as (_, channel):
        agents = [FakeAgent(channel, f"h{i}", f"192.0.2.{i}", AGENT_TOKEN) for i in (3, 1, 2)]
        for a in agents:
            await a.connect()
            await a.next()
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        md = bearer(ADMIN_TOKEN)
        first = await stub.ListAgents(agent_pb2.ListAgentsRequest(page_size=2), metadata=md)
        assert [a.host for a in first.agents] == ["h1", "h2"] and first.next_page_token
        rest = await stub.ListAgents(
            agent_pb2.ListAgentsRequest(page_size=2, page_token=first.next_page_token),
            metadata=md,
        )
        assert [a.host for a in rest.agents] == ["h3"] and not rest.next_page_token
        one = await stub.GetAgent(agent_pb2.GetAgentRequest(id=rest.agents[0].id), metadata=md)
        assert one.host == "h3" and one.alive and one.tunnel_ip == "192.0.2.3"
        for a in agents:
            await a.close()
