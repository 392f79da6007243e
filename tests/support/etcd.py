"""etcd for tests.

* ``session_etcd()``: the one tuned single member a test session shares, on
  /dev/shm behind a unix socket (ready in ~0.1 s, no ports). Set
  BARYON_TEST_ETCD=<endpoint> to use an etcd you run yourself instead.
* ``private_etcd()`` / ``etcd_cluster()``: members a test owns, for tests that
  kill, restart or compact etcd and must not disturb the others.

Every member is killed by PID when its context exits, even on failure; the
session member is also killed at interpreter exit, and dies with its parent
(PR_SET_PDEATHSIG) if pytest itself is killed.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from controller.etcd import EmbeddedEtcd
from tests.support.names import RUN_PREFIX

_SHM = Path("/dev/shm")


def scratch_dir(tag: str) -> Path:
    """A fresh directory on tmpfs when there is one (etcd fsyncs: tmpfs makes it free)."""
    base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-{tag}-", dir=base))


@contextmanager
def session_etcd() -> Iterator[str]:
    """Start the shared test etcd; yields its endpoint."""
    external = os.environ.get("BARYON_TEST_ETCD")
    if external:
        yield external
        return
    directory = scratch_dir("etcd")
    etcd = EmbeddedEtcd(directory, name="t", tuned=True)
    # If the session dies before the finally below runs.
    atexit.register(etcd.kill)
    try:
        etcd.start_blocking(timeout=15)
        yield etcd.endpoint
    finally:
        etcd.kill()
        atexit.unregister(etcd.kill)
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def private_etcd(name: str = "p", **kwargs: Any) -> AsyncIterator[EmbeddedEtcd]:
    """A tuned single member only this test uses (kwargs go to EmbeddedEtcd)."""
    directory = scratch_dir(name)
    etcd = EmbeddedEtcd(directory, name=name, tuned=True, **kwargs)
    try:
        await etcd.start()
        yield etcd
    finally:
        etcd.kill()
        shutil.rmtree(directory, ignore_errors=True)


def _free_tcp_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is chosen so they are distinct;
    # another process could still take one before etcd binds (rare, loopback only).
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@asynccontextmanager
async def etcd_cluster(size: int = 3) -> AsyncIterator[list[EmbeddedEtcd]]:
    """``size`` tuned members forming one cluster; clients on unix sockets,
    peers on loopback TCP."""
    directory = scratch_dir("cluster")
    peers = [f"http://127.0.0.1:{port}" for port in _free_tcp_ports(size)]
    names = [f"m{i}" for i in range(size)]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peers, strict=True))
    members = [
        EmbeddedEtcd(
            directory / n,
            name=n,
            tuned=True,
            peer_url=p,
            initial_cluster=initial,
            initial_cluster_token=f"{RUN_PREFIX}-{directory.name}",
        )
        for n, p in zip(names, peers, strict=True)
    ]
    try:
        # Health needs a leader, so every member must be running first.
        for member in members:
            member.launch()
        await asyncio.gather(*(m.wait_ready(15) for m in members))
        yield members
    finally:
        for member in members:
            member.kill()
        shutil.rmtree(directory, ignore_errors=True)
