"""Output of resources as tables, JSON or bare values.

``show`` prints a Field|Value table of every field of the message (proto field names,
so ``-c`` takes them); ``list`` prints one row per message with the resource's columns
(``-c`` takes the header or the field name). ``-f json`` prints ``MessageToDict`` of the
messages; ``-f value`` prints bare values, one per line for ``show`` and one row per line
for ``list``.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TextIO, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cli.client import UsageError

FORMATS = ("table", "json", "value")

# Inline renderings of nested messages keyed by full message name; resource modules
# register their own (an allocation pool as "start-end", for instance).
INLINE: dict[str, Callable[[Message], str]] = {}

# Renderings of scalar fields keyed by field name.
FIELD_FORMATS: dict[str, Callable[[Any], str]] = {
    "admin_state_up": lambda up: "UP" if up else "DOWN",
}


def descriptor(msg: Message | type[Message]) -> Descriptor:
    """The message's descriptor (the stubs type it as a union with upb's class)."""
    return cast(Descriptor, msg.DESCRIPTOR)


def message_to_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def format_timestamp(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _list_wrapper(desc: Descriptor) -> FieldDescriptor | None:
    """The repeated field of a FixedIPList-style wrapper (a message with only that field)."""
    if len(desc.fields) == 1 and desc.fields[0].is_repeated and not _is_map(desc.fields[0]):
        return desc.fields[0]
    return None


def format_message(msg: Message) -> str:
    if isinstance(msg, Timestamp):
        return format_timestamp(msg)
    name = msg.DESCRIPTOR.full_name
    if name in INLINE:
        return INLINE[name](msg)
    wrapped = _list_wrapper(descriptor(msg))
    if wrapped is not None:
        return format_field(msg, wrapped)
    return ", ".join(
        f"{fd.name}='{' '.join(format_field(msg, fd).splitlines())}'" for fd, _ in msg.ListFields()
    )


def _format_one(fd: FieldDescriptor, value: Any) -> str:
    if isinstance(value, Message):
        return format_message(value)
    if fd.name in FIELD_FORMATS:
        return FIELD_FORMATS[fd.name](value)
    return str(value)


def format_field(msg: Message, fd: FieldDescriptor) -> str:
    """A field as display text; repeated values go one per line."""
    value = getattr(msg, fd.name)
    if _is_map(fd):
        return ", ".join(f"{k}='{v}'" for k, v in sorted(value.items()))
    if fd.is_repeated:
        return "\n".join(_format_one(fd, item) for item in value)
    if fd.has_presence and not msg.HasField(fd.name):
        return ""
    return _format_one(fd, value)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An ASCII table in the openstack client's style; cells may span several lines."""
    cells = [[cell.split("\n") for cell in row] for row in rows]
    widths = [
        max([_width(h)] + [_width(line) for row in cells for line in row[i]])
        for i, h in enumerate(headers)
    ]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(parts: Sequence[str]) -> str:
        padded = (p + " " * (w - _width(p)) for p, w in zip(parts, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    out = [rule, line(headers), rule]
    for row in cells:
        for i in range(max((len(cell) for cell in row), default=1)):
            out.append(line([cell[i] if i < len(cell) else "" for cell in row]))
    out.append(rule)
    return "\n".join(out)


@dataclass(frozen=True)
class Column:
    """A list column: its header, the field it shows (for -c and -f json), how to render."""

    header: str
    field: str
    render: Callable[[Message], str] | None = None

    def cell(self, msg: Message) -> str:
        if self.render is not None:
            return self.render(msg)
        return format_field(msg, descriptor(msg).fields_by_name[self.field])


# The first columns of every named resource's list.
ID_NAME = (Column("ID", "id"), Column("Name", "name"))


def _flat(text: str) -> str:
    return " ".join(text.splitlines())


@dataclass
class Output:
    fmt: str = "table"
    # -c selections, in the order given.
    columns: Sequence[str] = ()
    stream: TextIO = field(default_factory=lambda: sys.stdout)

    def _select(self, aliases: Sequence[Sequence[str]]) -> list[int]:
        if not self.columns:
            return list(range(len(aliases)))
        chosen: list[int] = []
        for wanted in self.columns:
            key = wanted.casefold()
            hits = [i for i, names in enumerate(aliases) if key in (n.casefold() for n in names)]
            if not hits:
                known = ", ".join(names[0] for names in aliases)
                raise UsageError(f"unknown column {wanted!r}; known columns: {known}")
            chosen.extend(i for i in hits if i not in chosen)
        return chosen

    def _show_fields(self, desc: Descriptor) -> list[FieldDescriptor]:
        fields = list(desc.fields)
        return [fields[i] for i in self._select([(fd.name,) for fd in fields])]

    def _list_columns(self, columns: Sequence[Column]) -> list[Column]:
        return [columns[i] for i in self._select([(c.header, c.field) for c in columns])]

    def check_show(self, desc: Descriptor) -> None:
        """Reject bad -c selections before any request is made."""
        self._show_fields(desc)

    def check_list(self, columns: Sequence[Column]) -> None:
        self._list_columns(columns)

    def _emit(self, text: str) -> None:
        if text:
            self.stream.write(text + "\n")

    def _json(self, data: Any) -> None:
        self._emit(json.dumps(data, indent=2, ensure_ascii=False))

    def show(self, msg: Message) -> None:
        fields = self._show_fields(descriptor(msg))
        if self.fmt == "json":
            data = message_to_dict(msg)
            if self.columns:
                data = {fd.name: data[fd.name] for fd in fields if fd.name in data}
            self._json(data)
        elif self.fmt == "value":
            self._emit("\n".join(_flat(format_field(msg, fd)) for fd in fields))
        else:
            rows = [(fd.name, format_field(msg, fd)) for fd in fields]
            self._emit(render_table(("Field", "Value"), rows))

    def list(self, msgs: Sequence[Message], columns: Sequence[Column]) -> None:
        cols = self._list_columns(columns)
        if self.fmt == "json":
            data = [message_to_dict(m) for m in msgs]
            if self.columns:
                keep = [c.field for c in cols]
                data = [{k: d[k] for k in keep if k in d} for d in data]
            self._json(data)
        elif self.fmt == "value":
            self._emit("\n".join(" ".join(_flat(c.cell(m)) for c in cols) for m in msgs))
        elif msgs:
            rows = [[c.cell(m) for c in cols] for m in msgs]
            self._emit(render_table([c.header for c in cols], rows))
