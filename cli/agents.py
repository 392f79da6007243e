"""``baryon network agent list|show|delete`` (admin): the node agents."""

from __future__ import annotations

from baryon.v1 import agent_pb2
from cli.options import LIST, Value, toggle
from cli.output import Column
from cli.resource import Command, DeleteCommand, ListCommand, Resource, ShowCommand

AGENT = Resource(
    path=("network", "agent"),
    message=agent_pb2.Agent,
    service=agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    metavar="AGENT",
    named=False,
    options=(
        Value("--host", "host", LIST, "only agents on this host", metavar="HOST"),
        Value("--agent-type", "agent_type", LIST, "only agents of this type", metavar="TYPE"),
        toggle("alive", "--alive", "--dead", "only live agents", "only dead agents", LIST),
    ),
    columns=(
        Column("ID", "id"),
        Column("Host", "host"),
        Column("Agent Type", "agent_type"),
        Column("Alive", "alive"),
        Column("Applied Revision", "applied_revision"),
    ),
    long_columns=(
        Column("Mechanism", "mechanism"),
        Column("Tunnel IP", "tunnel_ip"),
        Column("Network Types", "supported_network_types"),
        Column("Last Seen", "last_seen"),
        Column("Version", "version"),
    ),
)


def agent_commands() -> list[Command]:
    return [ListCommand(AGENT), ShowCommand(AGENT), DeleteCommand(AGENT)]
