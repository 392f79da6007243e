"""controller.services.binding as pure logic over a hand-filled Cache."""

from __future__ import annotations

from controller.agents.hoststate import agent_id
from controller.model import Agent, AgentLiveness, Network
from controller.services.binding import bind
from controller.store import Cache


def cache_with(mechanism: str = "linuxbridge", alive: bool = True, **agent: object) -> Cache:
    cache = Cache()
    aid = agent_id("t", "h1")
    fields = {"supported_network_types": ["local", "vxlan", "flat"]} | agent
    cache.put(Agent(id=aid, project_id="", host="h1", mechanism=mechanism, **fields), 1)
    if alive:
        cache.put(AgentLiveness(id=aid, project_id=""), 1)
    return cache


def net(ntype: str = "vxlan", physnet: str = "") -> Network:
    return Network(
        id="n" * 36, project_id="p", provider_network_type=ntype, provider_physical_network=physnet
    )


def test_linuxbridge_and_ovs_vif_types() -> None:
    b = bind(cache_with(), net(), "h1")
    assert b.vif_type == "bridge" and b.vif_details["bridge_name"] == "brq" + "n" * 11
    o = bind(cache_with("openvswitch"), net(), "h1")
    assert o.vif_type == "ovs" and o.vif_details["bridge_name"] == "br-int"


def test_unbound_and_failed_bindings_say_why() -> None:
    assert bind(cache_with(), net(), "").vif_type == "unbound"
    for cache, network, host, why in (
        (cache_with(), net(), "h2", "no live agent on host h2"),
        (cache_with(alive=False), net(), "h1", "no live agent"),
        (cache_with(), net("vlan", "physnet1"), "h1", "does not support vlan"),
        (cache_with(), net("flat", "physnet1"), "h1", "no mapping for physical network"),
    ):
        b = bind(cache, network, host)
        assert b.vif_type == "binding_failed" and why in b.vif_details["reason"], b
    mapped = cache_with(physical_network_mappings={"physnet1": "eth1"})
    assert bind(mapped, net("flat", "physnet1"), "h1").vif_type == "bridge"
