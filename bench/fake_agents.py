"""N lightweight fake agents in one process, for bench/agents.py's fan-out phase.

Each fake agent opens its own channel (``grpc.use_local_subchannel_pool=1``: its own
TCP connection, like N separate hosts), says Hello on ``AgentService.Connect`` as a
Linux bridge agent of host ``<prefix><i>``, holds the stream, reads every message and
acks the latest revision when the stream has been quiet for a second (as the real
agent does, see agent/main.py ACK_QUIET; it reports no port status and touches no
dataplane). Run by the benchmark as a subprocess (never a fork of a grpc process):

    python -m bench.fake_agents --target HOST:PORT --token TOKEN --hosts 1000

Protocol on stdout, one line per event (times are CLOCK_MONOTONIC ns, system-wide, so
the benchmark process can compare them with its own stamps):

* ``CONNECTED <n> <seconds>``: every stream got its first message (Snapshot);
* ``PORTS <n>``: every stream's state holds at least one port;
* ``TAG <k> <first_ns> <median_ns> <last_ns>``: every stream got a Delta whose upserted
  security groups hold a rule with ``port_range_min == k`` (the benchmark's k-th change);
* ``ERR <text>``: a stream failed (it reconnects).

It exits when stdin is closed or says ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from typing import Any

import grpc

from agent.main import ACK_MAX, ACK_QUIET, DEFAULT_POLL_INTERVAL
from agent.main import CHANNEL_OPTIONS as AGENT_CHANNEL_OPTIONS
from baryon.v1 import agent_pb2, agent_pb2_grpc

# The real agent's channel options, plus a connection per stream (like N hosts).
CHANNEL_OPTIONS = [*AGENT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
TAG_BASE = 10_000  # rule ports below this are not benchmark tags


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Fleet:
    def __init__(self, n: int) -> None:
        self.n = n
        self.connected: set[int] = set()
        self.with_ports: set[int] = set()
        self.arrivals: dict[int, list[int]] = {}  # tag -> monotonic ns per stream
        self.seen: dict[int, set[int]] = {}  # tag -> streams that got it
        self.t0 = time.monotonic()
        self.ports_reported = False

    def first_message(self, i: int) -> None:
        if i in self.connected:
            return
        self.connected.add(i)
        if len(self.connected) == self.n:
            emit(f"CONNECTED {self.n} {time.monotonic() - self.t0:.3f}")

    def ports(self, i: int, count: int) -> None:
        if count and i not in self.with_ports:
            self.with_ports.add(i)
            if len(self.with_ports) == self.n and not self.ports_reported:
                self.ports_reported = True
                emit(f"PORTS {self.n}")

    def tags(self, i: int, tags: set[int], t_ns: int) -> None:
        for k in tags:
            seen = self.seen.setdefault(k, set())
            if i in seen:
                continue
            seen.add(i)
            lst = self.arrivals.setdefault(k, [])
            lst.append(t_ns)
            if len(lst) == self.n:
                s = sorted(lst)
                emit(f"TAG {k} {s[0]} {s[len(s) // 2]} {s[-1]}")
                del self.arrivals[k]


def _tags(groups: list[agent_pb2.HostSecurityGroup]) -> set[int]:
    out: set[int] = set()
    for g in groups:
        for r in g.rules:
            if r.HasField("port_range_min") and r.port_range_min >= TAG_BASE:
                out.add(r.port_range_min)
    return out


class Acks:
    """The latest revision, acked as the real agent does: after ACK_QUIET without a
    message, or ACK_MAX after the last ack while messages keep coming (checked every
    poll interval, as the real agent's converge loop does)."""

    def __init__(self) -> None:
        self.pending = 0
        self.acked = 0
        self.acked_at = 0.0
        self.last_message_at = 0.0

    def got(self, revision: int) -> None:
        self.pending = revision
        self.last_message_at = time.monotonic()

    async def run(self, call: Any) -> None:
        while True:
            await asyncio.sleep(DEFAULT_POLL_INTERVAL)
            now = time.monotonic()
            quiet = now - self.last_message_at >= ACK_QUIET
            if self.pending != self.acked and (quiet or now - self.acked_at >= ACK_MAX):
                self.acked, self.acked_at = self.pending, now
                await call.write(agent_pb2.AgentMessage(ack=agent_pb2.Ack(revision=self.acked)))


async def fake_agent(i: int, args: argparse.Namespace, fleet: Fleet) -> None:
    hello = agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(
            host=f"{args.prefix}{i:04d}",
            agent_type="Linux bridge agent",
            mechanism="linuxbridge",
            supported_network_types=["flat", "local", "vxlan"],
            physical_network_mappings={"physnet1": "eth1"},
            version="bench-fake",
        )
    )
    md = (("authorization", f"Bearer {args.token}"),)
    ports: set[str] = set()
    while True:
        channel = grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS)
        try:
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect(metadata=md)
            await call.write(hello)
            acks = Acks()
            ack_task = None if args.no_ack else asyncio.create_task(acks.run(call))
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                t_ns = time.monotonic_ns()
                assert isinstance(msg, agent_pb2.ControllerMessage)
                kind = msg.WhichOneof("kind")
                if kind == "snapshot":
                    ports = {p.id for p in msg.snapshot.state.ports}
                    fleet.tags(i, _tags(list(msg.snapshot.state.security_groups)), t_ns)
                    revision = msg.snapshot.revision
                elif kind == "delta":
                    d = msg.delta
                    ports.update(p.id for p in d.upsert_ports)
                    ports.difference_update(d.delete_ports)
                    fleet.tags(i, _tags(list(d.upsert_security_groups)), t_ns)
                    revision = d.revision
                else:
                    continue
                fleet.first_message(i)
                fleet.ports(i, len(ports))
                acks.got(revision)
            if ack_task is not None:
                ack_task.cancel()
            emit(f"ERR stream {i} ended by the controller")
        except grpc.aio.AioRpcError as err:
            emit(f"ERR stream {i}: {err.code().name}: {err.details()}")
        finally:
            await channel.close()
        await asyncio.sleep(0.5)


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args.hosts)
    tasks = [asyncio.create_task(fake_agent(i, args, fleet)) for i in range(args.hosts)]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = await reader.readline()
            if not line or line.strip() == b"quit":
                break
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fake_agents")
    p.add_argument("--target", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--prefix", default="fan")
    p.add_argument("--no-ack", action="store_true", help="do not ack (to measure what acks cost)")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise_nofile()
    asyncio.run(main(parse_args()))
