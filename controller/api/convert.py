"""Protobuf messages <-> Neutron-named attribute dicts and domain objects.

Create requests carry only the fields the caller set (proto3 presence), which is
what gives Neutron's "omitted means default" semantics; updates carry exactly the
fields named in the update mask.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from controller.errors import InvalidArgument
from controller.model import Resource

# Message types that the domain sees as something simpler.
_PAIR_TYPES = {
    "baryon.v1.AllocationPool": ("start", "end"),
    "baryon.v1.HostRoute": ("destination", "nexthop"),
    "baryon.v1.AllowedAddressPair": ("ip_address", "mac_address"),
    "baryon.v1.FixedIP": ("subnet_id", "ip_address"),
    "baryon.v1.Route": ("destination", "nexthop"),
    "baryon.v1.ExternalFixedIP": ("subnet_id", "ip_address"),
}
# Message types the domain sees as a dict of their set fields ({} when unset).
_DICT_TYPES = frozenset({"baryon.v1.ExternalGatewayInfo"})
_LIST_WRAPPERS = {
    "baryon.v1.FixedIPList": "ips",
    "baryon.v1.SecurityGroupIdList": "ids",
}
_TIMESTAMPS = ("created_at", "updated_at")


def _to_domain(fd: Any, value: Any) -> Any:
    if fd.message_type is None:
        return list(value) if _is_repeated(fd) else value
    name = fd.message_type.full_name
    if fd.message_type.GetOptions().map_entry:
        return dict(value)
    if name in _PAIR_TYPES:
        a, b = _PAIR_TYPES[name]
        if _is_repeated(fd):
            return [(getattr(v, a), getattr(v, b)) for v in value]
        return (getattr(value, a), getattr(value, b))
    if name in _DICT_TYPES:
        return {f.name: _to_domain(f, v) for f, v in value.ListFields()}
    if name in _LIST_WRAPPERS:
        inner = getattr(value, _LIST_WRAPPERS[name])
        return _to_domain(value.DESCRIPTOR.fields_by_name[_LIST_WRAPPERS[name]], inner)
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", fd.containing_type.name).lower()
    raise InvalidArgument(f"{fd.name} cannot be set", field=f"{kind}.{fd.name}")


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


def create_attrs(msg: Message) -> dict[str, Any]:
    """The fields the caller gave, as domain values."""
    return {fd.name: _to_domain(fd, value) for fd, value in msg.ListFields()}


def update_attrs(msg: Message, mask: FieldMask, kind: str) -> dict[str, Any]:
    """The fields named by the mask (all set fields but id when it is empty)."""
    if not mask.paths:
        return {k: v for k, v in create_attrs(msg).items() if k != "id"}
    fields = msg.DESCRIPTOR.fields_by_name
    out: dict[str, Any] = {}
    for path in mask.paths:
        fd = fields.get(path)
        if fd is None:
            raise InvalidArgument(
                f"update_mask names {path!r}, which is not a {kind} field",
                field="update_mask",
            )
        out[path] = _to_domain(fd, getattr(msg, path))
    return out


# How to_proto sets each field: a plain scalar (set as is unless None), a repeated
# scalar (extended unless None), or anything else through _set.
_GENERIC, _PLAIN, _PLAIN_LIST = 0, 1, 2
# (domain class, message class) -> [(field name, descriptor, how)] of the fields both
# have, in dataclass order: every response is built with it (100 per list page).
_PLANS: dict[tuple[type, type], list[tuple[str, Any, int]]] = {}


def _plan(kind: type, cls: type[Message]) -> list[tuple[str, Any, int]]:
    fields = cls.DESCRIPTOR.fields_by_name
    plan = []
    for f in dataclasses.fields(kind):
        fd = fields.get(f.name)
        if fd is None:
            continue
        how = _GENERIC
        # Exactly the scalar cases of _set that need no check beyond None.
        if f.name not in _TIMESTAMPS and fd.message_type is None:
            if _is_repeated(fd):
                how = _PLAIN_LIST
            elif not (fd.has_presence and f.name.startswith("provider_")):
                how = _PLAIN
        plan.append((f.name, fd, how))
    return plan


def to_proto(obj: Resource, cls: type[Message], **extra: Any) -> Message:
    """A domain object as its API message; `extra` fills derived read-only fields."""
    msg = cls()
    key = (type(obj), cls)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(type(obj), cls)
    for name, fd, how in plan:
        value = getattr(obj, name)
        if how == _PLAIN:
            if value is not None:
                setattr(msg, name, value)
        elif how == _PLAIN_LIST:
            if value is not None:
                getattr(msg, name).extend(value)
        else:
            _set(msg, fd, value)
    if extra:
        fields = cls.DESCRIPTOR.fields_by_name
        for name, value in extra.items():
            _set(msg, fields[name], value)
    return msg


def _set(msg: Message, fd: Any, value: Any) -> None:
    # to_proto's _plan short-cuts the plain scalar cases below: keep the two in step.
    name = fd.name
    if name in _TIMESTAMPS:
        getattr(msg, name).FromNanoseconds(int(value * 1e9))
        return
    if fd.message_type is None:
        if value is None:
            return
        if _is_repeated(fd):
            getattr(msg, name).extend(value)
        elif fd.has_presence and value in ("", 0) and name.startswith("provider_"):
            return  # the network type has no such attribute
        else:
            setattr(msg, name, value)
        return
    full = fd.message_type.full_name
    if fd.message_type.GetOptions().map_entry:
        getattr(msg, name).update(value)
    elif full in _PAIR_TYPES:
        a, b = _PAIR_TYPES[full]
        target = getattr(msg, name)
        for pair in value:
            target.add(**{a: pair[0], b: pair[1]})
    elif full in _LIST_WRAPPERS:
        wrapper = getattr(msg, name)
        inner_fd = wrapper.DESCRIPTOR.fields_by_name[_LIST_WRAPPERS[full]]
        wrapper.SetInParent()
        _set(wrapper, inner_fd, value)
    elif _is_repeated(fd):
        getattr(msg, name).extend(value)
    else:
        getattr(msg, name).CopyFrom(value)


def list_filters(request: Message, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Plain equality filters: every set field except paging, tags and `skip`."""
    out: dict[str, Any] = {}
    for fd, value in request.ListFields():
        if fd.name in ("page_size", "page_token", "tags", "tags_any") or fd.name in skip:
            continue
        out[fd.name] = value
    return out


Converter = Callable[[Any], Message]
