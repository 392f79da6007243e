"""Port binding (Neutron ML2's bind_port): which mechanism wires a port on its host.

A port with ``binding_host_id`` set is bound by the mechanism driver of the live
agent registered for that host, if the agent supports the network's type (and,
for flat/vlan networks, has a mapping for its physical network). Otherwise the
binding fails; ``binding_vif_details["reason"]`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.model import Agent, AgentLiveness, Network
from controller.store import Cache

UNBOUND = "unbound"
BINDING_FAILED = "binding_failed"
# mechanism -> (vif_type, agent_type)
MECHANISMS: dict[str, tuple[str, str]] = {
    "linuxbridge": ("bridge", "Linux bridge agent"),
    "openvswitch": ("ovs", "Open vSwitch agent"),
}
BOUND_VIF_TYPES = frozenset(vif for vif, _ in MECHANISMS.values())
PHYSICAL_TYPES = frozenset({"flat", "vlan"})


@dataclass(frozen=True, slots=True)
class Binding:
    vif_type: str
    vif_details: dict[str, str] = field(default_factory=dict)

    @property
    def bound(self) -> bool:
        return self.vif_type in BOUND_VIF_TYPES


def agents_on(cache: Cache, host: str) -> list[Agent]:
    """Registered agents of `host` (any mechanism), newest session first."""
    found = [a for a in cache.all(Agent) if a.host == host]
    return sorted(found, key=lambda a: a.started_at, reverse=True)


def is_alive(cache: Cache, agent: Agent) -> bool:
    return cache.get(AgentLiveness, agent.id) is not None


def live_agent(cache: Cache, host: str) -> Agent | None:
    for agent in agents_on(cache, host):
        if agent.mechanism in MECHANISMS and is_alive(cache, agent):
            return agent
    return None


def bind(cache: Cache, net: Network, host: str) -> Binding:
    """The binding of a port of `net` on `host` ("" host: unbound)."""
    if not host:
        return Binding(UNBOUND)
    agent = live_agent(cache, host)
    if agent is None:
        return _failed(f"no live agent on host {host}")
    ntype = net.provider_network_type or "local"
    if ntype not in agent.supported_network_types:
        return _failed(f"the {agent.mechanism} agent on {host} does not support {ntype} networks")
    physnet = net.provider_physical_network
    if ntype in PHYSICAL_TYPES and physnet not in agent.physical_network_mappings:
        return _failed(f"the agent on {host} has no mapping for physical network {physnet}")
    vif_type, _ = MECHANISMS[agent.mechanism]
    details = {"port_filter": "true", "connectivity": "l2"}
    if agent.mechanism == "linuxbridge":
        details["bridge_name"] = "brq" + net.id[:11]
    else:
        details["bridge_name"] = "br-int"
        details["ovs_hybrid_plug"] = "false"
    return Binding(vif_type, details)


def _failed(reason: str) -> Binding:
    return Binding(BINDING_FAILED, {"reason": reason})


def port_fields(cache: Cache, net: Network, host: str) -> dict[str, Any]:
    """The Port attributes a (re)binding to `host` sets."""
    result = bind(cache, net, host)
    return {"binding_vif_type": result.vif_type, "binding_vif_details": dict(result.vif_details)}
