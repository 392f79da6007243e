"""Supervised dnsmasq processes: started in a namespace, found again by PID file and
command line, signalled and stopped by PID only.

dnsmasq runs in the foreground as a child of this process (``--keep-in-foreground``),
so this process reaps it when it exits (no zombie is left for an init that might not
reap). The ``subprocess.Popen`` objects are kept in a process-wide registry, so a new
driver instance in the same process (a restarted service) still reaps the children an
older one started; an agent process that restarts adopts its running dnsmasq by PID
file (whose exact command line is checked, so a recycled PID is never signalled).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Sequence

_children: dict[int, subprocess.Popen[bytes]] = {}


class ProcessError(Exception):
    pass


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def cmdline(pid: int) -> tuple[str, ...] | None:
    """The live process' argv (None: gone, or a zombie)."""
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # state is the field after the parenthesised comm (which may contain spaces)
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        if state in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    if not raw:
        return None
    return tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


async def start(netns: str, argv: Sequence[str], pid_file: str, log_file: str) -> int:
    """Start argv in netns; returns its PID once it has written pid_file (it is ready)."""
    try:
        os.unlink(pid_file)
    except FileNotFoundError:
        pass
    child = _spawn(["ip", "netns", "exec", netns, *argv], log_file)
    _children[child.pid] = child  # `ip netns exec` execs argv: same PID
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if child.poll() is not None:
            _children.pop(child.pid, None)
            raise ProcessError(f"{argv[0]} exited with {child.returncode}: {_tail(log_file)}")
        if read_pid(pid_file) == child.pid:
            return child.pid
        await asyncio.sleep(0.002)
    await stop(child.pid)
    raise ProcessError(f"{argv[0]} did not write {pid_file} in time")


def _spawn(argv: list[str], log_file: str) -> subprocess.Popen[bytes]:
    """fork+exec only (no waiting); own session, so no signal meant for us reaches it."""
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-500:].decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


async def stop(pid: int, *, grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL after `grace`; returns once the process is gone."""
    if not signal_pid(pid, signal.SIGTERM):
        _reap(pid)
        return
    deadline = time.monotonic() + grace
    killed = False
    while cmdline(pid) is not None:
        if time.monotonic() > deadline:
            if killed:
                raise ProcessError(f"process {pid} survives SIGKILL")
            signal_pid(pid, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + 5.0
        await asyncio.sleep(0.005)
    child = _children.pop(pid, None)
    if child is not None:
        await asyncio.to_thread(child.wait)
