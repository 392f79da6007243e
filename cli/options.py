"""Declarative command-line options and how they map onto proto fields.

Each :class:`Option` knows how to add itself to an argparse parser for a given
:class:`Mode` and how to copy the parsed value onto a message: the resource on
``create``/``set`` (returning the update-mask paths it touched) or the list request on
``list``. Resource modules are lists of these.
"""

from __future__ import annotations

import abc
import argparse
import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.message import Message

if TYPE_CHECKING:
    from cli.resource import Resource


class Mode(enum.Enum):
    CREATE = "create"
    SET = "set"
    LIST = "list"


CREATE = frozenset({Mode.CREATE})
SET = frozenset({Mode.SET})
LIST = frozenset({Mode.LIST})
WRITE = CREATE | SET


class Resolver(Protocol):
    """Finds one resource by ID or unique name (see cli.resource.ApiResolver)."""

    def find(self, resource: Resource, ref: str, project: str = "") -> Message: ...


def value_of(msg: Message, name: str) -> Any:
    return getattr(msg, name)


@dataclass
class BuildContext:
    resolver: Resolver
    mode: Mode
    # The stored resource, on set: list options add to its values.
    current: Message | None = None
    # --project of the command, to disambiguate names.
    project: str = ""
    # Set when a value was derived from `current` (a read-modify-write).
    read_current: bool = field(default=False, init=False)

    def resolve(self, resource: Resource, ref: str) -> str:
        return str(value_of(self.resolver.find(resource, ref, self.project), "id"))


def dest_for(flag: str) -> str:
    """The Namespace attribute an option flag is stored under."""
    return "opt_" + flag.lstrip("-").replace("-", "_")


# ---------------------------------------------------------------------------
# argparse value types


def key_values(*keys: str, required: Collection[str] = ()) -> Callable[[str], dict[str, str]]:
    """A parser for ``key=value[,key=value...]`` with the given keys (``required`` ones a must)."""
    spec = ",".join(f"{k}=..." for k in keys)

    def parse(text: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in keys or not value or key in result:
                raise argparse.ArgumentTypeError(f"expected {spec}, got {text!r}")
            result[key] = value
        missing = [k for k in required if k not in result]
        if missing:
            raise argparse.ArgumentTypeError(f"{', '.join(missing)} missing in {text!r}")
        return result

    return parse


def key_value(text: str) -> tuple[str, str]:
    """``key=value`` (the value may contain '=')."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def csv(text: str) -> list[str]:
    return [item for item in (part.strip() for part in text.split(",")) if item]


def non_negative(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return number


# ---------------------------------------------------------------------------
# Options


class Option(abc.ABC):
    def __init__(self, flag: str, field: str, modes: Collection[Mode], help: str) -> None:
        self.flag = flag
        self.field = field
        self.modes = frozenset(modes)
        self.help = help
        self.dest = dest_for(flag)

    @abc.abstractmethod
    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None: ...

    @abc.abstractmethod
    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        """Copy the parsed value onto target; return the update-mask paths it set."""

    def given(self, ns: argparse.Namespace) -> bool:
        return getattr(ns, self.dest, None) not in (None, [])


class Value(Option):
    """``--flag VALUE`` (or a positional) for one singular field.

    ``ref``: the value names another resource and is replaced by its ID.
    ``convert``: maps the raw value; returning None leaves the field unset.
    """

    def __init__(
        self,
        flag: str,
        field: str,
        modes: Collection[Mode],
        help: str,
        *,
        type: Callable[[str], Any] = str,
        metavar: str | None = None,
        choices: Sequence[Any] | None = None,
        required: bool = False,
        nargs: str | None = None,
        ref: Resource | None = None,
        convert: Callable[[Any, BuildContext], Any] | None = None,
    ) -> None:
        super().__init__(flag, field, modes, help)
        self.positional = not flag.startswith("-")
        self.kwargs: dict[str, Any] = {"type": type, "help": help, "choices": choices}
        if metavar is None and (self.positional or choices is None):
            metavar = flag.lstrip("-").upper().replace("-", "_")
        self.kwargs["metavar"] = metavar
        if nargs is not None:
            self.kwargs["nargs"] = nargs
        if not self.positional:
            self.kwargs.update(dest=self.dest, required=required, default=None)
        self.ref = ref
        self.convert = convert

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        parser.add_argument(self.dest if self.positional else self.flag, **self.kwargs)

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        value = getattr(ns, self.dest, None)
        if value is not None and self.convert is not None:
            value = self.convert(value, ctx)
        if value is None:
            return []
        if self.ref is not None:
            value = ctx.resolve(self.ref, value)
        setattr(target, self.field, value)
        return [self.field]


class Switch(Option):
    """Mutually exclusive flags each storing a constant, e.g. ``--share``/``--no-share``."""

    def __init__(
        self,
        field: str,
        choices: Mapping[str, tuple[Any, str]],
        modes: Collection[Mode],
        *,
        create_default: Any = None,
    ) -> None:
        first = next(iter(choices))
        super().__init__(first, field, modes, choices[first][1])
        self.dest = "opt_" + field
        self.choices = choices
        self.create_default = create_default

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        group = parser.add_mutually_exclusive_group()
        for flag, (const, help) in self.choices.items():
            group.add_argument(
                flag, dest=self.dest, action="store_const", const=const, default=None, help=help
            )

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        value = getattr(ns, self.dest, None)
        if value is None and ctx.mode is Mode.CREATE:
            value = self.create_default
        if value is None:
            return []
        setattr(target, self.field, value)
        return [self.field]


def toggle(
    field: str, on: str, off: str, on_help: str, off_help: str, modes: Collection[Mode] = WRITE
) -> Switch:
    return Switch(field, {on: (True, on_help), off: (False, off_help)}, modes)


class MultiValue(Option):
    """A repeatable option for a list or map field, with an optional ``--no-...`` flag.

    On create the given values are the field. On set they are added to the stored
    values, unless the clear flag is given too, in which case they replace them
    (the openstack client's ``--tag``/``--no-tag`` semantics).
    """

    def __init__(
        self,
        flag: str,
        field: str,
        modes: Collection[Mode],
        help: str,
        *,
        type: Callable[[str], Any] = str,
        metavar: str | None = None,
        clear: tuple[str, str] | None = None,
        clear_modes: Collection[Mode] = SET,
    ) -> None:
        super().__init__(flag, field, modes, help)
        self.type = type
        self.metavar = metavar
        self.clear = clear
        self.clear_modes = frozenset(clear_modes)

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        parser.add_argument(
            self.flag,
            dest=self.dest,
            action="append",
            type=self.type,
            metavar=self.metavar,
            default=None,
            help=self.help,
        )
        if self.clear is not None and mode in self.clear_modes:
            flag, help = self.clear
            parser.add_argument(flag, dest=self.dest + "_clear", action="store_true", help=help)

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        given: list[Any] = getattr(ns, self.dest, None) or []
        cleared: bool = getattr(ns, self.dest + "_clear", False)
        if not given and not cleared:
            return []
        items = [self.build(raw, ctx) for raw in given]
        if ctx.mode is Mode.SET and not cleared and ctx.current is not None:
            ctx.read_current = True
            items = self.merge(self.read(ctx.current), items)
        self.write(target, items)
        return [self.field]

    def given(self, ns: argparse.Namespace) -> bool:
        return super().given(ns) or bool(getattr(ns, self.dest + "_clear", False))

    def build(self, raw: Any, ctx: BuildContext) -> Any:
        return raw

    @abc.abstractmethod
    def read(self, msg: Message) -> list[Any]: ...

    @abc.abstractmethod
    def merge(self, stored: list[Any], given: list[Any]) -> list[Any]: ...

    @abc.abstractmethod
    def write(self, target: Message, items: list[Any]) -> None: ...


def _unique(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


class Repeated(MultiValue):
    """A repeated field, or the list inside a wrapper message (``wrapper``: its field name).

    A wrapper is set (present, possibly empty) only when the option or its clear flag
    is given, so "omitted" stays distinguishable from "empty".
    """

    def __init__(
        self,
        flag: str,
        field: str,
        modes: Collection[Mode],
        help: str,
        *,
        build: Callable[[Any, BuildContext], Any] | None = None,
        wrapper: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(flag, field, modes, help, **kwargs)
        self._build = build
        self.wrapper = wrapper

    def build(self, raw: Any, ctx: BuildContext) -> Any:
        return raw if self._build is None else self._build(raw, ctx)

    def _container(self, msg: Message) -> Any:
        value = value_of(msg, self.field)
        return value if self.wrapper is None else value_of(value, self.wrapper)

    def read(self, msg: Message) -> list[Any]:
        return list(self._container(msg))

    def merge(self, stored: list[Any], given: list[Any]) -> list[Any]:
        return _unique([*stored, *given])

    def write(self, target: Message, items: list[Any]) -> None:
        if self.wrapper is not None:
            value_of(target, self.field).SetInParent()
        container = self._container(target)
        del container[:]
        container.extend(_unique(items))


class KeyValueMap(MultiValue):
    """A ``map<string, string>`` field from repeated ``--flag key=value``."""

    def __init__(self, flag: str, field: str, modes: Collection[Mode], help: str, **kw: Any):
        super().__init__(flag, field, modes, help, type=key_value, metavar="KEY=VALUE", **kw)

    def read(self, msg: Message) -> list[Any]:
        return list(value_of(msg, self.field).items())

    def merge(self, stored: list[Any], given: list[Any]) -> list[Any]:
        return list({**dict(stored), **dict(given)}.items())

    def write(self, target: Message, items: list[Any]) -> None:
        container = value_of(target, self.field)
        container.clear()
        container.update(dict(items))


class CsvFilter(Option):
    """``--tags a,b``: a comma-separated list for a repeated list-request field."""

    def __init__(self, flag: str, field: str, help: str) -> None:
        super().__init__(flag, field, LIST, help)

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        parser.add_argument(
            self.flag, dest=self.dest, type=csv, metavar="TAG[,TAG...]", help=self.help
        )

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        values: list[str] | None = getattr(ns, self.dest, None)
        if not values:
            return []
        value_of(target, self.field).extend(values)
        return [self.field]


# ---------------------------------------------------------------------------
# Options most resources share


def attribute(
    flag: str,
    field: str,
    write_help: str,
    list_help: str,
    write_modes: Collection[Mode] = WRITE,
    **kwargs: Any,
) -> list[Option]:
    """An attribute that can be set (``write_modes``) and filtered on by ``list``."""
    return [
        Value(flag, field, write_modes, write_help, **kwargs),
        Value(flag, field, LIST, list_help, **kwargs),
    ]


def named(kind: str, *, project: bool = True, description: bool = True) -> list[Option]:
    """NAME, --name, --description, --project, --tag/--no-tag and the matching list filters."""
    options: list[Option] = [
        Value("name", "name", CREATE, f"name of the new {kind}"),
        *attribute("--name", "name", f"new name of the {kind}", f"only {kind}s so named", SET),
    ]
    if description:
        options.append(Value("--description", "description", WRITE, f"{kind} description"))
    if project:
        options += attribute(
            "--project",
            "project_id",
            "owner project (admin only; default: the token's project)",
            f"only {kind}s of this project",
            CREATE,
            metavar="PROJECT",
        )
    options += [
        Repeated(
            "--tag",
            "tags",
            WRITE,
            f"tag for the {kind} (repeatable; on set, added to the existing tags)",
            metavar="TAG",
            clear=("--no-tag", "clear the tags; with --tag, replace them"),
        ),
        CsvFilter("--tags", "tags", f"only {kind}s carrying all of these tags"),
        CsvFilter("--any-tags", "tags_any", f"only {kind}s carrying any of these tags"),
    ]
    return options


def admin_state(kind: str) -> Switch:
    return toggle(
        "admin_state_up",
        "--enable",
        "--disable",
        f"enable the {kind} (default)",
        f"disable the {kind}",
    )


def port_security(kind: str) -> Switch:
    return toggle(
        "port_security_enabled",
        "--enable-port-security",
        "--disable-port-security",
        f"enable port security on the {kind}",
        f"disable port security on the {kind}",
    )
