"""Shared pieces of every resource service: visibility, common attributes, lists, quotas."""

from __future__ import annotations

import base64
import heapq
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from controller.auth import Context
from controller.config import Config
from controller.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from controller.ipam import PoolAllocator
from controller.model import R, Resource
from controller.store import Cache, Store, Txn

MAX_NAME_LEN = 255
MAX_TAG_LEN = 60
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
COMMON_WRITABLE = frozenset({"name", "description", "tags"})
READ_ONLY_COMMON = frozenset({"id", "revision_number", "created_at", "updated_at", "project_id"})
_by_id = attrgetter("id")


@dataclass
class ListQuery:
    page_size: int = 0
    page_token: str = ""
    equals: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    tags_any: list[str] = field(default_factory=list)
    # extra predicates for filters that are not a plain attribute comparison
    predicates: list[Callable[[Any], bool]] = field(default_factory=list)


class Service:
    def __init__(self, store: Store, cfg: Config) -> None:
        self.store = store
        self.cfg = cfg

    @property
    def cache(self) -> Cache:
        return self.store.cache

    # -- visibility
    def visible(self, ctx: Context, obj: Resource) -> bool:
        return ctx.is_admin or obj.project_id == ctx.project_id

    def find(
        self,
        ctx: Context,
        cls: type[R],
        id_: str,
        field_name: str = "id",
        visible: Callable[[Context, Any], bool] | None = None,
    ) -> R:
        """The resource if it exists and the caller may see it; NOT_FOUND otherwise."""
        if not id_:
            raise InvalidArgument(f"{field_name} is required", field=field_name)
        obj = self.cache.get(cls, id_)
        if obj is None or not (visible or self.visible)(ctx, obj):
            raise NotFound(
                f"{cls.KIND.replace('_', ' ').capitalize()} {id_} could not be found",
                reason=f"{_camel(cls.KIND)}NotFound",
                resource_id=id_,
            )
        return obj

    # -- common attributes
    def owner_project(self, ctx: Context, attrs: Mapping[str, Any], kind: str) -> str:
        project = attrs.get("project_id") or ctx.project_id
        if project != ctx.project_id and not ctx.is_admin:
            raise PermissionDenied(
                f"creating a {kind} for another project is restricted to admins",
                reason="PolicyNotAuthorized",
            )
        return str(project)

    def common(self, ctx: Context, attrs: Mapping[str, Any], kind: str) -> dict[str, Any]:
        now = time.time()
        validate_common(attrs, kind)
        return {
            "id": str(uuid.uuid4()),
            "project_id": self.owner_project(ctx, attrs, kind),
            "name": attrs.get("name", ""),
            "description": attrs.get("description", ""),
            "tags": dedupe(attrs.get("tags", [])),
            "revision_number": 1,
            "created_at": now,
            "updated_at": now,
        }

    def quota_slot(self, txn: Txn, project_id: str, kind: str, *, enforce: bool = True) -> int:
        """A free quota slot for one more `kind` in the project (-1 when unlimited).

        Each counted resource holds a unique index key q/<project>/<kind>/<slot> with
        slot < limit, taken like an IP address, so concurrent creates on any number of
        controllers can never exceed the quota. Resources the system creates on the
        project's behalf (its default group and rules) pass `enforce=False`: like in
        Neutron they count while there is room, and are never refused.
        """
        limit = self.cfg.quota(project_id, kind)
        if limit < 0:
            return -1
        cache = self.cache
        reserved = self.store.reserved

        def taken(n: int) -> bool:
            key = (kind, project_id, n)
            return cache.has("quota_slot", key) or ("quota_slot", *key) in reserved

        slot = PoolAllocator([(0, limit - 1)]).pick(taken, self.store.rng) if limit else None
        if slot is None:
            if not enforce:
                return -1
            used = cache.count(kind, project_id)
            raise ResourceExhausted(
                f"Quota exceeded for resources: ['{kind}'] (limit {limit}, in use {used})",
                reason="OverQuota",
                resource=kind,
            )
        txn.reserve(("quota_slot", kind, project_id, slot))
        return slot

    # -- lists
    def page(self, ctx: Context, objs: Iterable[R], q: ListQuery) -> tuple[list[R], str]:
        if q.page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        size = min(q.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(q.page_token)
        equals = [(k, v) for k, v in q.equals.items() if v not in ("", None)]
        tags, tags_any = set(q.tags), set(q.tags_any)
        visible, predicates = self.visible, q.predicates
        matches: list[R] = []
        # Hot with thousands of objects: plain loops, no generator per object.
        for obj in objs:
            if after and obj.id <= after:
                continue
            if not visible(ctx, obj):
                continue
            for k, v in equals:
                if getattr(obj, k) != v:
                    break
            else:
                if tags and not tags.issubset(obj.tags):
                    continue
                if tags_any and tags_any.isdisjoint(obj.tags):
                    continue
                for p in predicates:
                    if not p(obj):
                        break
                else:
                    matches.append(obj)
        # Only the page and whether more follow matter: the size + 1 smallest ids
        # (heapq.nsmallest equals sorted(...)[: size + 1], without sorting everything).
        first = heapq.nsmallest(size + 1, matches, key=_by_id)
        page = first[:size]
        token = encode_page_token(page[-1].id) if len(first) > size else ""
        return page, token


def network_visible(ctx: Context, net: Any) -> bool:
    # Neutron's get_network policy: owner, shared, or router:external (everyone may
    # see external networks to pick a gateway or floating IP pool).
    return bool(ctx.is_admin or net.project_id == ctx.project_id or net.shared or net.external)


def bump(old: R, changes: Mapping[str, Any]) -> R:
    import dataclasses

    return dataclasses.replace(
        old, **changes, revision_number=old.revision_number + 1, updated_at=time.time()
    )


def check_revision(obj: Resource, if_revision: int) -> None:
    from controller.errors import Aborted

    if if_revision and obj.revision_number != if_revision:
        raise Aborted(
            f"{obj.KIND} {obj.id} is at revision {obj.revision_number}, not {if_revision}",
            reason="RevisionNumberConstraintFailed",
        )


def check_update_fields(attrs: Mapping[str, Any], writable: Iterable[str], kind: str) -> None:
    allowed = set(writable) | COMMON_WRITABLE
    for name in attrs:
        if name not in allowed:
            raise InvalidArgument(
                f"Cannot update read-only attribute {name}", field=f"{kind}.{name}"
            )
    validate_common(attrs, kind)


def validate_common(attrs: Mapping[str, Any], kind: str) -> None:
    for name in ("name", "description"):
        value = attrs.get(name)
        if value is not None and len(value) > MAX_NAME_LEN:
            raise InvalidArgument(
                f"'{value[:20]}...' exceeds maximum length of {MAX_NAME_LEN}",
                field=f"{kind}.{name}",
            )
    for i, tag in enumerate(attrs.get("tags") or ()):
        if not tag or len(tag) > MAX_TAG_LEN or "," in tag:
            raise InvalidArgument(
                f"invalid tag {tag!r}: 1 to {MAX_TAG_LEN} characters, no commas",
                reason="InvalidTag",
                field=f"{kind}.tags[{i}]",
            )


def reject_unknown(attrs: Mapping[str, Any], allowed: Iterable[str], kind: str) -> None:
    ok = set(allowed) | COMMON_WRITABLE | {"project_id"}
    for name in attrs:
        if name not in ok:
            raise InvalidArgument(
                f"Attribute '{name}' is read-only or unknown", field=f"{kind}.{name}"
            )


def dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def encode_page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except Exception:
        raise InvalidArgument("invalid page_token", field="page_token") from None


def _camel(kind: str) -> str:
    return "".join(p.capitalize() for p in kind.split("_"))
