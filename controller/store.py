"""The etcd-backed resource store: a watch-fed cache and optimistic transactions.

Layout below the configured prefix P:
  P r/<kind>/<id>   a resource (JSON)
  P r/_rev          touched by every transaction, so its mod_revision is the
                    revision of the last change to our resources (read barrier)
  P i/<index key>   uniqueness and membership keys (see controller.indexes)

Every mutation is built from the cache by a synchronous function, then
committed as one etcd transaction that compares the mod_revision of every
resource it read and the create_revision of every unique key it takes. If a
compare fails, the cache is brought up to date and the function runs again, so
validation always sees what the transaction is checked against.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, TypeVar

from controller.errors import Aborted, BaryonError, Unavailable
from controller.etcd.client import (
    EtcdClient,
    EtcdCompacted,
    cmp_create,
    cmp_mod,
    op_delete,
    op_get,
    op_put,
    prefix_end,
)
from controller.indexes import index_keys, relations
from controller.model import KINDS, R, Resource, decode, encode

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 64


class Cache:
    """All resources under the prefix, as of `revision`, with relation indexes."""

    def __init__(self) -> None:
        self.revision = 0
        self.objs: dict[str, dict[str, Resource]] = {k: {} for k in KINDS}
        self.mod_revs: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        self.rel: dict[str, dict[Hashable, set[str]]] = defaultdict(lambda: defaultdict(set))

    def get(self, cls: type[R], id_: str) -> R | None:
        obj = self.objs[cls.KIND].get(id_)
        return obj if obj is None or isinstance(obj, cls) else None

    def all(self, cls: type[R]) -> Iterable[R]:
        return self.objs[cls.KIND].values()  # type: ignore[return-value]

    def ids(self, relation: str, key: Hashable) -> set[str]:
        rel = self.rel.get(relation)
        if rel is None:
            return set()
        return rel.get(key) or set()

    def related(self, cls: type[R], relation: str, key: Hashable) -> list[R]:
        objs = self.objs[cls.KIND]
        return [objs[i] for i in self.ids(relation, key) if i in objs]  # type: ignore[misc]

    def has(self, relation: str, key: Hashable) -> bool:
        rel = self.rel.get(relation)
        return bool(rel and rel.get(key))

    def count(self, kind: str, project_id: str) -> int:
        return len(self.ids(f"project:{kind}", project_id))

    def mod_revision(self, obj: Resource) -> int:
        return self.mod_revs[obj.KIND].get(obj.id, 0)

    def put(self, obj: Resource, mod_revision: int) -> None:
        old = self.objs[obj.KIND].get(obj.id)
        if old is not None:
            self._unindex(old)
        self.objs[obj.KIND][obj.id] = obj
        self.mod_revs[obj.KIND][obj.id] = mod_revision
        for name, key in relations(obj):
            self.rel[name][key].add(obj.id)

    def remove(self, kind: str, id_: str) -> None:
        old = self.objs[kind].pop(id_, None)
        self.mod_revs[kind].pop(id_, None)
        if old is not None:
            self._unindex(old)

    def _unindex(self, obj: Resource) -> None:
        for name, key in relations(obj):
            ids = self.rel[name].get(key)
            if ids is not None:
                ids.discard(obj.id)
                if not ids:
                    del self.rel[name][key]


class Txn:
    """One etcd transaction under construction; builders add to it from the cache."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.compares: list[Any] = []
        self.ops: list[Any] = []
        self.reservations: list[Hashable] = []

    def depends_on(self, obj: Resource) -> None:
        """Fail the transaction if `obj` changed (or vanished) since the cache saw it."""
        rev = self.store.cache.mod_revision(obj)
        self.compares.append(cmp_mod(self.store.rkey(obj.KIND, obj.id), "=", rev))

    def prefix_unchanged(self, index_prefix: str) -> None:
        """Fail if any index key under the prefix was written after the cache revision."""
        key = self.store.ikey(index_prefix)
        rev = self.store.cache.revision + 1
        self.compares.append(cmp_mod(key, "<", rev, range_end=prefix_end(key)))

    def create(self, obj: Resource) -> None:
        key = self.store.rkey(obj.KIND, obj.id)
        self.compares.append(cmp_create(key, "=", 0))
        self.ops.append(op_put(key, encode(obj)))
        for ikey, unique in index_keys(obj):
            self._put_index(ikey, unique, obj.id)

    def update(self, old: Resource, new: Resource) -> None:
        self.depends_on(old)
        self.ops.append(op_put(self.store.rkey(new.KIND, new.id), encode(new)))
        old_keys = dict(index_keys(old))
        new_keys = dict(index_keys(new))
        for ikey in old_keys.keys() - new_keys.keys():
            self.ops.append(op_delete(self.store.ikey(ikey)))
        for ikey in new_keys.keys() - old_keys.keys():
            self._put_index(ikey, new_keys[ikey], new.id)

    def delete(self, obj: Resource) -> None:
        self.depends_on(obj)
        self.ops.append(op_delete(self.store.rkey(obj.KIND, obj.id)))
        for ikey, _ in index_keys(obj):
            self.ops.append(op_delete(self.store.ikey(ikey)))

    def reserve(self, key: Hashable) -> bool:
        """Claim a value (an IP, a segment) against other requests of this process."""
        if key in self.store.reserved:
            return False
        self.store.reserved[key] = 0
        self.reservations.append(key)
        return True

    def _put_index(self, ikey: str, unique: bool, value: str) -> None:
        key = self.store.ikey(ikey)
        if unique:
            self.compares.append(cmp_create(key, "=", 0))
        self.ops.append(op_put(key, value.encode()))


class Store:
    def __init__(self, etcd: EtcdClient, prefix: str = "/baryon/") -> None:
        self.etcd = etcd
        self.prefix = prefix.encode()
        self.rprefix = self.prefix + b"r/"
        self.rev_key = self.rprefix + b"_rev"
        self.cache = Cache()
        # value -> revision that must be in the cache before it is released (0: in flight)
        self.reserved: dict[Hashable, int] = {}
        self._release_heap: list[tuple[int, int, list[Hashable]]] = []
        self._release_seq = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_seq = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.rng = random.Random()
        self.listeners: list[Callable[[int, list[tuple[str, str, Resource | None]]], None]] = []

    # -- keys
    def rkey(self, kind: str, id_: str) -> bytes:
        return self.rprefix + f"{kind}/{id_}".encode()

    def ikey(self, index_key: str) -> bytes:
        return self.prefix + b"i/" + index_key.encode()

    # -- lifecycle
    async def start(self) -> None:
        rev = await self._load()
        self._watch_task = asyncio.create_task(self._watch(rev))
        self._ready.set()

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):
                pass
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.cancel()

    async def _load(self) -> int:
        """Read every resource at one revision into a fresh cache."""
        cache = Cache()
        end = prefix_end(self.rprefix)
        start = self.rprefix
        revision = 0
        while True:
            res = await self.etcd.range(start, end, revision=revision, limit=5000)
            revision = res.revision
            for kv in res.kvs:
                self._apply_put(cache, kv.key, kv.value, kv.mod_revision)
            if not res.more or not res.kvs:
                break
            start = res.kvs[-1].key + b"\0"
        cache.revision = revision
        self.cache = cache
        self._advance(revision)
        return revision

    async def _watch(self, revision: int) -> None:
        end = prefix_end(self.rprefix)
        while True:
            try:
                async for batch in self.etcd.watch(
                    self.rprefix, end, start_revision=revision + 1, progress_notify=True
                ):
                    changes: list[tuple[str, str, Resource | None]] = []
                    for ev in batch.events:
                        change = self._apply_event(ev)
                        if change is not None:
                            changes.append(change)
                    # WatchBatch.revision is complete-up-to (never a catch-up header).
                    if batch.revision > self.cache.revision:
                        self.cache.revision = batch.revision
                    revision = self.cache.revision
                    if changes:
                        for listener in self.listeners:
                            listener(revision, changes)
                    self._advance(revision)
            except EtcdCompacted:
                log.warning("watch revision %d compacted; reloading the cache", revision + 1)
                revision = await self._load()
                for listener in self.listeners:
                    listener(revision, [])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resource watch failed; reloading the cache")
                await asyncio.sleep(0.5)
                try:
                    revision = await self._load()
                except Exception:
                    log.exception("cache reload failed")

    def _apply_event(self, ev: Any) -> tuple[str, str, Resource | None] | None:
        parsed = self._parse_key(ev.kv.key)
        if parsed is None:
            return None
        kind, id_ = parsed
        if ev.type.name == "PUT":
            obj = self._apply_put(self.cache, ev.kv.key, ev.kv.value, ev.kv.mod_revision)
            return kind, id_, obj
        self.cache.remove(kind, id_)
        return kind, id_, None

    def _parse_key(self, key: bytes) -> tuple[str, str] | None:
        rest = key[len(self.rprefix) :].decode()
        kind, sep, id_ = rest.partition("/")
        if not sep or kind not in KINDS:
            return None
        return kind, id_

    def _apply_put(self, cache: Cache, key: bytes, value: bytes, mod_rev: int) -> Resource | None:
        parsed = self._parse_key(key)
        if parsed is None:
            return None
        obj = decode(KINDS[parsed[0]], value)
        cache.put(obj, mod_rev)
        return obj

    def _advance(self, revision: int) -> None:
        while self._waiters and self._waiters[0][0] <= revision:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
        while self._release_heap and self._release_heap[0][0] <= revision:
            _, _, keys = heapq.heappop(self._release_heap)
            for k in keys:
                self.reserved.pop(k, None)

    # -- reads
    async def wait_for(self, revision: int, timeout: float = 10.0) -> None:
        if self.cache.revision >= revision:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        heapq.heappush(self._waiters, (revision, self._waiter_seq, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Unavailable(
                f"the controller's view of the datastore is behind (at {self.cache.revision},"
                f" need {revision}); retry",
                reason="DatastoreBehind",
            ) from None

    async def sync(self) -> None:
        """Read barrier: the cache reflects every change committed before this call."""
        kv = await self.etcd.get(self.rev_key)
        if kv is not None:
            await self.wait_for(kv.mod_revision)

    # -- writes
    async def commit(self, build: Callable[[Txn], T]) -> tuple[T, int]:
        """Run `build` against the cache and commit what it adds, retrying on conflicts.

        `build` raises a domain error to refuse, or fills the Txn and returns the
        result to hand back once the transaction is committed.
        """
        synced = False
        for _ in range(MAX_ATTEMPTS):
            txn = Txn(self)
            try:
                result = build(txn)
            except BaryonError:
                # A refusal is not checked against etcd by any compare, so it must not
                # rest on a stale cache (e.g. a resource this client just created, here
                # or on another controller, not yet seen by the watch): catch up once
                # and build again before refusing.
                self._drop(txn.reservations)
                if synced:
                    raise
                before = self.cache.revision
                await self.sync()
                synced = True
                if self.cache.revision == before:
                    raise
                continue
            except BaseException:
                self._drop(txn.reservations)
                raise
            if not txn.ops:
                self._drop(txn.reservations)
                return result, self.cache.revision
            txn.ops.append(op_put(self.rev_key, b""))
            try:
                res = await self.etcd.txn(txn.compares, txn.ops, [op_get(self.rev_key)])
            except BaseException:
                self._drop(txn.reservations)
                raise
            if res.succeeded:
                self._release_after(res.revision, txn.reservations)
                # Read-your-writes: responses (and the caller's next request) are built
                # from the cache, so let the watch deliver this change first.
                try:
                    await self.wait_for(res.revision)
                except Unavailable:
                    log.warning("cache did not catch up with revision %d", res.revision)
                return result, res.revision
            self._drop(txn.reservations)
            # Catch up to the change that made a compare fail, then rebuild. With no
            # _rev key no transaction ever committed here, so there is nothing to wait for.
            failed = res.responses[0] if res.responses else None
            kvs = getattr(failed, "kvs", None)
            if kvs:
                await self.wait_for(kvs[0].mod_revision)
        raise Aborted(
            "the request kept conflicting with concurrent changes; retry it",
            reason="ConcurrentModification",
        )

    def _drop(self, keys: list[Hashable]) -> None:
        for k in keys:
            self.reserved.pop(k, None)

    def _release_after(self, revision: int, keys: list[Hashable]) -> None:
        """Keep reservations until the cache shows the committed resource holding them."""
        if not keys:
            return
        if self.cache.revision >= revision:
            self._drop(keys)
            return
        self._release_seq += 1
        heapq.heappush(self._release_heap, (revision, self._release_seq, keys))


def chunked(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
