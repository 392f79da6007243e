"""EtcdClient and EmbeddedEtcd against real etcd processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.etcd import (
    EmbeddedEtcd,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdNotInstalled,
    EtcdTimeout,
    EtcdUnavailable,
    EventType,
    RangeResult,
    WatchBatch,
    cmp_create,
    cmp_mod,
    cmp_value,
    cmp_version,
    etcd_binary,
    normalize_endpoint,
    op_delete,
    op_get,
    op_put,
    prefix_end,
)
from controller.etcd import client as client_module
from controller.etcd import etcd_rpc_pb2 as pb
from tests.support.etcd import etcd_cluster, private_etcd, scratch_dir

# ---------------------------------------------------------------- helpers


async def next_events(watch: AsyncIterator[WatchBatch], timeout: float = 5.0) -> WatchBatch:
    """The next batch that carries events (progress notifications skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            batch = await anext(watch)
            if batch.events:
                return batch


async def collect_until(
    watch: AsyncIterator[WatchBatch], count: int, timeout: float = 10.0
) -> list[WatchBatch]:
    batches: list[WatchBatch] = []
    seen = 0
    while seen < count:
        batch = await next_events(watch, timeout)
        batches.append(batch)
        seen += len(batch.events)
    return batches


async def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread has stopped: a group stop is
    not immediate, and on a loaded machine a thread can still serve requests
    for milliseconds after kill() returns."""
    os.kill(pid, signal.SIGSTOP)
    async with asyncio.timeout(5):
        while True:
            states = [_thread_state(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")]
            if all(state in ("T", "t") for state in states):
                return
            await asyncio.sleep(0.005)


def _thread_state(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # the thread has exited
        return "T"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- pure functions


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_normalize_endpoint() -> None:
    assert normalize_endpoint("http://127.0.0.1:2379") == "127.0.0.1:2379"
    assert normalize_endpoint("127.0.0.1:2379") == "127.0.0.1:2379"
    assert normalize_endpoint("unix:/run/etcd.sock:0") == "unix:/run/etcd.sock:0"
    with pytest.raises(ValueError, match="TLS"):
        normalize_endpoint("https://127.0.0.1:2379")


def test_builders_produce_wire_messages() -> None:
    guard = cmp_create(b"/p/", "=", 0, prefix_end(b"/p/"))
    assert guard.target == pb.Compare.CREATE and guard.result == pb.Compare.EQUAL
    assert guard.range_end == b"/p0" and guard.WhichOneof("target_union") == "create_revision"
    assert cmp_mod(b"k", "!=", 3).result == pb.Compare.NOT_EQUAL
    assert op_put(b"k", b"v", lease=7).request_put.lease == 7
    with pytest.raises(ValueError, match="compare op"):
        cmp_mod(b"k", "==", 1)  # type: ignore[arg-type]


def _kv(key: bytes, rev: int) -> pb.KeyValue:
    return pb.KeyValue(key=key, mod_revision=rev, create_revision=rev, version=1)


def _events(*revs: int) -> list[pb.Event]:
    return [pb.Event(type=pb.Event.PUT, kv=_kv(b"k%d" % r, r)) for r in revs]


def test_watch_state_reassembles_and_resumes_exactly() -> None:
    """The bookkeeping behind resume, fed wire messages directly."""
    state = client_module._WatchState(0)
    created = pb.WatchResponse(created=True, header=pb.ResponseHeader(revision=10))
    assert state.accept(created) is None
    assert state.next_rev == 11  # "from now" pinned, so a reconnect skips nothing

    part = pb.WatchResponse(fragment=True, events=_events(11, 11))
    assert state.accept(part) is None and state.next_rev == 11
    # header.revision (20) runs ahead during catch-up: it must not be trusted.
    rest = pb.WatchResponse(events=_events(11, 12), header=pb.ResponseHeader(revision=20))
    batch = state.accept(rest)
    assert batch is not None and batch.revision == 12 and len(batch.events) == 4
    assert state.next_rev == 13

    replay = pb.WatchResponse(events=_events(12, 13))  # 12 already delivered
    batch = state.accept(replay)
    assert batch is not None and [e.kv.mod_revision for e in batch.events] == [13]

    behind = pb.WatchResponse(header=pb.ResponseHeader(revision=5))  # lagging member
    assert state.accept(behind) is None
    progress = state.accept(pb.WatchResponse(header=pb.ResponseHeader(revision=30)))
    assert progress == WatchBatch(30, [], True) and state.next_rev == 31

    with pytest.raises(EtcdCompacted) as err:
        state.accept(pb.WatchResponse(canceled=True, compact_revision=25))
    assert err.value.compact_revision == 25


# ---------------------------------------------------------------- KV


async def test_put_get_range_delete(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    c, p = etcd_client, key_prefix
    rev_a = await c.put(p + b"a", b"1")
    rev_b = await c.put(p + b"b", b"2")
    assert rev_b > rev_a

    kv = await c.get(p + b"a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"1", rev_a, rev_a, 1)
    assert await c.get(p + b"missing") is None

    listing = await c.get_prefix(p)
    assert [k.key for k in listing.kvs] == [p + b"a", p + b"b"]
    assert listing.count == 2 and not listing.more and listing.revision >= rev_b

    page = await c.range(p, prefix_end(p), limit=1, sort_ascending_by_key=True)
    assert [k.key for k in page.kvs] == [p + b"a"] and page.more and page.count == 2

    keys = await c.range(p, prefix_end(p), keys_only=True)
    assert [k.value for k in keys.kvs] == [b"", b""]

    counted = await c.range(p, prefix_end(p), count_only=True)
    assert counted.kvs == [] and counted.count == 2

    local = await c.range(p + b"a", serializable=True)
    assert local.kvs[0].value == b"1"

    past = await c.get_prefix(p, revision=rev_a)
    assert [k.key for k in past.kvs] == [p + b"a"]

    rev, deleted = await c.delete(p + b"a")
    assert deleted == 1 and rev > rev_b
    rev, deleted = await c.delete(p, prefix_end(p))
    assert deleted == 1
    assert (await c.get_prefix(p)).kvs == []
    assert await c.current_revision() >= rev


async def test_txn_success_and_failure(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    c, key = etcd_client, key_prefix + b"k"
    create = ([cmp_create(key, "=", 0)], [op_put(key, b"v1"), op_get(key)], [op_get(key)])

    first = await c.txn(*create)
    assert first.succeeded
    put_rev, read = first.responses
    assert put_rev == first.revision
    assert isinstance(read, RangeResult) and read.kvs[0].value == b"v1"

    second = await c.txn(*create)
    assert not second.succeeded and second.revision == first.revision
    (current,) = second.responses
    assert isinstance(current, RangeResult) and current.kvs[0].mod_revision == first.revision

    # Compare-and-swap on mod revision: only the holder of the latest revision wins.
    swapped = await c.txn([cmp_mod(key, "=", first.revision)], [op_put(key, b"v2")])
    assert swapped.succeeded and swapped.revision > first.revision
    stale = await c.txn([cmp_mod(key, "=", first.revision)], [op_put(key, b"v3")])
    assert not stale.succeeded and stale.responses == []

    guarded = await c.txn(
        [cmp_value(key, "=", b"v2"), cmp_version(key, ">", 1)], [op_delete(key), op_delete(key)]
    )
    assert guarded.succeeded and guarded.responses == [1, 0]
    assert await c.get(key) is None


async def test_txn_compare_over_a_range(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    """create_revision == 0 over [prefix, prefix_end) means "no key under the prefix"."""
    c = etcd_client
    sub = key_prefix + b"ports/"
    none_under = cmp_create(sub, "=", 0, prefix_end(sub))

    empty = await c.txn([none_under], [op_put(key_prefix + b"marker", b"1")])
    assert empty.succeeded

    await c.put(sub + b"p1", b"x")
    taken = await c.txn([none_under], [op_put(key_prefix + b"marker", b"2")])
    assert not taken.succeeded

    # "Nothing under the prefix changed since revision R", the optimistic-lock form.
    unchanged = cmp_mod(sub, "<", taken.revision + 1, prefix_end(sub))
    assert (await c.txn([unchanged], [])).succeeded
    await c.put(sub + b"p2", b"y")
    assert not (await c.txn([unchanged], [])).succeeded


async def test_error_mapping(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    with pytest.raises(EtcdLeaseNotFound):
        await etcd_client.put(key_prefix + b"k", b"v", lease=0x7FFF_0000_0000_0001)
    too_many = [op_put(key_prefix + b"%d" % i, b"v") for i in range(129)]
    with pytest.raises(EtcdError) as err:
        await etcd_client.txn([], too_many)
    assert not isinstance(err.value, EtcdUnavailable)
    assert "too many operations" in str(err.value)


async def test_client_must_connect_first(etcd_endpoint: str) -> None:
    with pytest.raises(EtcdError, match="not connected"):
        await EtcdClient([etcd_endpoint]).get(b"/x")


# ---------------------------------------------------------------- leases


async def test_leases_expire_unless_kept_alive(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    c = etcd_client
    expiring, ttl = await c.lease_grant(1)
    kept, _ = await c.lease_grant(1)
    assert ttl == 1
    await c.put(key_prefix + b"expiring", b"x", lease=expiring)
    await c.put(key_prefix + b"kept", b"x", lease=kept)
    kv = await c.get(key_prefix + b"kept")
    assert kv is not None and kv.lease == kept

    lost: list[int] = []
    keeper = c.keep_lease_alive(kept, 1, on_lost=lost.append)
    await asyncio.sleep(2.5)  # > TTL + the server's 0.5 s expiry sweep
    assert await c.get(key_prefix + b"expiring") is None
    assert await c.get(key_prefix + b"kept") is not None
    assert not keeper.lost and lost == []
    assert await c.lease_keepalive_once(expiring) == 0
    assert await c.lease_time_to_live(expiring) == -1

    # Revoked behind the keeper's back: it must say so, not die silently.
    await c.lease_revoke(kept)
    await asyncio.wait_for(keeper.wait_lost(), 3)
    assert lost == [kept]
    assert await c.get(key_prefix + b"kept") is None
    await keeper.stop()
    await c.lease_revoke(kept)  # already gone: not an error


# ---------------------------------------------------------------- watch


async def test_watch_delivers_events_in_order(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    c, p = etcd_client, key_prefix
    start = await c.current_revision() + 1
    watch = c.watch(p, prefix_end(p), start_revision=start, prev_kv=True)
    try:
        r1 = await c.put(p + b"a", b"1")
        r2 = await c.put(p + b"a", b"2")
        r3, _ = await c.delete(p + b"a")
        r4 = (await c.txn([], [op_put(p + b"b", b"3"), op_put(p + b"c", b"4")])).revision
        await c.put(key_prefix[:-1] + b"-outside", b"not watched")

        batches = await collect_until(watch, 5)
        events = [e for b in batches for e in b.events]
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
            (EventType.PUT, p + b"a", r1),
            (EventType.PUT, p + b"a", r2),
            (EventType.DELETE, p + b"a", r3),
            (EventType.PUT, p + b"b", r4),
            (EventType.PUT, p + b"c", r4),
        ]
        assert events[0].prev_kv is None
        assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
        assert events[2].prev_kv is not None and events[2].prev_kv.value == b"2"
        for batch in batches:
            assert batch.revision == batch.events[-1].kv.mod_revision
            assert not batch.progress_notify
    finally:
        await watch.aclose()


async def test_watch_from_now(etcd_client: EtcdClient, key_prefix: bytes) -> None:
    watch = etcd_client.watch(key_prefix + b"k")
    try:
        first = asyncio.create_task(next_events(watch))
        await asyncio.sleep(0.3)  # the stream opens on first iteration
        before = await etcd_client.current_revision()
        rev = await etcd_client.put(key_prefix + b"k", b"v")
        batch = await first
        assert [e.kv.mod_revision for e in batch.events] == [rev]
        assert rev > before
    finally:
        await watch.aclose()


async def test_watch_resumes_after_server_restart(
    key_prefix: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events lost with a dying stream are fetched again, none twice, and a
    revision is never split across batches. A write issued while etcd is down
    goes through once it is back.

    etcd fragments a watch response above --max-request-bytes + 512 KiB; with a
    100 kB limit the catch-up reads here (~0.7 and ~1.3 MB) arrive in fragments.
    """
    fragments = 0
    original_accept = client_module._WatchState.accept

    def counting_accept(
        state: client_module._WatchState, resp: pb.WatchResponse
    ) -> WatchBatch | None:
        nonlocal fragments
        fragments += resp.fragment
        return original_accept(state, resp)

    monkeypatch.setattr(client_module._WatchState, "accept", counting_accept)
    p = key_prefix
    expected: list[tuple[bytes, int]] = []

    async def write_revisions(c: EtcdClient, first: int, count: int = 8) -> list[int]:
        revisions = []
        for n in range(first, first + count):
            keys = [p + b"%02d-%02d" % (n, i) for i in range(20)]
            rev = (await c.txn([], [op_put(k, b"v" * 4000) for k in keys])).revision
            expected.extend((k, rev) for k in keys)
            revisions.append(rev)
        return revisions

    async with (
        private_etcd("restart", extra_args=["--max-request-bytes", "100000"]) as etcd,
        EtcdClient([etcd.endpoint], timeout=5) as writer,
        EtcdClient([etcd.endpoint], timeout=5) as reader,
    ):
        start = (await write_revisions(writer, 0))[0]
        watch = reader.watch(p, prefix_end(p), start_revision=start)
        try:
            got = await collect_until(watch, 160)
            # Not consumed: these sit in a stream that is about to die.
            await write_revisions(writer, 8)
            etcd.kill()
            # Issued while etcd is down: it waits for a connection (nothing was
            # sent, so that is safe) and lands once, after the restart. The sleep
            # lets the client notice the dead connection first; a write racing that
            # is sent into it and fails with EtcdUnavailable, as it should.
            await asyncio.sleep(0.1)
            while_down = asyncio.create_task(writer.put(p + b"while-down", b"x"))
            await asyncio.sleep(0.2)
            await etcd.start()
            expected.append((p + b"while-down", await while_down))
            await write_revisions(writer, 16)
            got += await collect_until(watch, 321)
        finally:
            await watch.aclose()

    assert [(e.kv.key, e.kv.mod_revision) for b in got for e in b.events] == expected
    batch_of_revision: dict[int, int] = {}
    for index, batch in enumerate(got):
        assert batch.revision == batch.events[-1].kv.mod_revision
        for event in batch.events:
            assert batch_of_revision.setdefault(event.kv.mod_revision, index) == index
    assert fragments > 0


async def test_watch_from_compacted_revision_raises() -> None:
    async with private_etcd("compact") as etcd, EtcdClient([etcd.endpoint]) as c:
        r1 = await c.put(b"/k", b"1")
        await c.put(b"/k", b"2")
        r3 = await c.put(b"/k", b"3")
        await c.compact(r3)

        watch = c.watch(b"/k", start_revision=r1)
        with pytest.raises(EtcdCompacted) as err:
            await anext(watch)
        assert err.value.compact_revision == r3
        with pytest.raises(EtcdCompacted):
            await c.range(b"/k", revision=r1)

        ok = c.watch(b"/k", start_revision=r3)
        try:
            batch = await next_events(ok)
            assert batch.events[0].kv.value == b"3"
        finally:
            await ok.aclose()


async def test_watch_progress_notifications() -> None:
    interval = ["--experimental-watch-progress-notify-interval", "100ms"]
    async with (
        private_etcd("progress", extra_args=interval) as etcd,
        EtcdClient([etcd.endpoint]) as c,
    ):
        rev = await c.put(b"/other", b"x")
        watch = c.watch(b"/quiet", start_revision=rev + 1)
        try:
            async with asyncio.timeout(5):
                batch = await anext(watch)
            assert batch.progress_notify and batch.events == [] and batch.revision == rev
        finally:
            await watch.aclose()


async def test_lease_keeper_reports_loss_when_etcd_is_unreachable() -> None:
    async with private_etcd("keeper") as etcd, EtcdClient([etcd.endpoint], timeout=1) as c:
        lease, ttl = await c.lease_grant(1)
        lost = asyncio.Event()

        async def on_lost(lease_id: int) -> None:
            assert lease_id == lease
            lost.set()

        keeper = c.keep_lease_alive(lease, ttl, on_lost=on_lost)
        await asyncio.sleep(0.5)
        assert not keeper.lost
        etcd.kill()
        # No confirmation for a whole TTL: the lease must be presumed gone.
        await asyncio.wait_for(lost.wait(), 3)
        assert keeper.lost


# ---------------------------------------------------------------- multiple endpoints


async def test_dead_first_endpoint_is_skipped(etcd_endpoint: str, tmp_path: Path) -> None:
    dead = f"unix:{tmp_path}/nobody.sock:0"
    async with EtcdClient([dead, etcd_endpoint], timeout=3) as c:
        rev = await c.put(b"/t/failover", b"x")
        kv = await c.get(b"/t/failover")
        assert kv is not None and kv.mod_revision == rev

    with pytest.raises(EtcdUnavailable):
        async with EtcdClient([dead], timeout=0.5):
            pass


async def test_cluster_member_killed(key_prefix: bytes) -> None:
    """Reads and watches move to a live member; a write in flight is not retried."""
    p = key_prefix + b"w/"
    async with etcd_cluster(3) as members:
        endpoints = [m.endpoint for m in members]
        async with (
            EtcdClient(endpoints, timeout=5) as c,
            EtcdClient(endpoints, timeout=5) as watcher,
        ):
            start = await c.current_revision() + 1
            watch = watcher.watch(p, prefix_end(p), start_revision=start)
            try:
                revisions = [await put_after_election(c, p + b"%d" % i) for i in range(3)]
                await collect_until(watch, 3)

                # Freeze the member the writer uses (normally member 0, the watcher's
                # too) so a write is in flight when it dies: the write must fail, not
                # be replayed on another member.
                victim = next(m for m in members if m.endpoint == c.current_endpoint)
                assert victim.pid is not None
                await freeze(victim.pid)
                in_flight = asyncio.create_task(c.put(key_prefix + b"in-flight", b"x"))
                await asyncio.sleep(0.2)
                assert not in_flight.done()
                victim.kill()
                with pytest.raises((EtcdUnavailable, EtcdTimeout)):
                    await in_flight
                assert await c.get(key_prefix + b"in-flight") is None  # not replayed

                kv = await c.get(p + b"0")  # reads go to the next member
                assert kv is not None and kv.mod_revision == revisions[0]

                for i in range(3, 6):
                    revisions.append(await put_after_election(c, p + b"%d" % i))

                batches = await collect_until(watch, 3)
                events = [e for b in batches for e in b.events]
                assert [e.kv.mod_revision for e in events] == revisions[3:]
                assert [e.kv.key for e in events] == [p + b"3", p + b"4", p + b"5"]
            finally:
                await watch.aclose()


async def put_after_election(c: EtcdClient, key: bytes) -> int:
    """A put that may meet "no leader" while the cluster elects one (tuned timing
    on a loaded machine elects now and then, too): re-read, then retry."""
    for _ in range(50):
        try:
            return await c.put(key, b"x")
        except (EtcdUnavailable, EtcdTimeout):
            kv = await c.get(key)
            if kv is not None:
                return kv.mod_revision
            await asyncio.sleep(0.05)
    raise AssertionError("cluster never accepted the write")


# ---------------------------------------------------------------- embedded etcd


async def test_embedded_start_stop(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "etcd", name="emb", tuned=True)
    assert etcd.endpoint == f"unix:{tmp_path}/etcd/etcd.sock:0"
    try:
        await etcd.start()
        pid = etcd.pid
        assert pid is not None and pid_alive(pid)
        async with EtcdClient([etcd.endpoint]) as c:
            await c.put(b"/kept", b"across restarts")
        await etcd.stop()
        assert not pid_alive(pid) and not etcd.running()

        await etcd.start()  # same data dir: data survives
        async with EtcdClient([etcd.endpoint]) as c:
            kv = await c.get(b"/kept")
            assert kv is not None and kv.value == b"across restarts"
    finally:
        await etcd.stop()


def test_embedded_command_line(tmp_path: Path) -> None:
    argv = EmbeddedEtcd(tmp_path, name="n").command()
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--auto-compaction-mode"] == "periodic"
    assert flags["--auto-compaction-retention"] == "1h"
    assert flags["--listen-client-urls"] == "unix://etcd.sock:0"
    assert flags["--listen-peer-urls"] == "http://127.0.0.1:0"
    assert "--heartbeat-interval" not in flags


async def test_supervise_restarts_a_dead_etcd() -> None:
    directory = scratch_dir("supervise")
    etcd = EmbeddedEtcd(directory, name="sup", tuned=True)
    try:
        await etcd.start()
        etcd.supervise()
        first = etcd.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(10):
            while etcd.restarts == 0:
                await asyncio.sleep(0.05)
        assert etcd.pid != first and etcd.running()
        async with EtcdClient([etcd.endpoint]) as c:
            await c.put(b"/alive", b"yes")
    finally:
        await etcd.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert not etcd.running()


async def test_missing_etcd_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    message = "etcd binary not found: install the Debian package etcd-server"
    with pytest.raises(EtcdNotInstalled, match=message):
        etcd_binary()
    with pytest.raises(EtcdNotInstalled, match=r"apt-get install etcd-server"):
        await EmbeddedEtcd(tmp_path / "etcd").start()
