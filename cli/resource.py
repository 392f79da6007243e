"""The generic create/list/show/set/delete layer.

A :class:`Resource` declares its message, its service, its options and its list
columns; RPC and request names are derived from the message name by the API's
naming rules (``CreateNetwork(CreateNetworkRequest{network})``, ``ListNetworks`` ->
``ListNetworksResponse.networks``, ...). The command classes turn a parsed command
line into a request (``build``, no channel needed) and run it (``run``).
"""

from __future__ import annotations

import abc
import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from cli.client import ApiError, CliError, Transport, UsageError
from cli.options import BuildContext, Mode, Option, Resolver, dest_for, value_of
from cli.output import Column, Output, descriptor

UUID_RE = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)
PAGE_SIZE = 1000


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True, eq=False)
class Resource:
    # Command words, e.g. ("security", "group", "rule").
    path: tuple[str, ...]
    message: type[Message]
    service: ServiceDescriptor
    options: Sequence[Option]
    columns: Sequence[Column]
    long_columns: Sequence[Column] = ()
    # How a reference to one is shown in usage, e.g. NETWORK.
    metavar: str = "ID"
    # Whether it has a name to look it up by (rules do not).
    named: bool = True
    # Checks run on the parsed command line before any request is made.
    check: Callable[[argparse.Namespace, Mode], None] | None = None
    # Adjusts the built message after the options were applied (create and set only).
    finish: Callable[[argparse.Namespace, Message, BuildContext], None] | None = None

    @property
    def title(self) -> str:
        return " ".join(self.path)

    @property
    def field(self) -> str:
        """The request field holding the resource, e.g. security_group_rule."""
        return snake_case(self.message.DESCRIPTOR.name)

    def method(self, verb: str) -> MethodDescriptor | None:
        suffix = "s" if verb == "List" else ""
        return self.service.methods_by_name.get(f"{verb}{self.message.DESCRIPTOR.name}{suffix}")

    def rpc(self, verb: str) -> MethodDescriptor:
        method = self.method(verb)
        if method is None:
            raise LookupError(f"{self.service.full_name} has no {verb} method for {self.title}")
        return method

    def request(self, verb: str, **fields: Any) -> Message:
        return message_factory.GetMessageClass(self.rpc(verb).input_type)(**fields)

    @property
    def list_field(self) -> str:
        response = self.rpc("List").output_type
        for fd in response.fields:
            if fd.is_repeated and fd.message_type is self.message.DESCRIPTOR:
                return fd.name
        raise LookupError(f"{response.full_name} has no list of {self.title}s")

    def options_for(self, mode: Mode) -> list[Option]:
        return [opt for opt in self.options if mode in opt.modes]


class LookupFailed(CliError):
    """A name or ID that matched nothing, or a name that matched several."""


def list_all(transport: Transport, resource: Resource, request: Message) -> list[Message]:
    """Every page of a List call."""
    items: list[Message] = []
    page = type(request)()
    page.CopyFrom(request)
    if not value_of(page, "page_size"):
        setattr(page, "page_size", PAGE_SIZE)  # noqa: B010
    seen: set[str] = set()
    while True:
        response = transport.call(resource.rpc("List"), page)
        items.extend(value_of(response, resource.list_field))
        token = str(value_of(response, "next_page_token"))
        if not token or token in seen:
            return items
        seen.add(token)
        setattr(page, "page_token", token)  # noqa: B010


class ApiResolver:
    """Resolves an ID or a unique name, as visible to the token.

    A UUID-shaped reference is tried as an ID first; otherwise (or if that finds
    nothing) the resource is listed with the name filter. Several matches are an
    error, unless exactly one of them belongs to the command's --project.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._cache: dict[tuple[int, str, str], Message] = {}

    def find(self, resource: Resource, ref: str, project: str = "") -> Message:
        key = (id(resource), ref, project)
        if key not in self._cache:
            self._cache[key] = self._find(resource, ref, project)
        return self._cache[key]

    def _get(self, resource: Resource, ref: str) -> Message | None:
        try:
            return self.transport.call(resource.rpc("Get"), resource.request("Get", id=ref))
        except ApiError as err:
            if err.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise

    def _find(self, resource: Resource, ref: str, project: str) -> Message:
        if not ref:
            raise LookupFailed(f"empty {resource.title} name or ID")
        by_id_first = not resource.named or bool(UUID_RE.match(ref))
        if by_id_first:
            found = self._get(resource, ref)
            if found is not None:
                return found
            if not resource.named:
                raise LookupFailed(f'no {resource.title} with ID "{ref}" was found')
        request = resource.request("List", name=ref)
        matches = [
            m for m in list_all(self.transport, resource, request) if value_of(m, "name") == ref
        ]
        if len(matches) > 1 and project:
            mine = [m for m in matches if value_of(m, "project_id") == project]
            matches = mine or matches
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(str(value_of(m, "id")) for m in matches)
            raise LookupFailed(
                f'more than one {resource.title} is named "{ref}" ({ids}); give an ID instead'
            )
        if not by_id_first:
            found = self._get(resource, ref)
            if found is not None:
                return found
        raise LookupFailed(f'no {resource.title} named "{ref}" or with that ID was found')


@dataclass
class Invocation:
    """What a command runs with."""

    ns: argparse.Namespace
    transport: Transport
    resolver: Resolver
    output: Output
    stderr: TextIO


# ---------------------------------------------------------------------------
# Commands


class Command(abc.ABC):
    verb: ClassVar[str]
    summary: ClassVar[str]
    mode: ClassVar[Mode | None] = None

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    @property
    def help(self) -> str:
        return self.summary.format(title=self.resource.title)

    def configure(self, parser: argparse.ArgumentParser) -> None:
        if self.mode is not None:
            for opt in self.resource.options_for(self.mode):
                opt.add(parser, self.mode)

    def add_ref(self, parser: argparse.ArgumentParser, many: bool = False) -> None:
        how = "name or ID" if self.resource.named else "ID"
        parser.add_argument(
            "refs" if many else "ref",
            metavar=self.resource.metavar,
            nargs="+" if many else None,
            help=f"{self.resource.title} to {self.verb} ({how})",
        )

    def add_if_revision(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--if-revision",
            type=int,
            metavar="N",
            default=0,
            help="fail unless the stored revision_number is N (compare-and-set)",
        )

    def context(
        self, ns: argparse.Namespace, resolver: Resolver, current: Message | None = None
    ) -> BuildContext:
        assert self.mode is not None
        project = getattr(ns, dest_for("--project"), None) or ""
        return BuildContext(resolver, self.mode, current=current, project=project)

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        """Apply every option of the mode to target; return the touched paths, in order."""
        if self.resource.check is not None:
            self.resource.check(ns, ctx.mode)
        paths: list[str] = []
        for opt in self.resource.options_for(ctx.mode):
            paths += [p for p in opt.apply(ns, target, ctx) if p not in paths]
        if self.resource.finish is not None and ctx.mode is not Mode.LIST:
            self.resource.finish(ns, target, ctx)
        return paths

    def given(self, ns: argparse.Namespace) -> bool:
        assert self.mode is not None
        return any(opt.given(ns) for opt in self.resource.options_for(self.mode))

    @abc.abstractmethod
    def run(self, inv: Invocation) -> int: ...


class CreateCommand(Command):
    verb = "create"
    summary = "create a {title}"
    mode = Mode.CREATE

    def build(self, ns: argparse.Namespace, resolver: Resolver) -> Message:
        msg = self.resource.message()
        self.apply(ns, msg, self.context(ns, resolver))
        return self.resource.request("Create", **{self.resource.field: msg})

    def run(self, inv: Invocation) -> int:
        inv.output.check_show(descriptor(self.resource.message))
        request = self.build(inv.ns, inv.resolver)
        inv.output.show(inv.transport.call(self.resource.rpc("Create"), request))
        return 0


class ShowCommand(Command):
    verb = "show"
    summary = "show a {title}"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.add_ref(parser)

    def run(self, inv: Invocation) -> int:
        inv.output.check_show(descriptor(self.resource.message))
        inv.output.show(inv.resolver.find(self.resource, inv.ns.ref))
        return 0


class ListCommand(Command):
    verb = "list"
    summary = "list {title}s"
    mode = Mode.LIST

    def configure(self, parser: argparse.ArgumentParser) -> None:
        super().configure(parser)
        if self.resource.long_columns:
            parser.add_argument("--long", action="store_true", help="show more columns")

    def build(self, ns: argparse.Namespace, resolver: Resolver) -> Message:
        request = self.resource.request("List")
        self.apply(ns, request, self.context(ns, resolver))
        return request

    def columns(self, ns: argparse.Namespace, output: Output) -> list[Column]:
        columns = list(self.resource.columns)
        # -c may pick a --long column without --long.
        if getattr(ns, "long", False) or output.columns:
            columns += self.resource.long_columns
        return columns

    def run(self, inv: Invocation) -> int:
        columns = self.columns(inv.ns, inv.output)
        inv.output.check_list(columns)
        request = self.build(inv.ns, inv.resolver)
        inv.output.list(list_all(inv.transport, self.resource, request), columns)
        return 0


class SetCommand(Command):
    verb = "set"
    summary = "change a {title}"
    mode = Mode.SET

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.add_ref(parser)
        super().configure(parser)
        self.add_if_revision(parser)

    def build(self, ns: argparse.Namespace, current: Message, resolver: Resolver) -> Message:
        """An Update request whose mask names exactly the given options' fields.

        List options add to the stored values (read from ``current``); the request is
        then conditional on the revision they were read at, unless --if-revision says
        otherwise.
        """
        ctx = self.context(ns, resolver, current)
        msg = self.resource.message(id=value_of(current, "id"))
        paths = self.apply(ns, msg, ctx)
        if not paths:
            raise UsageError(f"nothing to change; see baryon {self.resource.title} set --help")
        if_revision = ns.if_revision or (
            value_of(current, "revision_number") if ctx.read_current else 0
        )
        return self.resource.request(
            "Update",
            **{self.resource.field: msg},
            update_mask=FieldMask(paths=paths),
            if_revision=if_revision,
        )

    def run(self, inv: Invocation) -> int:
        if not self.given(inv.ns):
            raise UsageError(f"nothing to change; see baryon {self.resource.title} set --help")
        current = inv.resolver.find(self.resource, inv.ns.ref)
        request = self.build(inv.ns, current, inv.resolver)
        inv.transport.call(self.resource.rpc("Update"), request)
        return 0


class DeleteCommand(Command):
    verb = "delete"
    summary = "delete {title}s"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.add_ref(parser, many=True)
        self.add_if_revision(parser)

    def build(self, ns: argparse.Namespace, resource_id: str) -> Message:
        return self.resource.request("Delete", id=resource_id, if_revision=ns.if_revision)

    def run(self, inv: Invocation) -> int:
        refs: list[str] = inv.ns.refs
        if inv.ns.if_revision and len(refs) > 1:
            raise UsageError("--if-revision applies to a single resource")
        failed = 0
        for ref in refs:
            try:
                found = inv.resolver.find(self.resource, ref)
                request = self.build(inv.ns, str(value_of(found, "id")))
                inv.transport.call(self.resource.rpc("Delete"), request)
            except (ApiError, LookupFailed) as err:
                if len(refs) == 1:
                    raise
                failed += 1
                print(f"Error: {ref}: {err}", file=inv.stderr)
        if failed:
            raise CliError(f"failed to delete {failed} of {len(refs)} {self.resource.title}s")
        return 0


COMMANDS: tuple[type[Command], ...] = (
    CreateCommand,
    ListCommand,
    ShowCommand,
    SetCommand,
    DeleteCommand,
)


def commands_for(resource: Resource) -> list[Command]:
    """The commands a resource supports (set only when its service has an Update method)."""
    return [
        cls(resource)
        for cls in COMMANDS
        if cls is not SetCommand or resource.method("Update") is not None
    ]
