"""Wake the agent's converge loop when a port device appears, changes or goes away.

Without it the agent only notices a workload plugged after the port's Delta arrived at
its next ``--poll-interval`` round (the port stays DOWN for up to that long). This
listens to the kernel's link notifications (RTMGRP_LINK) in the node's namespace and
calls ``on_change`` for links whose name starts with one of ``prefixes``; the poll
stays as the safety net (a missed notification, a lost socket).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

from drivers.netlink import LinkMonitor

log = logging.getLogger(__name__)

RETRY_S = 1.0


async def watch_links(
    netns: str | None,
    on_change: Callable[[str | None], None],
    prefixes: tuple[str, ...] = ("tap",),
) -> None:
    """Run until cancelled; reopens the socket after errors. ``on_change(name)`` for a
    link that changed, ``on_change(None)`` when notifications may have been missed."""
    while True:
        monitor = None
        try:
            monitor = LinkMonitor(netns)
            on_change(None)  # whatever happened while not listening
            while True:
                try:
                    names = await monitor.changed()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    on_change(None)  # the kernel dropped notifications: resync
                    continue
                for name in names:
                    if name.startswith(prefixes):
                        on_change(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("link watch in %s failed (%r); retrying", netns or "this netns", exc)
            on_change(None)
            await asyncio.sleep(RETRY_S)
        finally:
            if monitor is not None:
                monitor.close()
