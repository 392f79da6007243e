"""controller.agents.fanout and hoststate as pure logic: a Cache filled by hand, the
store listener called directly (no etcd, no gRPC)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agent.state import DesiredState
from baryon.v1 import agent_pb2
from controller.agents import hoststate
from controller.agents.fanout import RESYNC, Fanout
from controller.model import (
    Agent,
    AgentLiveness,
    Network,
    Port,
    Resource,
    SecurityGroup,
    SecurityGroupRule,
)
from controller.store import Cache


class World:
    def __init__(self, queue_size: int = 8, ring_size: int = 16) -> None:
        self.cache = Cache()
        self.store: Any = SimpleNamespace(cache=self.cache, listeners=[])
        self.revision = 1
        self.cache.revision = 1
        self.fanout = Fanout(self.store, queue_size=queue_size, ring_size=ring_size)

    def change(self, *objs: Resource, deleted: tuple[tuple[str, str], ...] = ()) -> int:
        self.revision += 1
        changes: list[tuple[str, str, Resource | None]] = []
        for obj in objs:
            self.cache.put(obj, self.revision)
            changes.append((obj.KIND, obj.id, obj))
        for kind, id_ in deleted:
            self.cache.remove(kind, id_)
            changes.append((kind, id_, None))
        self.cache.revision = self.revision
        for listener in self.store.listeners:
            listener(self.revision, changes)
        return self.revision

    def agent(self, host: str, ip: str) -> None:
        aid = hoststate.agent_id("Linux bridge agent", host)
        self.change(
            Agent(id=aid, project_id="", host=host, mechanism="linuxbridge", tunnel_ip=ip),
            AgentLiveness(id=aid, project_id=""),
        )


def net(id_: str = "n1") -> Network:
    return Network(id=id_, project_id="p", provider_network_type="vxlan", mtu=1450)


def port(id_: str, host: str, mac: str, **kw: Any) -> Port:
    return Port(
        id=id_,
        project_id="p",
        network_id="n1",
        mac_address=mac,
        binding_host_id=host,
        binding_vif_type="bridge",
        fixed_ips=[("s", "10.0.0." + id_[-1])],
        **kw,
    )


def drain(q: Any) -> list[Any]:
    """The queued messages (those the fan-out serialized once for many streams parsed)."""
    out = []
    while not q.empty():
        item = q.get_nowait()
        if isinstance(item, bytes):
            item = agent_pb2.ControllerMessage.FromString(item)
        out.append(item)
    return out


def test_snapshot_then_deltas_with_l2population() -> None:
    w = World()
    w.agent("h1", "192.0.2.1")
    w.agent("h2", "192.0.2.2")
    w.change(net(), port("p1", "h1", "fa:16:3e:00:00:01"))
    w.fanout.start()
    s1, kind = w.fanout.attach("h1", 0)
    assert kind == "snapshot"
    (first,) = drain(s1.queue)
    assert [p.id for p in first.snapshot.state.ports] == ["p1"]
    assert not first.snapshot.state.remote_vteps

    # A port on h2: h1 learns the VTEP and MAC; status-only changes send nothing.
    rev = w.change(port("p2", "h2", "fa:16:3e:00:00:02"))
    (msg,) = drain(s1.queue)
    assert msg.delta.revision == rev
    assert [(v.tunnel_ip, list(v.mac_addresses)) for v in msg.delta.upsert_remote_vteps] == [
        ("192.0.2.2", ["fa:16:3e:00:00:02"])
    ]
    w.change(port("p2", "h2", "fa:16:3e:00:00:02", status="ACTIVE"))
    assert drain(s1.queue) == []

    # h2's agent dies: its VTEP goes.
    w.change(deleted=(("agent_alive", hoststate.agent_id("Linux bridge agent", "h2")),))
    (msg,) = drain(s1.queue)
    assert [k.tunnel_ip for k in msg.delta.delete_remote_vteps] == ["192.0.2.2"]

    # p1 unbound from h1: deleted there, with its network.
    w.change(port("p1", "", "fa:16:3e:00:00:01"))
    (msg,) = drain(s1.queue)
    assert list(msg.delta.delete_ports) == ["p1"] and list(msg.delta.delete_networks) == ["n1"]


def test_catch_up_from_the_ring_else_snapshot() -> None:
    w = World(ring_size=3)
    w.agent("h1", "192.0.2.1")
    w.agent("h2", "192.0.2.2")
    w.change(net(), port("p1", "h1", "fa:16:3e:00:00:01"), port("p3", "h1", "fa:16:3e:00:00:03"))
    w.fanout.start()
    s, _ = w.fanout.attach("h1", 0)
    had = drain(s.queue)[0].snapshot.revision
    w.fanout.detach(s)
    # While away: p3 deleted, p1 turned admin-down, a port appears on h2.
    w.change(deleted=(("port", "p3"),))
    w.change(port("p1", "h1", "fa:16:3e:00:00:01", admin_state_up=False))
    w.change(port("p2", "h2", "fa:16:3e:00:00:02"))
    s, kind = w.fanout.attach("h1", had)
    assert kind == "delta"
    (msg,) = drain(s.queue)
    d = msg.delta
    assert list(d.delete_ports) == ["p3"]
    assert [(p.id, p.admin_state_up) for p in d.upsert_ports] == [("p1", False)]
    assert d.replace_remote_vteps and [v.tunnel_ip for v in d.upsert_remote_vteps] == ["192.0.2.2"]
    # Older than the ring (it keeps 3 revisions): a snapshot.
    w.change(port("p4", "h2", "fa:16:3e:00:00:04"))
    _, kind = w.fanout.attach("h1", had)
    assert kind == "snapshot"


def test_slow_stream_is_resynced_without_blocking_others() -> None:
    w = World(queue_size=2)
    w.agent("h1", "192.0.2.1")
    w.agent("h2", "192.0.2.2")
    w.change(net(), port("p1", "h1", "fa:16:3e:00:00:01"), port("p2", "h2", "fa:16:3e:00:00:02"))
    w.fanout.start()
    slow, _ = w.fanout.attach("h1", 0)
    fast, _ = w.fanout.attach("h2", 0)
    drain(fast.queue)
    for i in range(5):
        w.change(port(f"q{i}", "h2", f"fa:16:3e:00:01:0{i}"))
        assert len(drain(fast.queue)) == 1  # the fast one keeps getting its deltas
    assert slow.overflowed
    assert drain(slow.queue) == [RESYNC]
    resync, snap = w.fanout.resync(slow)
    assert resync.WhichOneof("kind") == "resync" and not slow.overflowed
    assert isinstance(snap, agent_pb2.ControllerMessage)
    vteps = snap.snapshot.state.remote_vteps
    assert [len(v.mac_addresses) for v in vteps] == [6]
    # Back to deltas after the snapshot.
    w.change(port("q9", "h2", "fa:16:3e:00:01:09"))
    assert len(drain(slow.queue)) == 1


def test_security_groups_and_remote_group_members() -> None:
    w = World()
    w.agent("h1", "192.0.2.1")
    w.agent("h2", "192.0.2.2")
    sg = SecurityGroup(id="sg", project_id="p")
    rule = SecurityGroupRule(
        id="r1",
        project_id="p",
        security_group_id="sg",
        direction="ingress",
        protocol="tcp",
        port_range_min=22,
        port_range_max=22,
        remote_group_id="sg",
    )
    w.change(net(), sg, rule, port("p1", "h1", "fa:16:3e:00:00:01", security_groups=["sg"]))
    w.fanout.start()
    s, _ = w.fanout.attach("h1", 0)
    (snap,) = drain(s.queue)
    (group,) = snap.snapshot.state.security_groups
    assert group.id == "sg" and group.rules[0].port_range_min == 22
    assert group.rules[0].HasField("port_range_max") and group.rules[0].protocol == "tcp"
    (members,) = snap.snapshot.state.security_group_members
    assert list(members.addresses) == ["10.0.0.1"]

    # A port joining the group on h2 changes h1's member set (and VTEPs).
    w.change(port("p2", "h2", "fa:16:3e:00:00:02", security_groups=["sg"]))
    (msg,) = drain(s.queue)
    assert [list(m.addresses) for m in msg.delta.upsert_security_group_members] == [
        ["10.0.0.1", "10.0.0.2"]
    ]
    # A rule deleted: the group is sent again, without it (and no member table needed).
    w.change(deleted=(("security_group_rule", "r1"),))
    (msg,) = drain(s.queue)
    assert [len(g.rules) for g in msg.delta.upsert_security_groups] == [0]
    assert list(msg.delta.delete_security_group_members) == ["sg"]


def test_cache_reload_forgets_the_ring() -> None:
    w = World()
    w.agent("h1", "192.0.2.1")
    w.change(net(), port("p1", "h1", "fa:16:3e:00:00:01"))
    w.fanout.start()
    s, _ = w.fanout.attach("h1", 0)
    had = drain(s.queue)[0].snapshot.revision
    w.fanout.detach(s)
    w.change(port("p1", "h1", "fa:16:3e:00:00:01", admin_state_up=False))
    # The store reloaded after a compaction: it calls listeners with no changes.
    w.revision += 1
    w.cache.revision = w.revision
    w.fanout.on_change(w.revision, [])
    _, kind = w.fanout.attach("h1", had)
    assert kind == "snapshot"


def test_agent_state_applies_snapshots_and_deltas() -> None:
    w = World()
    w.agent("h1", "192.0.2.1")
    w.agent("h2", "192.0.2.2")
    sg = SecurityGroup(id="sg", project_id="p")
    w.change(net(), sg, port("p1", "h1", "fa:16:3e:00:00:01", security_groups=["sg"]))
    w.fanout.start()
    s, _ = w.fanout.attach("h1", 0)
    state = DesiredState()
    state.apply_snapshot(drain(s.queue)[0].snapshot)
    assert state.complete
    hs = state.host_state()
    assert set(hs.ports) == {"p1"} and hs.ports["p1"].security_group_ids == ("sg",)
    assert hs.networks["n1"].segmentation_id is None and hs.networks["n1"].mtu == 1450
    assert set(hs.security_groups) == {"sg"}
    w.change(port("p2", "h2", "fa:16:3e:00:00:02"))
    w.change(deleted=(("port", "p1"),))
    for msg in drain(s.queue):
        state.apply_delta(msg.delta)
    hs = state.host_state()
    assert not hs.ports and not hs.networks and not hs.remote_vteps and not hs.security_groups


def test_incremental_deltas_equal_recomputed_views() -> None:
    """Random changes on a small cluster: after every one, what each stream was sent
    (its view, and the state an agent builds from the messages) equals the host's view
    computed from scratch — the shared-delta fast paths never drift from a recompute."""
    import random

    for seed in range(10):
        rnd = random.Random(seed)
        w = World(queue_size=100_000, ring_size=100_000)
        hosts = ["h1", "h2", "h3", "h4", "h5"]
        # h5 shares h4's tunnel IP (recompute fallback); h3 has no tunnel IP.
        ips = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "", "h4": "192.0.2.4"}
        ips["h5"] = "192.0.2.4"
        for h in hosts:
            w.agent(h, ips[h])
        nets = {"n1": "vxlan", "n2": "flat", "n3": "gre"}
        w.change(
            *(
                Network(id=n, project_id="p", provider_network_type=t, mtu=1450)
                for n, t in nets.items()
            )
        )
        groups = ["sg1", "sg2", "sg3"]
        w.change(*(SecurityGroup(id=g, project_id="p") for g in groups))
        w.fanout.start()
        streams = {}
        states = {}
        for h in hosts:
            streams[h], _ = w.fanout.attach(h, 0)
            states[h] = DesiredState()
        ports: dict[str, Port] = {}
        rules: set[str] = set()
        for step in range(250):
            r = rnd.random()
            if r < 0.45 or not ports:
                pid = f"p{rnd.randrange(12)}"
                old = ports.get(pid)
                ports[pid] = Port(
                    id=pid,
                    project_id="p",
                    network_id=old.network_id if old else rnd.choice(list(nets)),
                    mac_address=f"fa:16:3e:00:00:{int(pid[1:]):02x}",
                    binding_host_id=rnd.choice(["", *hosts]),
                    binding_vif_type=rnd.choice(["bridge", "bridge", "binding_failed"]),
                    fixed_ips=[("s", f"10.0.{rnd.randrange(3)}.{int(pid[1:])}")],
                    allowed_address_pairs=rnd.choice(
                        [[], [], [("10.9.0.0/24", "")], [(f"10.0.1.{int(pid[1:])}", "")]]
                    ),
                    security_groups=rnd.sample(groups, rnd.randrange(3)),
                    admin_state_up=rnd.random() < 0.8,
                    port_security_enabled=rnd.random() < 0.9,
                )
                w.change(ports[pid])
            elif r < 0.55:
                pid = rnd.choice(list(ports))
                del ports[pid]
                w.change(deleted=(("port", pid),))
            elif r < 0.8:
                rid = f"r{rnd.randrange(8)}"
                if rid in rules and rnd.random() < 0.4:
                    rules.discard(rid)
                    w.change(deleted=(("security_group_rule", rid),))
                else:
                    rules.add(rid)
                    w.change(
                        SecurityGroupRule(
                            id=rid,
                            project_id="p",
                            security_group_id=rnd.choice(groups),
                            direction="ingress",
                            protocol="tcp",
                            port_range_min=rnd.randrange(1, 100),
                            port_range_max=100,
                            remote_group_id=rnd.choice(["", "", *groups]),
                        )
                    )
            elif r < 0.85:
                h = rnd.choice(hosts)
                aid = hoststate.agent_id("Linux bridge agent", h)
                if w.cache.get(AgentLiveness, aid) is None:
                    w.change(AgentLiveness(id=aid, project_id=""))
                else:
                    w.change(deleted=(("agent_alive", aid),))
            elif r < 0.9:
                # An agent restarts (new record and liveness key), maybe with a new
                # tunnel IP (possibly one another host has).
                h = rnd.choice(hosts)
                aid = hoststate.agent_id("Linux bridge agent", h)
                ip = rnd.choice([ips[h], ips[h], "192.0.2.9", "192.0.2.1", ""])
                w.change(
                    Agent(id=aid, project_id="", host=h, mechanism="linuxbridge", tunnel_ip=ip),
                    AgentLiveness(id=aid, project_id="", session=str(step)),
                )
            else:
                n = rnd.choice(list(nets))
                w.change(
                    Network(
                        id=n,
                        project_id="p",
                        provider_network_type=nets[n],
                        mtu=rnd.choice([1400, 1450]),
                    )
                )
            for h in hosts:
                s = streams[h]
                assert s.sent == hoststate.compute(w.cache, h), (seed, step, h)
                for msg in drain(s.queue):
                    if msg.WhichOneof("kind") == "snapshot":
                        states[h].apply_snapshot(msg.snapshot)
                    else:
                        states[h].apply_delta(msg.delta)
                fresh = DesiredState()
                fresh.apply_snapshot(w.fanout.snapshot_message(s.sent, w.revision).snapshot)
                assert states[h].host_state() == fresh.host_state(), (seed, step, h)
        assert w.fanout.shared_deltas > 0 and w.fanout.recomputes > 0 and w.fanout.patches > 0
