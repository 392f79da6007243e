"""The ``baryon`` command: ``baryon [global options] RESOURCE ACTION [options]``.

``baryon controller ...`` and ``baryon agent ...`` hand the rest of the command line
to ``controller.server:main`` and ``agent.main:main``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO, TypeAlias

from google.protobuf.message import Message

from cli.client import (
    DEFAULT_CONTROLLER,
    DEFAULT_TIMEOUT,
    CliError,
    GrpcTransport,
    Settings,
    Transport,
)
from cli.floating_ips import FLOATING_IP, floating_ip_commands
from cli.networks import NETWORK
from cli.options import Resolver, value_of
from cli.output import FORMATS, Output
from cli.plug import extra_commands
from cli.ports import PORT
from cli.resource import (
    ApiResolver,
    Command,
    CreateCommand,
    DeleteCommand,
    Invocation,
    ListCommand,
    Resource,
    SetCommand,
    ShowCommand,
    commands_for,
)
from cli.routers import ROUTER, router_commands
from cli.security_groups import RULE, SECURITY_GROUP
from cli.subnets import SUBNET

RESOURCES: tuple[Resource, ...] = (
    NETWORK,
    SUBNET,
    PORT,
    SECURITY_GROUP,
    RULE,
    ROUTER,
    FLOATING_IP,
)

# Subcommands run in-process by other packages: name -> (module, help).
DISPATCH: dict[str, tuple[str, str]] = {
    "controller": ("controller.server", "run the controller (API server)"),
    "agent": ("agent.main", "run the node agent"),
}

# Global options taking a value, for finding the subcommand word before argparse runs.
_VALUE_OPTIONS = {"--controller", "--token", "-f", "--format", "-c", "--column", "--timeout"}


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_global_options(parser: argparse.ArgumentParser, *, leaf: bool) -> None:
    """Global options; on leaf parsers too, defaulting to the values before the command."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if leaf else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--controller",
        metavar="ADDR",
        default=default(None),
        help=f"controller address (env BARYON_CONTROLLER; default {DEFAULT_CONTROLLER})",
    )
    group.add_argument(
        "--token",
        default=default(None),
        help="API token (env BARYON_TOKEN; default: the admin-token file in the state dir)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        default=default(None),
        help=f"per-request timeout (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        default=default("table"),
        help="output format (default table)",
    )
    group.add_argument(
        "-c",
        "--column",
        dest="columns",
        action="append",
        metavar="COLUMN",
        default=default([]),
        help="show only this column (repeatable)",
    )


_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandTree:
    """Nested subparsers: ("security", "group", "rule", "create") and so on."""

    def __init__(self, root: argparse.ArgumentParser) -> None:
        self.parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): root}
        self.subparsers: dict[tuple[str, ...], _Subparsers] = {}
        self.leaf_parent = argparse.ArgumentParser(add_help=False)
        add_global_options(self.leaf_parent, leaf=True)

    def children(
        self, path: tuple[str, ...]
    ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        if path not in self.subparsers:
            self.subparsers[path] = self.node(path).add_subparsers(
                title="commands", metavar="COMMAND", dest=f"_command_{len(path)}", required=True
            )
        return self.subparsers[path]

    def node(self, path: tuple[str, ...]) -> argparse.ArgumentParser:
        if path not in self.parsers:
            titles = [r.title for r in RESOURCES if r.path[: len(path)] == path]
            help = f"{', '.join(titles) or ' '.join(path)} commands"
            self.parsers[path] = self.children(path[:-1]).add_parser(
                path[-1], help=help, description=help
            )
        return self.parsers[path]

    def add_command(self, command: Command) -> None:
        path = (*command.resource.path, command.verb)
        parser = self.children(path[:-1]).add_parser(
            path[-1],
            help=command.help,
            description=command.help,
            parents=[self.leaf_parent],
            allow_abbrev=False,
        )
        command.configure(parser)
        parser.set_defaults(command=command)
        self.parsers[path] = parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baryon",
        description="Baryon network-as-a-service client.",
        allow_abbrev=False,
    )
    add_global_options(parser, leaf=False)
    tree = CommandTree(parser)
    for resource in RESOURCES:
        for command in commands_for(resource):
            tree.add_command(command)
    for command in [*extra_commands(), *router_commands(), *floating_ip_commands()]:
        tree.add_command(command)
    for name, (_, help) in DISPATCH.items():
        sub = tree.children(()).add_parser(name, help=help, add_help=False)
        sub.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def build_request(
    argv: Sequence[str], resolver: Resolver, current: Message | None = None
) -> Message:
    """The request a command line produces, without a channel.

    Names are looked up with ``resolver``; ``set`` merges list options into ``current``
    (looked up with the resolver when not given).
    """
    ns = build_parser().parse_args(list(argv))
    command: Command = ns.command
    if isinstance(command, CreateCommand | ListCommand):
        return command.build(ns, resolver)
    if isinstance(command, SetCommand):
        found = current if current is not None else resolver.find(command.resource, ns.ref)
        return command.build(ns, found, resolver)
    if isinstance(command, DeleteCommand):
        return command.build(ns, str(value_of(resolver.find(command.resource, ns.refs[0]), "id")))
    if isinstance(command, ShowCommand):
        found = resolver.find(command.resource, ns.ref)
        return command.resource.request("Get", id=value_of(found, "id"))
    raise ValueError(f"{command.verb} builds no request")


def dispatch_target(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """("controller", rest) when the command word is a dispatched subcommand."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return (arg, list(argv[i + 1 :])) if arg in DISPATCH else None
    return None


def run_dispatched(name: str, argv: list[str], stderr: TextIO) -> int:
    module_name, _ = DISPATCH[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        print(
            f"Error: the {name} is not available: cannot import {module_name}: {err}", file=stderr
        )
        return 1
    entry = getattr(module, "main", None)
    if not callable(entry):
        print(f"Error: the {name} is not available: {module_name} has no main()", file=stderr)
        return 1
    result = entry(argv)
    return result if isinstance(result, int) else 0


def execute(
    ns: argparse.Namespace,
    env: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    transport: Transport | None = None,
) -> int:
    """Run a parsed command; expected failures become one line on stderr."""
    command: Command = ns.command
    settings = Settings.from_options(ns.controller, ns.token, ns.timeout, env)
    grpc_transport = GrpcTransport(settings) if transport is None else None
    active = transport or grpc_transport
    assert active is not None
    invocation = Invocation(
        ns=ns,
        transport=active,
        resolver=ApiResolver(active),
        output=Output(ns.format, ns.columns, stdout),
        stderr=stderr,
    )
    try:
        return command.run(invocation)
    except CliError as err:
        print(f"Error: {err}", file=stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        if grpc_transport is not None:
            grpc_transport.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    target = dispatch_target(args)
    if target is not None:
        return run_dispatched(*target, stderr=sys.stderr)
    ns = build_parser().parse_args(args)
    return execute(ns, os.environ, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
