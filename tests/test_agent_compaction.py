"""Reconnect after etcd compaction: the agent gets a Snapshot and removes by diffing.

An agent that was away for a short while gets only what it missed (a catch-up Delta
from its controller's ring of recent changes). When the history it would need is
gone (etcd compacted, and the controller it comes back to started afterwards, so its
ring begins above the agent's revision) it gets a Snapshot instead, and must work out
for itself what was deleted while it was away: nobody tells it.

The agent under test keeps running (it keeps its state and revision; a restarted agent
process says revision 0 and always gets a Snapshot, which would prove nothing here).
Its only controller is stopped; while it is away a port of its host is deleted and
another one created and plugged through a second controller; etcd is compacted; then a
fresh controller starts on the first one's address and the agent reconnects to it.
The other node's agent knows both addresses and moves to the second controller at
once: it gets a catch-up Delta, which shows the check below tells the two apart.

Everything runs on a private etcd (compacting the session etcd would pull history
from under other tests); controllers run in-process, agents are processes killed by
PID, and every namespace carries the run's prefix.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable

import grpc
import pytest

from controller.auth import Context, TokenTable
from controller.etcd import EtcdClient
from controller.etcd.client import EtcdCompacted
from controller.server import Controller
from tests.support.controller import ADMIN_TOKEN, TOKENS, Client, config
from tests.support.etcd import private_etcd, scratch_dir
from tests.support.netns import NamespacePool, Node, build_underlay, ns_run, ping
from tests.test_agent_e2e import AGENT_TOKEN, LEASE_TTL, Agents, cli, eventually, reaches

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

SERVICE_LOG = "controller.agents.service"
CONNECTED = re.compile(
    r"agent (?P<host>\S+) \((?P<mech>[^)]+)\) connected: (?P<kind>\w+) "
    r"at revision (?P<rev>\d+) \(it had (?P<had>\d+)\)"
)


def make_controller(endpoint: str, prefix: bytes, listen: str = "127.0.0.1:0") -> Controller:
    tokens = dict(TOKENS)
    tokens[AGENT_TOKEN] = Context("service", frozenset({"agent"}))
    cfg = config(prefix.decode(), agent_lease_ttl=LEASE_TTL)
    return Controller(cfg, TokenTable(tokens), [endpoint], listen)


def connections(caplog: pytest.LogCaptureFixture, host: str) -> list[tuple[str, int, int]]:
    """(kind, revision, the agent's last revision) of every Connect of `host`'s agent."""
    out = []
    for record in caplog.records:
        if record.name != SERVICE_LOG:
            continue
        m = CONNECTED.search(record.getMessage())
        if m and m["host"] == host:
            out.append((m["kind"], int(m["rev"]), int(m["had"])))
    return out


def tap(port_id: str) -> str:
    return "tap" + port_id[:11]


async def link_info(ns: str, device: str) -> str | None:
    """`ip -o link show` of a device in ns, or None when it does not exist."""
    res = await ns_run(ns, "ip", "-o", "link", "show", "dev", device, check=False)
    return res.stdout if res.ok else None


async def test_agent_back_after_compaction_gets_snapshot_and_removes_deleted_port(
    key_prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    pool = NamespacePool("cp")
    logdir = scratch_dir("agentlogs")
    running: list[Controller] = []

    async def start(ctl: Controller) -> Controller:
        running.append(ctl)
        await ctl.start()
        return ctl

    async def stop(ctl: Controller) -> None:
        running.remove(ctl)
        await ctl.stop()

    async with private_etcd("cmp") as etcd:
        endpoint = etcd.endpoint
        agents = Agents("", logdir)
        channel: grpc.aio.Channel | None = None
        try:
            # ctl_api serves the API throughout (and node2's agent once ctl_a stops);
            # ctl_a is node1's only controller.
            ctl_api = await start(make_controller(endpoint, key_prefix))
            ctl_a = await start(make_controller(endpoint, key_prefix))
            api_target = f"127.0.0.1:{ctl_api.port}"
            a_target = f"127.0.0.1:{ctl_a.port}"
            channel = grpc.aio.insecure_channel(api_target)
            admin = Client(channel, ADMIN_TOKEN)

            underlay = await build_underlay(pool, 2)
            node1, node2 = underlay.nodes
            agents.target = a_target
            await agents.start(node1)
            agents.target = f"{a_target},{api_target}"
            await agents.start(node2)

            def sessions_on(ctl: Controller, *hosts: str) -> Callable[[], Awaitable[bool]]:
                async def probe() -> bool:
                    assert ctl.agents is not None
                    return set(hosts) <= {s.host for s in ctl.agents.sessions.values()}

                return probe

            await eventually(
                "both agents on controller A",
                sessions_on(ctl_a, "node1", "node2"),
                20,
                agents.logs,
            )

            # A VXLAN network; two ports on node1 (pa, pb), one on node2 (p2).
            net = await admin.network(name="cmp")
            assert net.provider_network_type == "vxlan"
            await admin.subnet(net.id, "10.81.0.0/24")
            wa, wb, wc, w2 = [await pool.create(n) for n in ("wa", "wb", "wc", "w2")]
            pa = await admin.port(net.id, name="pa", binding_host_id="node1")
            pb = await admin.port(net.id, name="pb", binding_host_id="node1")
            p2 = await admin.port(net.id, name="p2", binding_host_id="node2")

            async def plug(port_id: str, ns: str, node: Node) -> None:
                await cli(api_target, "port", "plug", port_id, "--netns", ns,
                          "--node-netns", node.ns, "--static-ip")  # fmt: skip

            for p, w, node in ((pa, wa, node1), (pb, wb, node1), (p2, w2, node2)):
                assert p.binding_vif_type == "bridge", p
                await plug(p.id, w, node)
            ipa, ipb, ip2 = (p.fixed_ips.ips[0].ip_address for p in (pa, pb, p2))

            def all_active(*ids: str) -> Callable[[], Awaitable[bool]]:
                async def probe() -> bool:
                    for i in ids:
                        if (await admin.get_port(i)).status != "ACTIVE":
                            return False
                    return True

                return probe

            await eventually("pa, pb, p2 ACTIVE", all_active(pa.id, pb.id, p2.id), 15, agents.logs)
            for src, dst in ((wa, ip2), (wb, ip2), (w2, ipa), (w2, ipb)):
                await eventually(f"{src} -> {dst}", reaches(src, dst), 15, agents.logs)

            # node1's agent loses its only controller; node2's moves to ctl_api.
            await stop(ctl_a)
            await eventually(
                "node2's agent on ctl_api", sessions_on(ctl_api, "node2"), 15, agents.logs
            )

            # While node1 is away: a new port there (created first, so it cannot take
            # pb's address), plugged; pb deleted. Nobody unwires pb's device.
            pc = await admin.port(net.id, name="pc", binding_host_id="node1")
            ipc = pc.fixed_ips.ips[0].ip_address
            await plug(pc.id, wc, node1)
            await admin.delete_port(pb.id)
            assert ipc != ipb
            stale = await link_info(node1.ns, tap(pb.id))
            assert stale is not None and "master brq" in stale, stale
            # Still wired: node1's bridge still carries pb's traffic.
            await eventually("pb still carries traffic on node1", reaches(wb, ipa), 10)

            # The history node1's agent would resume from is compacted away.
            async with EtcdClient([endpoint], timeout=5.0) as etcd_client:
                compacted = await etcd_client.current_revision()
                await etcd_client.compact(compacted)

                # A fresh controller (its change ring starts now) on ctl_a's address.
                ctl_a2 = await start(
                    make_controller(endpoint, key_prefix, f"127.0.0.1:{ctl_a.port}")
                )
                await eventually(
                    "node1's agent back, on the new controller",
                    sessions_on(ctl_a2, "node1"),
                    20,
                    agents.logs,
                )
                back = [c for c in connections(caplog, "node1") if c[2] > 0]
                assert len(back) == 1, connections(caplog, "node1")
                kind, at, had = back[0]
                # It came back with a revision of its own, older than what etcd still
                # keeps, and got a Snapshot (not a Delta).
                assert kind == "snapshot", back
                assert 0 < had < compacted <= at, (back, compacted)
                with pytest.raises(EtcdCompacted):
                    await etcd_client.range(key_prefix, revision=had)

            # The agent says the same: it reconnected with that revision and applied a
            # snapshot after it.
            (log1,) = logdir.glob("node1-*.log")
            text = log1.read_text(errors="replace")
            marker = f"connected to {a_target} (had revision {had})"
            assert marker in text, text[-3000:]
            assert "snapshot at revision" in text.split(marker, 1)[1], text[-3000:]
            # Contrast: node2, away only while it moved to ctl_api (whose ring covers
            # its revision), caught up with a Delta.
            moved = [c for c in connections(caplog, "node2") if c[2] > 0]
            assert [c[0] for c in moved] == ["delta"], connections(caplog, "node2")

            # The deletion, found by diffing: pb's device is removed and its traffic stops.
            async def pb_gone() -> bool:
                return await link_info(node1.ns, tap(pb.id)) is None

            await eventually("pb's device removed on node1", pb_gone, 15, agents.logs)
            # The new port is wired; the remaining ports carry traffic both ways.
            await eventually("pa, pc, p2 ACTIVE", all_active(pa.id, pc.id, p2.id), 15)
            for src, dst in ((wa, ip2), (w2, ipa), (wc, ip2), (w2, ipc), (wa, ipc)):
                await eventually(f"{src} -> {dst}", reaches(src, dst), 15, agents.logs)
            assert not await ping(w2, ipb, count=1, wait=1), "deleted pb still answers"
            assert not await ping(wa, ipb, count=1, wait=1), "deleted pb still answers"
            assert await link_info(wb, "eth0") is None, "pb's workload end outlived it"
        except BaseException:
            print(agents.logs)
            raise
        finally:
            await agents.kill_all()
            if channel is not None:
                await channel.close()
            for ctl in reversed(running):
                await ctl.stop()
            await pool.cleanup()
            shutil.rmtree(logdir, ignore_errors=True)
