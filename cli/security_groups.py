"""``baryon security group ...`` and ``baryon security group rule ...``"""

from __future__ import annotations

import argparse

from google.protobuf.message import Message

from baryon.v1 import security_group_pb2
from cli.client import UsageError
from cli.options import (
    CREATE,
    LIST,
    WRITE,
    BuildContext,
    Mode,
    Option,
    Switch,
    Value,
    attribute,
    dest_for,
    named,
    non_negative,
    value_of,
)
from cli.output import ID_NAME, INLINE, Column, format_field
from cli.resource import Resource

SERVICE = security_group_pb2.DESCRIPTOR.services_by_name["SecurityGroupService"]
ICMP = ("icmp", "icmpv6", "ipv6-icmp", "1", "58")
IPV6_PROTOCOLS = ("icmpv6", "ipv6-icmp", "58")

SECURITY_GROUP = Resource(
    path=("security", "group"),
    message=security_group_pb2.SecurityGroup,
    service=SERVICE,
    metavar="GROUP",
    options=(
        *named("security group"),
        Switch(
            "stateful",
            {
                "--stateful": (True, "track connections, return traffic is allowed (default)"),
                "--stateless": (False, "no connection tracking: allow return traffic by rule"),
            },
            WRITE,
        ),
    ),
    columns=(
        *ID_NAME,
        Column("Description", "description"),
        Column("Project", "project_id"),
        Column("Tags", "tags"),
    ),
    long_columns=(
        Column("Stateful", "stateful"),
        Column("Rules", "rules", lambda sg: str(len(value_of(sg, "rules")))),
    ),
)

# ---------------------------------------------------------------------------
# Rules

_RULE_CONTEXT = {"project_id", "revision_number", "created_at", "updated_at", "security_group_id"}


def _rule_text(rule: Message) -> str:
    """A rule inside its group's `show`: only what distinguishes it."""
    return ", ".join(
        f"{fd.name}='{format_field(rule, fd)}'"
        for fd, _ in rule.ListFields()
        if fd.name not in _RULE_CONTEXT
    )


INLINE[security_group_pb2.SecurityGroupRule.DESCRIPTOR.full_name] = _rule_text


def port_range(text: str) -> tuple[int, int]:
    """``N`` or ``N:M``, 0-65535, N <= M."""
    low, _, high = text.partition(":")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PORT or PORT:PORT, got {text!r}") from None
    if not 0 <= first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"expected 0 <= PORT <= PORT <= 65535, got {text!r}")
    return first, last


class PortRange(Option):
    """--dst-port N[:M] -> port_range_min, port_range_max."""

    def add(self, parser: argparse.ArgumentParser, mode: Mode) -> None:
        parser.add_argument(
            self.flag, dest=self.dest, type=port_range, metavar="PORT[:PORT]", help=self.help
        )

    def apply(self, ns: argparse.Namespace, target: Message, ctx: BuildContext) -> list[str]:
        given: tuple[int, int] | None = getattr(ns, self.dest, None)
        if given is None:
            return []
        assert isinstance(target, security_group_pb2.SecurityGroupRule)
        target.port_range_min, target.port_range_max = given
        return ["port_range_min", "port_range_max"]


def _check_rule(ns: argparse.Namespace, mode: Mode) -> None:
    if mode is not Mode.CREATE:
        return

    def given(flag: str) -> bool:
        return getattr(ns, dest_for(flag), None) is not None

    if given("--dst-port") and (given("--icmp-type") or given("--icmp-code")):
        raise UsageError("--dst-port cannot be combined with --icmp-type/--icmp-code")
    if given("--icmp-code") and not given("--icmp-type"):
        raise UsageError("--icmp-code needs --icmp-type")
    if given("--remote-ip") and given("--remote-group"):
        raise UsageError("give at most one of --remote-ip and --remote-group")


def _finish_rule(ns: argparse.Namespace, rule: Message, ctx: BuildContext) -> None:
    """Infer the ethertype from --remote-ip or an IPv6-only protocol, as openstack does."""
    assert isinstance(rule, security_group_pb2.SecurityGroupRule)
    if not rule.ethertype and (
        ":" in rule.remote_ip_prefix or rule.protocol.lower() in IPV6_PROTOCOLS
    ):
        rule.ethertype = "IPv6"


def _protocol(raw: str, ctx: BuildContext) -> str | None:
    return None if raw.lower() == "any" else raw


def _protocol_text(msg: Message) -> str:
    return str(value_of(msg, "protocol")) or "any"


def _range_text(msg: Message) -> str:
    assert isinstance(msg, security_group_pb2.SecurityGroupRule)
    low = str(msg.port_range_min) if msg.HasField("port_range_min") else ""
    high = str(msg.port_range_max) if msg.HasField("port_range_max") else ""
    if msg.protocol.lower() in ICMP:
        return " ".join(p for p in (low and f"type={low}", high and f"code={high}") if p)
    return f"{low}:{high or low}" if low else ""


def _remote_ip_text(msg: Message) -> str:
    assert isinstance(msg, security_group_pb2.SecurityGroupRule)
    if msg.remote_ip_prefix or msg.remote_group_id:
        return msg.remote_ip_prefix
    return "::/0" if msg.ethertype == "IPv6" else "0.0.0.0/0"


RULE = Resource(
    path=("security", "group", "rule"),
    message=security_group_pb2.SecurityGroupRule,
    service=SERVICE,
    metavar="RULE",
    named=False,
    options=(
        Value(
            "group",
            "security_group_id",
            CREATE,
            "security group to add the rule to (name or ID)",
            ref=SECURITY_GROUP,
            metavar="GROUP",
        ),
        Value(
            "group",
            "security_group_id",
            LIST,
            "only rules of this security group (name or ID)",
            ref=SECURITY_GROUP,
            metavar="GROUP",
            nargs="?",
        ),
        Value("--description", "description", CREATE, "rule description"),
        *attribute(
            "--project",
            "project_id",
            "owner project (admin only)",
            "only rules of this project",
            CREATE,
            metavar="PROJECT",
        ),
        Switch(
            "direction",
            {
                "--ingress": ("ingress", "rule for incoming traffic (default on create)"),
                "--egress": ("egress", "rule for outgoing traffic"),
            },
            CREATE | LIST,
            create_default="ingress",
        ),
        *attribute(
            "--ethertype",
            "ethertype",
            "IPv4 or IPv6 (default: from --remote-ip or --protocol, else IPv4)",
            "only rules of this ethertype",
            CREATE,
            choices=("IPv4", "IPv6"),
        ),
        *attribute(
            "--protocol",
            "protocol",
            "tcp, udp, icmp, icmpv6, ... , a number 0-255, or any (the default)",
            "only rules for this protocol",
            CREATE,
            convert=_protocol,
        ),
        PortRange("--dst-port", "port_range_min", CREATE, "destination port or range N:M"),
        Value("--icmp-type", "port_range_min", CREATE, "ICMP type", type=non_negative),
        Value("--icmp-code", "port_range_max", CREATE, "ICMP code", type=non_negative),
        Value(
            "--remote-ip",
            "remote_ip_prefix",
            CREATE,
            "source (ingress) or destination (egress) prefix",
            metavar="CIDR",
        ),
        *attribute(
            "--remote-group",
            "remote_group_id",
            "traffic from/to ports of this security group (name or ID)",
            "only rules naming this remote group",
            CREATE,
            ref=SECURITY_GROUP,
            metavar="GROUP",
        ),
    ),
    check=_check_rule,
    finish=_finish_rule,
    columns=(
        Column("ID", "id"),
        Column("IP Protocol", "protocol", _protocol_text),
        Column("Ethertype", "ethertype"),
        Column("IP Range", "remote_ip_prefix", _remote_ip_text),
        Column("Port Range", "port_range_min", _range_text),
        Column("Direction", "direction"),
        Column("Remote Security Group", "remote_group_id"),
        Column("Security Group", "security_group_id"),
    ),
    long_columns=(
        Column("Description", "description"),
        Column("Project", "project_id"),
    ),
)
