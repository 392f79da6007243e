"""Agent liveness: one etcd lease per controller carries the ``agent_alive`` keys of
every agent it serves.

A lease per agent would cost one keep-alive round trip per agent every TTL/3 (1,000
agents at TTL 2 s: 1,500 refreshes a second, a quarter of a core with nothing
happening). With one lease the cost does not grow with the number of agents, and the
bounds stay the same:

* the controller dies or loses etcd: its lease expires, and every agent it served is
  dead within one TTL unless it has re-registered with another controller (which moves
  its key to that controller's lease);
* an agent's stream ends: the controller deletes the agent's key one TTL later, unless
  a newer session of that agent has written it since (the delete is conditional), so an
  agent that restarts or moves to another controller within the TTL never looks dead.
"""

from __future__ import annotations

import asyncio
import logging

from controller.etcd.client import EtcdClient, LeaseKeeper

log = logging.getLogger(__name__)


class LivenessLease:
    def __init__(self, etcd: EtcdClient, ttl: int) -> None:
        self.etcd = etcd
        self.ttl = max(1, ttl)
        self._lock = asyncio.Lock()
        self._lease = 0
        self._lost = asyncio.Event()
        self._keeper: LeaseKeeper | None = None

    async def acquire(self) -> tuple[int, asyncio.Event]:
        """The current lease and the event set when it is lost (a fresh lease is
        granted after a loss: the sessions on the lost one end and reconnect)."""
        async with self._lock:
            if self._keeper is None or self._lost.is_set():
                lease_id, ttl = await self.etcd.lease_grant(self.ttl)
                lost = asyncio.Event()

                def on_lost(_: int, lost: asyncio.Event = lost) -> None:
                    log.warning("agent liveness lease %x lost: agent streams will end", lease_id)
                    lost.set()

                self._keeper = self.etcd.keep_lease_alive(lease_id, ttl, on_lost=on_lost)
                self._lease, self._lost = lease_id, lost
            return self._lease, self._lost

    async def close(self) -> None:
        """Stop refreshing, do not revoke: the agents stay alive for one TTL while they
        move to another controller."""
        if self._keeper is not None:
            await self._keeper.stop()
            self._keeper = None
