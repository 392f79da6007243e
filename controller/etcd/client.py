"""A thin asyncio client for etcd's v3 gRPC API.

Why our own: the published Python clients either do not import with protobuf 7,
lose events when a watch resumes, or are single-endpoint (docs: platform notes).
This one does only what Baryon needs, over ``grpc.aio``:

* Every call carries "hasleader" metadata: a member without a leader fails fast
  (UNAVAILABLE) rather than holding requests, and a watch on it is closed.
* Multi-endpoint. A call is only sent on a connected channel: while the current
  member is down or restarting, the call waits and tries the other endpoints, up
  to its deadline. That is safe for writes too, since nothing has been sent.
  Once sent, a read (Range) that fails with UNAVAILABLE is retried on the next
  endpoint until the deadline. A write (Put, DeleteRange, Txn) is never retried:
  one in flight when a member dies may still be applied, so the caller gets
  ``EtcdUnavailable``/``EtcdTimeout`` and must re-read (and use compare-and-swap)
  before trying again.
* Watches resume on another endpoint from the last delivered revision + 1, so a
  consumer sees every event exactly once, or ``EtcdCompacted`` if history is gone.
* Leases can be kept alive in the background; losing one is reported, never silent.

Channels are created lazily inside the running event loop (grpc.aio binds a
channel to the loop that creates it).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal, TypeVar

import grpc
from grpc import aio

from controller.etcd import etcd_rpc_pb2 as pb
from controller.etcd import etcd_rpc_pb2_grpc as rpc

__all__ = [
    "KV",
    "CmpOp",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdLeaseNotFound",
    "EtcdTimeout",
    "EtcdUnavailable",
    "Event",
    "EventType",
    "LeaseKeeper",
    "RangeResult",
    "TxnResult",
    "WatchBatch",
    "cmp_create",
    "cmp_lease",
    "cmp_mod",
    "cmp_value",
    "cmp_version",
    "normalize_endpoint",
    "op_delete",
    "op_get",
    "op_put",
    "prefix_end",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Keepalive: etcd's default enforcement (--grpc-keepalive-min-time 5s, no pings
# without an active stream) sends GOAWAY "too_many_pings" to clients that ping
# faster or while idle, so ping every 10 s and only while a call is open. The
# http2 ping timeout, not keepalive_timeout_ms, is what drops a dead peer.
# Fast reconnect backoff matters because a restarted member must be usable again
# within a second, not the default 1-120 s.
_CHANNEL_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.http2.ping_timeout_ms", 3_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # etcd sends whole revisions in one watch response unless fragmented; a big
    # range may exceed grpc's 4 MiB default too.
    ("grpc.max_receive_message_length", -1),
)

# "hasleader": a member without a leader answers UNAVAILABLE at once instead of
# queueing the request (then we try another member); without it a watch on a
# member cut off from the quorum stays open and silent.
_METADATA: Final = (("hasleader", "true"),)

_READY: Final = grpc.ChannelConnectivity.READY
_TRANSIENT_FAILURE: Final = grpc.ChannelConnectivity.TRANSIENT_FAILURE
# How long a connecting endpoint may take before the next one is tried.
_CONNECT_GRACE: Final = 1.0
_RETRY_BACKOFF_START: Final = 0.05
_RETRY_BACKOFF_MAX: Final = 1.0

# Transport-level failures after which a watch stream is simply reopened.
_STREAM_RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


# ---------------------------------------------------------------- errors


class EtcdError(Exception):
    """Any failure talking to etcd. ``code`` is the gRPC status when there was one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint could serve the request.

    For a write this means the outcome is unknown: it may have been applied.
    Re-read before retrying.
    """


class EtcdTimeout(EtcdError):
    """The deadline passed. For a write, the outcome is unknown (re-read)."""


class EtcdCompacted(EtcdError):
    """The requested revision is older than the oldest kept revision.

    ``compact_revision`` is the oldest revision still available when etcd told
    us (watches always do), or 0 when it did not (ranges).
    """

    def __init__(self, compact_revision: int, message: str | None = None) -> None:
        super().__init__(
            message or f"etcd revision compacted (oldest available: {compact_revision})",
            grpc.StatusCode.OUT_OF_RANGE,
        )
        self.compact_revision = compact_revision


class EtcdLeaseNotFound(EtcdError):
    """The lease does not exist (never granted, revoked or expired)."""


def _map_error(err: aio.AioRpcError) -> EtcdError:
    code = err.code()
    details = err.details() or ""
    message = f"etcd {code.name}: {details}"
    # etcd reports its own proposal timeouts ("etcdserver: request timed out...")
    # as UNAVAILABLE; they are timeouts: the write may yet be applied.
    if code is grpc.StatusCode.DEADLINE_EXCEEDED or "request timed out" in details:
        return EtcdTimeout(message, code)
    if code is grpc.StatusCode.UNAVAILABLE or code is grpc.StatusCode.CANCELLED:
        return EtcdUnavailable(message, code)
    if code is grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return EtcdCompacted(0, message)
    if code is grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return EtcdLeaseNotFound(message, code)
    return EtcdError(message, code)


# ---------------------------------------------------------------- results


@dataclass(slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(slots=True)
class RangeResult:
    kvs: list[KV]
    revision: int
    count: int
    more: bool


@dataclass(slots=True)
class TxnResult:
    """``responses`` follows the executed branch, one item per op: a RangeResult
    for op_get, the write revision (int) for op_put, the number deleted (int) for
    op_delete."""

    succeeded: bool
    revision: int
    responses: list[RangeResult | int]


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(slots=True)
class Event:
    type: EventType
    kv: KV
    prev_kv: KV | None


@dataclass(slots=True)
class WatchBatch:
    """What a watch delivers: whole revisions, never part of one (one revision
    when following live writes, often several while catching up).

    ``revision`` is the revision the consumer is now complete up to: the
    revision of the last event in the batch, or for a progress notification
    (no events) the store revision etcd reported. It is deliberately not the
    response header's revision, which during catch-up can run ahead of the
    events delivered so far.
    """

    revision: int
    events: list[Event]
    progress_notify: bool


def _kv(m: pb.KeyValue) -> KV:
    return KV(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def _range_result(resp: pb.RangeResponse, revision: int) -> RangeResult:
    return RangeResult([_kv(m) for m in resp.kvs], revision, resp.count, resp.more)


def _event(m: pb.Event) -> Event:
    etype = EventType.DELETE if m.type == pb.Event.DELETE else EventType.PUT
    prev = _kv(m.prev_kv) if m.HasField("prev_kv") else None
    return Event(etype, _kv(m.kv), prev)


# ---------------------------------------------------------------- txn builders
# Plain functions returning protobuf messages: they sit on the hot path of every
# store transaction, so no wrapper objects.

CmpOp = Literal["=", "!=", "<", ">"]

_CMP_RESULT: Final[dict[str, pb.Compare.CompareResult.ValueType]] = {
    "=": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    "<": pb.Compare.LESS,
    ">": pb.Compare.GREATER,
}


def _cmp_result(op: str) -> pb.Compare.CompareResult.ValueType:
    try:
        return _CMP_RESULT[op]
    except KeyError:
        raise ValueError(f"compare op must be one of = != < >, not {op!r}") from None


def cmp_mod(key: bytes, op: CmpOp, revision: int, range_end: bytes | None = None) -> pb.Compare:
    """Compare the mod revision of ``key`` (or of every key in [key, range_end))."""
    return pb.Compare(
        key=key,
        range_end=range_end or b"",
        target=pb.Compare.MOD,
        result=_cmp_result(op),
        mod_revision=revision,
    )


def cmp_create(key: bytes, op: CmpOp, revision: int, range_end: bytes | None = None) -> pb.Compare:
    """``cmp_create(k, "=", 0)`` means "k does not exist"; with range_end,
    "no key in the range"."""
    return pb.Compare(
        key=key,
        range_end=range_end or b"",
        target=pb.Compare.CREATE,
        result=_cmp_result(op),
        create_revision=revision,
    )


def cmp_version(key: bytes, op: CmpOp, version: int, range_end: bytes | None = None) -> pb.Compare:
    return pb.Compare(
        key=key,
        range_end=range_end or b"",
        target=pb.Compare.VERSION,
        result=_cmp_result(op),
        version=version,
    )


def cmp_value(key: bytes, op: CmpOp, value: bytes, range_end: bytes | None = None) -> pb.Compare:
    return pb.Compare(
        key=key,
        range_end=range_end or b"",
        target=pb.Compare.VALUE,
        result=_cmp_result(op),
        value=value,
    )


def cmp_lease(key: bytes, op: CmpOp, lease_id: int, range_end: bytes | None = None) -> pb.Compare:
    return pb.Compare(
        key=key,
        range_end=range_end or b"",
        target=pb.Compare.LEASE,
        result=_cmp_result(op),
        lease=lease_id,
    )


def op_put(key: bytes, value: bytes, lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes, range_end: bytes | None = None) -> pb.RequestOp:
    return pb.RequestOp(
        request_delete_range=pb.DeleteRangeRequest(key=key, range_end=range_end or b"")
    )


def op_get(
    key: bytes,
    range_end: bytes | None = None,
    *,
    limit: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
) -> pb.RequestOp:
    return pb.RequestOp(
        request_range=pb.RangeRequest(
            key=key,
            range_end=range_end or b"",
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
        )
    )


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix``.

    Increment the last byte that is not 0xff and drop what follows; a prefix of
    only 0xff bytes (or empty) has no upper bound, which etcd spells b"\\0".
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def normalize_endpoint(endpoint: str) -> str:
    """Turn an etcd-style endpoint into a gRPC target.

    "http://h:p" and "h:p" become "h:p"; "unix:..." targets pass through.
    """
    if endpoint.startswith("unix:"):
        return endpoint
    if endpoint.startswith("http://"):
        return endpoint.removeprefix("http://").rstrip("/")
    if "://" in endpoint:
        raise ValueError(f"unsupported etcd endpoint {endpoint!r} (TLS is not supported)")
    return endpoint


# ---------------------------------------------------------------- client


@dataclass(slots=True)
class _Conn:
    index: int
    target: str
    channel: aio.Channel
    kv: rpc.KVAsyncStub
    watch: rpc.WatchAsyncStub
    lease: rpc.LeaseAsyncStub


class _Backoff:
    __slots__ = ("delay",)

    def __init__(self) -> None:
        self.delay = _RETRY_BACKOFF_START

    def reset(self) -> None:
        self.delay = _RETRY_BACKOFF_START

    def next(self, cap: float | None = None) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, _RETRY_BACKOFF_MAX)
        return delay if cap is None else max(min(delay, cap), 0.0)


class EtcdClient:
    """Connection to one etcd cluster through any of its ``endpoints``.

    Endpoints: "127.0.0.1:2379", "http://127.0.0.1:2379" or "unix:/abs/etcd.sock:0".
    ``timeout`` is the deadline of every call, retries included.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self._targets = [normalize_endpoint(e) for e in endpoints]
        self._timeout = timeout
        self._index = 0
        self._conns: list[_Conn | None] | None = None
        self._keepers: set[LeaseKeeper] = set()

    # ---- lifecycle

    @property
    def endpoints(self) -> list[str]:
        return list(self._targets)

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to first (it moves on failures)."""
        return self._targets[self._index]

    @property
    def timeout(self) -> float:
        return self._timeout

    async def connect(self) -> None:
        """Open the client and check that some endpoint answers within the timeout."""
        if self._conns is None:
            self._conns = [None] * len(self._targets)
        await self.current_revision()

    async def close(self) -> None:
        """Stop lease keepers started from this client and close every channel."""
        for keeper in list(self._keepers):
            await keeper.stop()
        conns, self._conns = self._conns, None
        for conn in conns or ():
            if conn is not None:
                await conn.channel.close()

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _conn(self) -> _Conn:
        conns = self._conns
        if conns is None:
            raise EtcdError("etcd client is not connected (call connect())")
        conn = conns[self._index]
        if conn is None:
            conn = conns[self._index] = self._open(self._index)
        return conn

    def _open(self, index: int) -> _Conn:
        target = self._targets[index]
        channel = aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return _Conn(
            index,
            target,
            channel,
            rpc.KVStub(channel),
            rpc.WatchStub(channel),
            rpc.LeaseStub(channel),
        )

    def _rotate(self, failed: _Conn, why: str) -> None:
        # Only the first of many concurrent failures on one endpoint moves us on;
        # the others must not skip over the endpoints after it.
        if self._index == failed.index and len(self._targets) > 1:
            self._index = (failed.index + 1) % len(self._targets)
            log.info(
                "etcd endpoint %s %s, switching to %s",
                failed.target,
                why,
                self._targets[self._index],
            )

    async def _connected(self, deadline: float) -> _Conn:
        """The current endpoint if its channel is ready (the hot path), else the
        first endpoint that becomes ready before ``deadline``.

        Nothing has been sent while we look, so moving on is safe even for writes:
        a member that is down or restarting delays a write, it does not fail it.
        """
        conn = self._conn()
        if conn.channel.get_state(try_to_connect=True) is _READY:
            return conn
        return await self._find_ready(deadline)

    async def _find_ready(self, deadline: float) -> _Conn:
        loop = asyncio.get_running_loop()
        several = len(self._targets) > 1
        tried = 0
        while True:
            conn = self._conn()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EtcdUnavailable(
                    f"no etcd endpoint reachable (tried {', '.join(self._targets)})",
                    grpc.StatusCode.UNAVAILABLE,
                )
            # With other endpoints to try, skip a failed one at once, but wait
            # once per round so a cluster that is entirely down is not spun on.
            last_of_round = tried % len(self._targets) == len(self._targets) - 1
            give_up_on_failure = several and not last_of_round
            if await _wait_ready(conn.channel, min(remaining, _CONNECT_GRACE), give_up_on_failure):
                return conn
            self._rotate(conn, "unreachable")
            tried += 1

    async def _read(
        self, attempt: Callable[[_Conn, float], Awaitable[_T]], time_limit: float | None = None
    ) -> _T:
        """Run an idempotent call, moving through endpoints until the deadline.

        ``attempt(conn, budget)`` gets the seconds left before the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeout if time_limit is None else time_limit)
        backoff = _Backoff()
        failures = 0
        while True:
            conn = await self._connected(deadline)
            try:
                return await attempt(conn, max(deadline - loop.time(), 0.001))
            except aio.AioRpcError as err:
                # UNAVAILABLE also covers "no leader" and "leader changed": another
                # member, or the same one a little later, can answer.
                if err.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise _map_error(err) from err
                self._rotate(conn, f"failed ({err.details()})")
                failures += 1
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _map_error(err) from err
                if failures % len(self._targets) == 0:
                    await asyncio.sleep(backoff.next(remaining))

    async def _write(self, call: Callable[[_Conn, float], Awaitable[_T]]) -> _T:
        """Send a non-idempotent call once: if it fails in flight its outcome is
        unknown, so the error goes to the caller (who must re-read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        conn = await self._connected(deadline)
        try:
            return await call(conn, max(deadline - loop.time(), 0.001))
        except aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                self._rotate(conn, f"failed ({err.details()})")
            raise _map_error(err) from err

    # ---- KV

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        sort_ascending_by_key: bool = False,
    ) -> RangeResult:
        request = pb.RangeRequest(
            key=key,
            range_end=range_end or b"",
            revision=revision,
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
            serializable=serializable,
        )
        if sort_ascending_by_key:
            request.sort_order = pb.RangeRequest.ASCEND
            request.sort_target = pb.RangeRequest.KEY

        async def attempt(conn: _Conn, budget: float) -> pb.RangeResponse:
            return await conn.kv.Range(request, timeout=budget, metadata=_METADATA)

        resp = await self._read(attempt)
        return _range_result(resp, resp.header.revision)

    async def get(self, key: bytes) -> KV | None:
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def get_prefix(self, prefix: bytes, *, revision: int = 0) -> RangeResult:
        """Every key under ``prefix``, sorted by key, read at one revision."""
        return await self.range(
            prefix, prefix_end(prefix), revision=revision, sort_ascending_by_key=True
        )

    async def current_revision(self) -> int:
        """The store revision, by the cheapest linearizable read (a count on one key)."""
        result = await self.range(b"\0", count_only=True)
        return result.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write ``key``; returns the new store revision. Not retried (see module doc)."""
        request = pb.PutRequest(key=key, value=value, lease=lease)

        async def call(conn: _Conn, budget: float) -> pb.PutResponse:
            return await conn.kv.Put(request, timeout=budget, metadata=_METADATA)

        resp = await self._write(call)
        return resp.header.revision

    async def delete(self, key: bytes, range_end: bytes | None = None) -> tuple[int, int]:
        """Delete ``key`` (or [key, range_end)); returns (revision, number deleted)."""
        request = pb.DeleteRangeRequest(key=key, range_end=range_end or b"")

        async def call(conn: _Conn, budget: float) -> pb.DeleteRangeResponse:
            return await conn.kv.DeleteRange(request, timeout=budget, metadata=_METADATA)

        resp = await self._write(call)
        return resp.header.revision, resp.deleted

    async def txn(
        self,
        compares: Sequence[pb.Compare],
        success: Sequence[pb.RequestOp],
        failure: Sequence[pb.RequestOp] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``.

        Never retried, even when it only reads: callers build txns for writes.
        """
        request = pb.TxnRequest(compare=compares, success=success, failure=failure)

        async def call(conn: _Conn, budget: float) -> pb.TxnResponse:
            return await conn.kv.Txn(request, timeout=budget, metadata=_METADATA)

        resp = await self._write(call)
        return _txn_result(resp)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Discard history before ``revision``. Idempotent, so retried like a read."""
        request = pb.CompactionRequest(revision=revision, physical=physical)

        async def attempt(conn: _Conn, budget: float) -> pb.CompactionResponse:
            return await conn.kv.Compact(request, timeout=budget, metadata=_METADATA)

        await self._read(attempt)

    # ---- watch

    async def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        start_revision: int = 0,
        progress_notify: bool = True,
        prev_kv: bool = False,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Yield batches of events on ``key`` (or [key, range_end)) from ``start_revision``
        (0: from now on), plus empty progress batches if ``progress_notify``.

        Survives endpoint loss: the stream is reopened on the next endpoint from
        the last delivered revision + 1, so no event is lost or repeated. Raises
        EtcdCompacted when the revision to resume from is no longer available.
        Stop it by closing the generator or cancelling the task iterating it.
        """
        state = _WatchState(start_revision)
        create = pb.WatchCreateRequest(
            key=key,
            range_end=range_end or b"",
            progress_notify=progress_notify,
            prev_kv=prev_kv,
            fragment=True,
        )
        backoff = _Backoff()
        while True:
            conn = await self._watch_endpoint()
            try:
                # aclosing: closing this generator must cancel the stream now, not at GC.
                async with aclosing(self._watch_stream(conn, create, state, backoff)) as stream:
                    async for batch in stream:
                        yield batch
                reason = "stream closed by server"
            except aio.AioRpcError as err:
                if err.code() not in _STREAM_RETRYABLE or self._conns is None:
                    raise _map_error(err) from err
                reason = f"{err.code().name}: {err.details()}"
            log.warning(
                "etcd watch on %r via %s interrupted (%s); resuming from revision %d",
                key,
                conn.target,
                reason,
                state.next_rev,
            )
            self._rotate(conn, "lost the watch stream")
            await asyncio.sleep(backoff.next())

    async def _watch_endpoint(self) -> _Conn:
        """A ready endpoint for a watch, which waits for etcd as long as it takes."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self._connected(loop.time() + self._timeout)
            except EtcdUnavailable as err:
                log.warning("etcd watch still waiting for an endpoint: %s", err)

    async def _watch_stream(
        self,
        conn: _Conn,
        create: pb.WatchCreateRequest,
        state: _WatchState,
        backoff: _Backoff,
    ) -> AsyncGenerator[WatchBatch, None]:
        state.pending.clear()  # a partial (fragmented) response never carries over
        create.start_revision = state.next_rev
        call = conn.watch.Watch(metadata=_METADATA)
        try:
            await call.write(pb.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if not isinstance(resp, pb.WatchResponse):  # EOF
                    return
                if resp.created:
                    backoff.reset()
                batch = state.accept(resp)
                if batch is not None:
                    yield batch
        finally:
            call.cancel()

    # ---- leases

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease; returns (id, ttl granted by the server).

        Retried like a read: a lease granted by a lost attempt has no keys and
        simply expires.
        """
        request = pb.LeaseGrantRequest(TTL=ttl)

        async def attempt(conn: _Conn, budget: float) -> pb.LeaseGrantResponse:
            return await conn.lease.LeaseGrant(request, timeout=budget, metadata=_METADATA)

        resp = await self._read(attempt)
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}")
        return resp.ID, resp.TTL

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys. A lease already gone is not an error."""
        request = pb.LeaseRevokeRequest(ID=lease_id)

        async def attempt(conn: _Conn, budget: float) -> pb.LeaseRevokeResponse:
            return await conn.lease.LeaseRevoke(request, timeout=budget, metadata=_METADATA)

        try:
            await self._read(attempt)
        except EtcdLeaseNotFound:
            pass

    async def lease_keepalive_once(self, lease_id: int, *, time_limit: float | None = None) -> int:
        """Refresh a lease once; returns its new TTL, or 0 if it has expired.

        ``time_limit`` overrides the client's deadline (keepers race the lease's TTL).
        """

        async def attempt(conn: _Conn, budget: float) -> int:
            call = conn.lease.LeaseKeepAlive(timeout=budget, metadata=_METADATA)
            try:
                await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
            finally:
                call.cancel()
            if not isinstance(resp, pb.LeaseKeepAliveResponse):
                raise EtcdUnavailable(f"lease keep-alive stream closed by {conn.target}")
            return max(resp.TTL, 0)

        return await self._read(attempt, time_limit)

    async def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left, or -1 if it does not exist."""
        request = pb.LeaseTimeToLiveRequest(ID=lease_id)

        async def attempt(conn: _Conn, budget: float) -> pb.LeaseTimeToLiveResponse:
            return await conn.lease.LeaseTimeToLive(request, timeout=budget, metadata=_METADATA)

        try:
            resp = await self._read(attempt)
        except EtcdLeaseNotFound:
            return -1
        return resp.TTL

    def keep_lease_alive(
        self,
        lease_id: int,
        ttl: int,
        *,
        on_lost: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> LeaseKeeper:
        """Refresh ``lease_id`` every ttl/3 in a background task until stopped.

        ``on_lost(lease_id)`` is called once if the lease expires, or if no
        refresh succeeded for a whole TTL (the lease must then be presumed gone).
        Must be called from a running event loop.
        """
        keeper = LeaseKeeper(self, lease_id, ttl, on_lost)
        self._keepers.add(keeper)
        keeper.add_done_callback(self._keepers.discard)
        return keeper


async def _wait_ready(channel: aio.Channel, limit: float, give_up_on_failure: bool) -> bool:
    """Wait up to ``limit`` for ``channel`` to be READY (it is asked to connect).

    A channel in TRANSIENT_FAILURE retries by itself after its backoff (at most
    1 s with our options), so waiting on it is how a restarted member is found.
    """
    state = channel.get_state(try_to_connect=True)
    try:
        async with asyncio.timeout(limit):
            while state is not _READY:
                if state is _TRANSIENT_FAILURE and give_up_on_failure:
                    return False
                if state is grpc.ChannelConnectivity.SHUTDOWN:
                    raise EtcdError("etcd client is closed")
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        return False
    return True


def _txn_result(resp: pb.TxnResponse) -> TxnResult:
    # Every op of one txn executes at the txn's revision; the nested headers are
    # not reliably filled in, so the txn header is the source of truth.
    revision = resp.header.revision
    items: list[RangeResult | int] = []
    for op in resp.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            items.append(_range_result(op.response_range, revision))
        elif kind == "response_put":
            items.append(revision)
        elif kind == "response_delete_range":
            items.append(op.response_delete_range.deleted)
        else:
            raise EtcdError(f"unexpected txn response {kind!r}")
    return TxnResult(resp.succeeded, revision, items)


@dataclass(slots=True)
class _WatchState:
    """What must survive a reconnect: where to resume, and nothing else."""

    next_rev: int
    pending: list[pb.Event] = field(default_factory=list)

    def accept(self, resp: pb.WatchResponse) -> WatchBatch | None:
        if resp.canceled:
            if resp.compact_revision:
                raise EtcdCompacted(resp.compact_revision)
            raise EtcdError(f"etcd canceled the watch: {resp.cancel_reason or 'no reason'}")
        if resp.created:
            if self.next_rev == 0:
                # "From now": the server starts at header.revision + 1; pin it so a
                # reconnect does not skip what was written in between.
                self.next_rev = resp.header.revision + 1
            return None
        if resp.fragment:
            self.pending.extend(resp.events)
            return None
        if self.pending:
            self.pending.extend(resp.events)
            raw: Sequence[pb.Event] = self.pending
            self.pending = []
        else:
            raw = resp.events
        if not raw:
            return self._progress(resp.header.revision)
        # Defensive: never hand out a revision already delivered.
        events = [_event(e) for e in raw if e.kv.mod_revision >= self.next_rev]
        if not events:
            return None
        last = events[-1].kv.mod_revision
        self.next_rev = last + 1
        return WatchBatch(last, events, False)

    def _progress(self, revision: int) -> WatchBatch | None:
        # A member that is behind (after failover) may report a revision older
        # than what was already delivered; that is no progress.
        if revision < self.next_rev - 1:
            return None
        self.next_rev = revision + 1
        return WatchBatch(revision, [], True)


class LeaseKeeper:
    """Background refresh of one lease (see EtcdClient.keep_lease_alive)."""

    def __init__(
        self,
        client: EtcdClient,
        lease_id: int,
        ttl: int,
        on_lost: Callable[[int], Awaitable[None] | None] | None,
    ) -> None:
        self.lease_id = lease_id
        self.ttl = ttl
        self._client = client
        self._on_lost = on_lost
        self._lost = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"etcd-lease-keeper-{lease_id:x}")

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    def add_done_callback(self, callback: Callable[[LeaseKeeper], object]) -> None:
        self._task.add_done_callback(lambda _task: callback(self))

    async def stop(self) -> None:
        """Stop refreshing (the lease then expires after its TTL unless revoked)."""
        if self._task.done() or self._task is asyncio.current_task():
            return  # finished, or called from on_lost: the task is ending anyway
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            # Re-raise only if it is *our* caller being cancelled.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _run(self) -> None:
        try:
            reason = await self._refresh_until_lost()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("etcd lease keeper for %x crashed", self.lease_id)
            reason = "keeper crashed"
        log.error("etcd lease %x lost: %s", self.lease_id, reason)
        self._lost.set()
        if self._on_lost is not None:
            await self._notify()

    async def _notify(self) -> None:
        assert self._on_lost is not None
        try:
            result = self._on_lost(self.lease_id)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_lost callback for etcd lease %x failed", self.lease_id)

    async def _refresh_until_lost(self) -> str:
        loop = asyncio.get_running_loop()
        interval = max(self.ttl / 3, 0.05)
        # Until the first refresh answers we only know the lease was valid when
        # granted, at most one TTL ago.
        valid_until = loop.time() + self.ttl
        while True:
            sent_at = loop.time()
            remaining = valid_until - sent_at
            if remaining <= 0:
                return f"no successful refresh for {self.ttl}s"
            try:
                ttl = await self._client.lease_keepalive_once(self.lease_id, time_limit=remaining)
            except EtcdError as err:
                log.warning("etcd lease %x refresh failed: %s", self.lease_id, err)
                await asyncio.sleep(min(interval, max(valid_until - loop.time(), 0)))
                continue
            if ttl <= 0:
                return "expired on the server"
            valid_until = sent_at + ttl
            await asyncio.sleep(interval)
