"""Wake the agent's converge loop when a port device appears, changes or goes away.

Without it the agent only notices a workload plugged after the port's Delta arrived at
its next ``--poll-interval`` round (the port stays DOWN for up to that long). This
listens to the kernel's link notifications (RTMGRP_LINK) in the node's namespace and
calls ``on_change`` for links whose name starts with one of ``prefixes``; the poll
stays as the safety net (a missed notification, a lost socket).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

from drivers.netlink import netns_exists

log = logging.getLogger(__name__)

RETRY_S = 1.0


async def watch_links(
    netns: str | None, on_change: Callable[[], None], prefixes: tuple[str, ...] = ("tap",)
) -> None:
    """Run until cancelled; reopens the socket after errors."""
    while True:
        ipr = None
        try:
            if netns is not None and not netns_exists(netns):
                raise FileNotFoundError(f"network namespace {netns!r} does not exist")
            if netns is None:
                ipr = AsyncIPRoute(groups=RTMGRP_LINK)
            else:
                ipr = AsyncIPRoute(netns=netns, flags=0, groups=RTMGRP_LINK)
            await ipr.bind(groups=RTMGRP_LINK)
            while True:
                got = False
                async for msg in ipr.get():
                    got = True
                    name = msg.get_attr("IFLA_IFNAME") or ""
                    if name.startswith(prefixes):
                        on_change()
                if not got:
                    await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("link watch in %s failed (%r); retrying", netns or "this netns", exc)
            await asyncio.sleep(RETRY_S)
        finally:
            if ipr is not None:
                ipr.close()
