"""``baryon.v1.AgentService``: the agents' Connect stream and agent administration.

Registry layout (store kinds, see controller.model): ``agent/<id>`` holds what the
agent said in its Hello plus bookkeeping (session, applied revision, last seen);
``agent_alive/<id>`` is attached to the liveness lease of the controller serving the
agent's stream (controller.agents.liveness: one lease per controller). When the stream
ends the key is deleted one TTL later unless a newer session wrote it (an agent
restarting or moving to another controller within the TTL stays alive), so an agent
that disappears is marked dead within ``agent_lease_ttl``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2

from baryon.v1 import agent_pb2, agent_pb2_grpc
from controller.agents import hoststate
from controller.agents.fanout import RESYNC, Fanout, Stream
from controller.agents.liveness import LivenessLease
from controller.api.servicers import guarded
from controller.api.status import abort
from controller.auth import Context, TokenTable
from controller.config import Config
from controller.errors import (
    BaryonError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from controller.etcd.client import EtcdError, op_put
from controller.model import (
    Agent,
    AgentLiveness,
    FloatingIP,
    Network,
    Port,
    Resource,
    Router,
    RouterBinding,
    encode,
)
from controller.services.base import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, bump
from controller.services.binding import BINDING_FAILED, MECHANISMS, bind, is_alive
from controller.store import Store, Txn, chunked

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0
PORT_STATUSES = frozenset({"ACTIVE", "DOWN", "ERROR"})
RETRY_INTERVAL = 1.0
# The agent record (applied revision, last seen) is written at most this often per
# session, and when the session ends: every record write is a watch event for every
# controller, and every agent acks every delta. The serving controller reports the
# live value from memory.
RECORD_INTERVAL = 30.0
TXN_CHUNK = 40


def _serialize(msg: agent_pb2.ControllerMessage | bytes) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


class _HandlerCapture:
    """Stands in for the server to collect the generated method handlers."""

    handlers: dict[str, Any]

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, _name: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


@dataclass(eq=False)
class Session:
    id: str
    agent_id: str
    host: str
    applied: int = 0
    stream: Stream | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # The agent's latest report per port, and the ports whose stored status must be
    # brought in line with it.
    # port id -> (status, reason) as the agent last reported them
    statuses: dict[str, tuple[str, str]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class AgentService:
    def __init__(self, store: Store, cfg: Config, tokens: TokenTable) -> None:
        self.store = store
        self.cfg = cfg
        self.tokens = tokens
        self.fanout = Fanout(store, queue_size=cfg.agent_queue_size, ring_size=cfg.agent_ring_size)
        self.liveness = LivenessLease(store.etcd, int(cfg.agent_lease_ttl))
        self.sessions: dict[str, Session] = {}  # agent id -> session served here
        self._host_sessions: dict[str, Session] = {}
        self._reported_host: dict[str, str] = {}  # port id -> host whose agent reported it
        self._handlers: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = asyncio.Event()

    # -- lifecycle
    def start(self) -> None:
        self.fanout.start()
        self.store.listeners.append(self._on_change)

    def _on_change(self, revision: int, changes: list[tuple[str, str, Resource | None]]) -> None:
        """Keep stored port statuses equal to what the hosts' agents last reported (a
        port re-bound to the same host, say, is reset to DOWN by the API although its
        agent, seeing no change, reports nothing new)."""
        for kind, id_, obj in changes:
            if kind != "port":
                continue
            port = obj if isinstance(obj, Port) else None
            host = self._reported_host.get(id_)
            if host is not None and (port is None or not hoststate.is_bound_to(port, host)):
                del self._reported_host[id_]
                old = self._host_sessions.get(host)
                if old is not None:
                    old.statuses.pop(id_, None)
            if port is None:
                continue
            session = self._host_sessions.get(port.binding_host_id)
            if session is None or not hoststate.is_bound_to(port, session.host):
                continue
            reported = session.statuses.get(id_)
            if reported is not None and reported != (port.status, port.status_reason):
                session.pending.add(id_)
                session.wake.set()

    async def close(self) -> None:
        """End every agent stream (agents move to another controller) and stop."""
        self._closing = True
        self._closed.set()
        self.fanout.stop()
        if self._on_change in self.store.listeners:
            self.store.listeners.remove(self._on_change)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        await self.liveness.close()

    def register(self, server: grpc.aio.Server) -> list[str]:
        service = self

        async def connect(
            _self: Any,
            request_iterator: AsyncIterator[agent_pb2.AgentMessage],
            context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        ) -> None:
            await service.connect(context)

        methods: dict[str, Any] = {"Connect": connect}
        for name, handler in (
            ("ListAgents", self.list_agents),
            ("GetAgent", self.get_agent),
            ("DeleteAgent", self.delete_agent),
        ):
            methods[name] = guarded(self.tokens, handler)
        base = agent_pb2_grpc.AgentServiceServicer
        impl = type("AgentServiceImpl", (base,), methods)()
        # The generated handlers, except that Connect also writes messages the fan-out
        # serialized once for many streams (bytes pass through).
        capture = _HandlerCapture()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(impl, capture)  # type: ignore[arg-type]
        handlers = dict(capture.handlers)
        handlers["Connect"] = handlers["Connect"]._replace(response_serializer=_serialize)
        name = "baryon.v1.AgentService"
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
        return [agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name]

    # -- admin RPCs
    def to_pb(self, agent: Agent) -> agent_pb2.Agent:
        alive = is_alive(self.store.cache, agent)
        session = self.sessions.get(agent.id)
        applied = agent.applied_revision
        if session is not None and session.id == agent.session:
            applied = max(applied, session.applied)
        msg = agent_pb2.Agent(
            id=agent.id,
            host=agent.host,
            agent_type=agent.agent_type,
            mechanism=agent.mechanism,
            alive=alive,
            applied_revision=applied,
            version=agent.version,
            supported_network_types=agent.supported_network_types,
            physical_network_mappings=agent.physical_network_mappings,
            tunnel_ip=agent.tunnel_ip,
            services=agent.services,
        )
        msg.last_seen.FromNanoseconds(int((time.time() if alive else agent.last_seen) * 1e9))
        msg.started_at.FromNanoseconds(int(agent.started_at * 1e9))
        return msg

    async def list_agents(
        self, ctx: Context, req: agent_pb2.ListAgentsRequest
    ) -> agent_pb2.ListAgentsResponse:
        ctx.require_admin("listing agents")
        if req.page_size < 0 or req.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 0..{MAX_PAGE_SIZE}", field="page_size")
        size = req.page_size or DEFAULT_PAGE_SIZE
        after: tuple[str, str, str] | None = None
        if req.page_token:
            try:
                host, agent_type, id_ = json.loads(base64.urlsafe_b64decode(req.page_token))
                after = (str(host), str(agent_type), str(id_))
            except (ValueError, TypeError):
                raise InvalidArgument("invalid page_token", field="page_token") from None
        await self.store.sync()
        out: list[agent_pb2.Agent] = []
        last: tuple[str, str, str] | None = None
        agents = sorted(self.store.cache.all(Agent), key=lambda a: (a.host, a.agent_type, a.id))
        for agent in agents:
            key = (agent.host, agent.agent_type, agent.id)
            if after is not None and key <= after:
                continue
            if req.host and agent.host != req.host:
                continue
            if req.agent_type and agent.agent_type != req.agent_type:
                continue
            pb = self.to_pb(agent)
            if req.HasField("alive") and pb.alive != req.alive:
                continue
            if len(out) == size:
                assert last is not None
                token = base64.urlsafe_b64encode(json.dumps(last).encode()).decode()
                return agent_pb2.ListAgentsResponse(agents=out, next_page_token=token)
            out.append(pb)
            last = key
        return agent_pb2.ListAgentsResponse(agents=out)

    def _find(self, id_: str) -> Agent:
        if not id_:
            raise InvalidArgument("id is required", field="id")
        agent = self.store.cache.get(Agent, id_)
        if agent is None:
            raise NotFound(f"Agent {id_} could not be found", reason="AgentNotFound")
        return agent

    async def get_agent(self, ctx: Context, req: agent_pb2.GetAgentRequest) -> agent_pb2.Agent:
        ctx.require_admin("showing agents")
        await self.store.sync()
        return self.to_pb(self._find(req.id))

    async def delete_agent(
        self, ctx: Context, req: agent_pb2.DeleteAgentRequest
    ) -> empty_pb2.Empty:
        ctx.require_admin("deleting agents")
        await self.store.sync()

        def build(txn: Txn) -> None:
            agent = self._find(req.id)
            if is_alive(self.store.cache, agent):
                raise FailedPrecondition(
                    f"agent {agent.id} on {agent.host} is alive; stop it first",
                    reason="AgentInUse",
                )
            txn.delete(agent)

        await self.store.commit(build)
        return empty_pb2.Empty()

    # -- the Connect stream
    async def connect(self, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            ctx = self.tokens.authenticate(context.invocation_metadata())  # type: ignore[arg-type]
            if not ctx.is_agent:
                raise PermissionDenied(
                    "Connect needs a token with the agent or admin role",
                    reason="PolicyNotAuthorized",
                )
            if self._closing:
                raise Unavailable("the controller is shutting down", reason="ShuttingDown")
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
            if not isinstance(first, agent_pb2.AgentMessage) or first.WhichOneof("kind") != "hello":
                raise InvalidArgument("the first message must be a Hello", field="hello")
            await self._session(context, first.hello)
        except BaryonError as err:
            await abort(context, err)
        except (asyncio.CancelledError, TimeoutError):
            raise
        except grpc.aio.AbortError:
            raise
        except EtcdError as err:
            log.warning("agent stream: etcd: %s", err)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"datastore unavailable: {err}")
        except Exception:
            log.exception("agent stream failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see controller log")
        finally:
            self._handlers.discard(task)

    @staticmethod
    def _check_hello(hello: agent_pb2.Hello) -> None:
        if not hello.host:
            raise InvalidArgument("hello.host is required", field="hello.host")
        if hello.tunnel_ip:
            try:
                ipaddress.ip_address(hello.tunnel_ip)
            except ValueError:
                raise InvalidArgument(
                    f"{hello.tunnel_ip!r} is not an IP address", field="hello.tunnel_ip"
                ) from None
        if hello.mechanism not in MECHANISMS:
            raise InvalidArgument(
                f"unknown mechanism {hello.mechanism!r} ({', '.join(sorted(MECHANISMS))})",
                field="hello.mechanism",
            )

    async def _session(
        self,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        hello: agent_pb2.Hello,
    ) -> None:
        self._check_hello(hello)
        agent_type = hello.agent_type or MECHANISMS[hello.mechanism][1]
        session = Session(uuid.uuid4().hex, hoststate.agent_id(agent_type, hello.host), hello.host)
        session.applied = hello.last_revision
        lease_id, lost = await self.liveness.acquire()
        try:
            revision = await self._register(session, hello, agent_type, lease_id)
            self.sessions[session.agent_id] = session
            self._host_sessions[session.host] = session
            await self.store.wait_for(revision)
            await self._rebind_failed(session.host)
            if hello.last_revision > self.store.cache.revision:
                with contextlib.suppress(Unavailable):
                    await self.store.wait_for(hello.last_revision, timeout=2.0)
            services = bool({"l3", "dhcp"} & set(hello.services))
            stream, kind = self.fanout.attach(session.host, hello.last_revision, services)
            session.stream = stream
            log.info(
                "agent %s (%s) connected: %s at revision %d (it had %d)",
                hello.host,
                hello.mechanism,
                kind,
                self.store.cache.revision,
                hello.last_revision,
            )
            reader = asyncio.create_task(self._reader(context, session))
            writer = asyncio.create_task(self._writer(context, stream))
            recorder = asyncio.create_task(self._recorder(session))
            reporter = asyncio.create_task(self._status_writer(session))
            watcher = asyncio.create_task(lost.wait())
            session.tasks = [reader, writer, recorder, reporter, watcher]
            done, _ = await asyncio.wait(session.tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is watcher:
                    log.warning("agent %s: liveness lease lost; closing its stream", session.host)
                elif not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    if isinstance(exc, BaryonError):
                        raise exc
                    log.warning("agent %s stream ended: %r", session.host, exc)
        finally:
            for t in session.tasks:
                t.cancel()
            if session.stream is not None:
                self.fanout.detach(session.stream)
            if self.sessions.get(session.agent_id) is session:
                del self.sessions[session.agent_id]
            if self._host_sessions.get(session.host) is session:
                del self._host_sessions[session.host]
                for port_id in session.statuses:
                    if self._reported_host.get(port_id) == session.host:
                        del self._reported_host[port_id]
            bg = asyncio.create_task(self._end_session(session))
            self._background.add(bg)
            bg.add_done_callback(self._background.discard)

    async def _end_session(self, session: Session) -> None:
        try:
            await asyncio.wait_for(self._write_record(session), 5.0)
        except Exception as exc:
            log.warning("agent %s: final record update failed: %r", session.host, exc)
        log.info("agent %s disconnected", session.host)
        # The agent stays alive for one TTL: it may be restarting or moving. If this
        # controller stops meanwhile, the key expires with its lease.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), self.liveness.ttl)
            return

        def build(txn: Txn) -> None:
            alive = self.store.cache.get(AgentLiveness, session.agent_id)
            if alive is not None and alive.session == session.id:
                txn.delete(alive)

        try:
            await self.store.commit(build)
        except BaryonError as err:
            # The key stays attached to this controller's lease; it goes with it.
            log.warning("agent %s: liveness key not removed: %s", session.host, err)

    async def _register(
        self, session: Session, hello: agent_pb2.Hello, agent_type: str, lease_id: int
    ) -> int:
        now = time.time()

        def build(txn: Txn) -> None:
            old = self.store.cache.get(Agent, session.agent_id)
            record = Agent(
                id=session.agent_id,
                project_id="",
                host=hello.host,
                agent_type=agent_type,
                mechanism=hello.mechanism,
                supported_network_types=sorted(set(hello.supported_network_types)),
                physical_network_mappings=dict(hello.physical_network_mappings),
                tunnel_ip=hello.tunnel_ip,
                version=hello.version,
                services=list(hello.services),
                started_at=now,
                last_seen=now,
                applied_revision=hello.last_revision,
                session=session.id,
                revision_number=(old.revision_number + 1) if old else 1,
                created_at=old.created_at if old else now,
                updated_at=now,
            )
            if old is None:
                txn.create(record)
            else:
                txn.update(old, record)
            alive = AgentLiveness(id=session.agent_id, project_id="", session=session.id)
            key = self.store.rkey(AgentLiveness.KIND, session.agent_id)
            txn.ops.append(op_put(key, encode(alive), lease=lease_id))

        _, revision = await self.store.commit(build)
        return revision

    async def _rebind_failed(self, host: str) -> None:
        """Ports that failed to bind to `host` (no live agent then) are bound now."""
        cache = self.store.cache
        while True:

            def build(txn: Txn) -> int:
                n = 0
                for port in cache.related(Port, "host_ports", host):
                    if port.binding_vif_type != BINDING_FAILED:
                        continue
                    net = cache.get(Network, port.network_id)
                    if net is None:
                        continue
                    result = bind(cache, net, host)
                    if not result.bound:
                        continue
                    changes = {
                        "binding_vif_type": result.vif_type,
                        "binding_vif_details": dict(result.vif_details),
                        "status": "DOWN",
                        "status_reason": "",
                    }
                    txn.update(port, bump(port, changes))
                    n += 1
                    if n >= TXN_CHUNK:
                        break
                return n

            n, revision = await self.store.commit(build)
            if n < TXN_CHUNK:
                return
            await self.store.wait_for(revision)

    async def _reader(self, context: grpc.aio.ServicerContext, session: Session) -> None:  # type: ignore[type-arg]
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            assert isinstance(msg, agent_pb2.AgentMessage)
            kind = msg.WhichOneof("kind")
            if kind == "ack":
                session.applied = max(session.applied, msg.ack.revision)
            elif kind == "port_status":
                for st in msg.port_status.statuses:
                    if st.status in PORT_STATUSES:
                        if st.status == "ERROR":
                            log.warning(
                                "agent %s: port %s ERROR: %s", session.host, st.port_id, st.reason
                            )
                        reason = "" if st.status == "ACTIVE" else st.reason
                        session.statuses[st.port_id] = (st.status, reason)
                        self._reported_host[st.port_id] = session.host
                        session.pending.add(st.port_id)
                session.wake.set()
            elif kind == "service_status":
                try:
                    await self._write_service_status(session.host, msg.service_status)
                except BaryonError as err:
                    log.warning("agent %s: router status update failed: %s", session.host, err)
            elif kind == "hello":
                raise InvalidArgument("Hello is only valid as the first message", field="hello")

    async def _writer(self, context: grpc.aio.ServicerContext, stream: Stream) -> None:  # type: ignore[type-arg]
        while True:
            item = await stream.queue.get()
            if item is RESYNC:
                for msg in self.fanout.resync(stream):
                    await context.write(msg)
            else:
                await context.write(item)

    async def _recorder(self, session: Session) -> None:
        while True:
            await asyncio.sleep(RECORD_INTERVAL)
            try:
                await self._write_record(session)
            except BaryonError as err:
                log.warning("agent %s: record update failed: %s", session.host, err)

    async def _write_record(self, session: Session) -> None:
        applied = session.applied

        def build(txn: Txn) -> None:
            old = self.store.cache.get(Agent, session.agent_id)
            if old is None or old.session != session.id:
                return  # deleted, or a newer session owns the record
            changes = {"last_seen": time.time(), "applied_revision": applied}
            txn.update(old, bump(old, changes))

        await self.store.commit(build)

    async def _write_service_status(self, host: str, report: agent_pb2.ServiceStatusReport) -> None:
        """Floating IPs of the routers scheduled to `host` are ACTIVE when its agent has
        applied them, DOWN otherwise; routers take the status the agent reports."""
        active = set(report.active_floating_ips)
        routers = {r.router_id: r.status for r in report.routers if r.status in PORT_STATUSES}
        cache = self.store.cache

        def build(txn: Txn) -> None:
            for rb in cache.related(RouterBinding, "host_routers", host):
                router = cache.get(Router, rb.router_id)
                if router is None:
                    continue
                txn.depends_on(rb)
                want = routers.get(router.id)
                if want is not None and router.status != want:
                    txn.update(router, bump(router, {"status": want}))
                for fip in cache.related(FloatingIP, "fip_router", router.id):
                    status = "ACTIVE" if fip.id in active else "DOWN"
                    if fip.status != status:
                        txn.update(fip, bump(fip, {"status": status}))

        await self.store.commit(build)

    async def _status_writer(self, session: Session) -> None:
        while True:
            await session.wake.wait()
            session.wake.clear()
            ids, session.pending = session.pending, set()
            wanted = {i: session.statuses[i] for i in ids if i in session.statuses}
            try:
                await self._write_statuses(session.host, wanted)
            except BaryonError as err:
                log.warning("agent %s: port status update failed: %s", session.host, err)
                session.pending |= ids
                await asyncio.sleep(RETRY_INTERVAL)
                session.wake.set()

    async def _write_statuses(self, host: str, wanted: dict[str, tuple[str, str]]) -> None:
        """Store the statuses the agent of `host` reported (ports bound elsewhere are
        ignored)."""
        for ids in chunked(sorted(wanted), TXN_CHUNK):

            def build(txn: Txn, ids: list[str] = ids) -> None:
                for port_id in ids:
                    port = self.store.cache.get(Port, port_id)
                    if port is None or not hoststate.is_bound_to(port, host):
                        continue
                    status, reason = wanted[port_id]
                    if (port.status, port.status_reason) != (status, reason):
                        changes = {"status": status, "status_reason": reason}
                        txn.update(port, bump(port, changes))

            await self.store.commit(build)
