"""`baryon controller`: the gRPC API server over etcd (embedded by default)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.agents.service import AgentService
from controller.api.servicers import Api
from controller.auth import TokenTable
from controller.config import Config, default_state_dir, load_config
from controller.etcd.client import EtcdClient
from controller.etcd.embedded import EmbeddedEtcd, EtcdNotInstalled
from controller.scheduler import Scheduler
from controller.services.floating_ips import FloatingIPService
from controller.services.networks import NetworkService
from controller.services.ports import PortService
from controller.services.routers import RouterService
from controller.services.security_groups import SecurityGroupService
from controller.services.subnets import SubnetService
from controller.store import Store
from controller.typedrivers.registry import load_type_drivers

log = logging.getLogger("baryon.controller")

# Keepalive so agents' long-lived streams notice a dead peer in seconds
# (see the platform notes: ping_timeout decides, clients ping every 10 s).
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    # The key gRPC core actually reads (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS);
    # without it agents pinging every 6 s get GOAWAY "too_many_pings" after ~20 s.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="baryon controller", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:9696", help="HOST:PORT (default %(default)s)")
    p.add_argument(
        "--etcd",
        default="",
        help="etcd endpoints URL[,URL...]; empty: start an embedded etcd in the state dir",
    )
    p.add_argument("--tokens", type=Path, help="TOML file of [[tokens]] token/project_id/roles")
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--state-dir", type=Path, default=None, help="default: $BARYON_STATE_DIR")
    p.add_argument("--etcd-prefix", default=None, help="key prefix (default /baryon/)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default=os.environ.get("BARYON_EVENT_LOOP", "auto"),
        help="auto (default; or $BARYON_EVENT_LOOP): uvloop when installed, else asyncio",
    )
    return p.parse_args(argv)


class Controller:
    """Everything one controller process runs; start() and stop() in that order."""

    def __init__(self, cfg: Config, tokens: TokenTable, endpoints: list[str], listen: str) -> None:
        self.cfg = cfg
        self.tokens = tokens
        self.endpoints = endpoints
        self.listen = listen
        self.etcd: EtcdClient | None = None
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.agents: AgentService | None = None
        self.scheduler: Scheduler | None = None
        self.port = 0

    async def start(self) -> None:
        self.etcd = EtcdClient(self.endpoints)
        await self.etcd.connect()
        self.store = Store(self.etcd, self.cfg.etcd_prefix)
        await self.store.start()
        # What is loaded now (modules, the cache) lives as long as the process: keep
        # it out of every future collection.
        gc.freeze()
        drivers = load_type_drivers(self.cfg.ml2)
        sgs = SecurityGroupService(self.store, self.cfg)
        ports = PortService(self.store, self.cfg, sgs)
        api = Api(
            self.tokens,
            NetworkService(self.store, self.cfg, drivers),
            SubnetService(self.store, self.cfg),
            ports,
            sgs,
            RouterService(self.store, self.cfg, ports),
            FloatingIPService(self.store, self.cfg, ports),
        )
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        names = api.register(self.server)
        self.agents = AgentService(self.store, self.cfg, self.tokens)
        self.agents.start()
        names += self.agents.register(self.server)
        self.scheduler = Scheduler(self.store, self.cfg, ports)
        await self.scheduler.start()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names += [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(self.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("controller serving on %s (etcd %s)", self.listen, ",".join(self.endpoints))

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            if self.agents is not None:
                await self.agents.close()  # agent streams would hold stop() for its grace
            await self.server.stop(1.0)
        if self.store is not None:
            await self.store.stop()
        if self.etcd is not None:
            await self.etcd.close()


async def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or default_state_dir()
    cfg = load_config(args.config)
    if args.etcd_prefix:
        cfg.etcd_prefix = args.etcd_prefix
    if args.tokens:
        tokens = TokenTable.load(args.tokens)
    else:
        tokens, path = TokenTable.generated_admin(state_dir)
        log.info("no --tokens file: admin token in %s", path)
    embedded: EmbeddedEtcd | None = None
    if args.etcd:
        endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
    else:
        embedded = EmbeddedEtcd(state_dir / "etcd")
        await embedded.start()
        endpoints = [embedded.endpoint]
        log.info("embedded etcd at %s", embedded.endpoint)
    controller = Controller(cfg, tokens, endpoints, args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await controller.stop()
        if embedded is not None:
            await embedded.stop()
    return 0


# The default first threshold (700 allocations) collects so often that objects living
# for one fan-out round (~1,000 stream writes in flight) survive two collections and are
# promoted, and every ~25 % growth of the old generation costs a full collection:
# 100-170 ms pauses every few changes with 1,000 agent streams. Young collections every
# 50,000 allocations let those objects die young; a young collection stays ~1-2 ms.
GC_THRESHOLDS = (50_000, 20, 100)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop takes 10-20 % off every request's CPU (the controller is CPU-bound: the
    gRPC server, the etcd client and the fan-out share one loop); grpc.aio runs on any
    asyncio loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    gc.set_threshold(*GC_THRESHOLDS)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
            return runner.run(run(args))
    except (EtcdNotInstalled, ValueError, OSError) as e:
        # Configuration and environment problems: one clear line, no traceback.
        print(f"baryon controller: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
