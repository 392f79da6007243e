"""Run etcd as a child process of the controller (or of a test session).

etcd is spawned with exec (never a fork that keeps running Python: grpc state
must not be duplicated), in its own session so a terminal's Ctrl-C does not reach
it, with PR_SET_PDEATHSIG so it dies with its parent, and it is stopped by PID.

By default it listens on a unix socket only, so there are no port clashes and no
network exposure. etcd insists on "host:port" URLs, so the listen URL is
``unix://<name>:0`` relative to etcd's working directory: the socket file on disk
is ``<socket_path>:0`` and the gRPC target is ``unix:<socket_path>:0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from controller.etcd.client import normalize_endpoint

__all__ = [
    "EmbeddedEtcd",
    "EtcdNotInstalled",
    "EtcdStartError",
    "etcd_binary",
]

log = logging.getLogger(__name__)

INSTALL_HINT: Final = (
    "etcd binary not found: install the Debian package etcd-server (apt-get install etcd-server)"
)

# Test timing from the platform notes: leader in ~0.1 s, failover in ~0.2 s.
_TUNED_FLAGS: Final = ("--heartbeat-interval", "10", "--election-timeout", "100")
_HEALTH_POLL_S: Final = 0.05
_SUPERVISE_POLL_S: Final = 0.2
_RESTART_BACKOFF_MAX_S: Final = 30.0
_LOG_TAIL_BYTES: Final = 2000
_LOG_ROTATE_BYTES: Final = 10 * 1024 * 1024
_PR_SET_PDEATHSIG: Final = 1


class EtcdNotInstalled(RuntimeError):
    """No etcd executable on PATH."""


class EtcdStartError(RuntimeError):
    """etcd exited or did not become healthy in time."""


def etcd_binary() -> str:
    """Absolute path of the etcd executable on PATH."""
    path = shutil.which("etcd")
    if path is None:
        raise EtcdNotInstalled(INSTALL_HINT)
    return path


def _set_pdeathsig() -> None:
    # Runs in the child between fork and exec; only used when setpriv is missing.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pdeathsig_prefix() -> tuple[list[str], Callable[[], None] | None]:
    """How to make etcd die with us: util-linux setpriv execs into etcd with the
    flag set, so no Python runs in the forked child; else a preexec_fn."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "TERM", "--"], None
    return [], _set_pdeathsig


class EmbeddedEtcd:
    """One etcd member owned by this process.

    ``data_dir`` holds etcd's data (in ``data/``), its log (``etcd.log``) and, by
    default, its unix socket. Pass ``client_url`` ("http://127.0.0.1:2379") to
    listen on TCP instead. ``peer_url``/``initial_cluster`` make it a member of a
    multi-member cluster; by default it is a single member with a peer port
    chosen by the kernel. ``tuned`` selects the fast test timing.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        name: str = "baryon",
        socket_path: Path | None = None,
        client_url: str | None = None,
        tuned: bool = False,
        peer_url: str = "http://127.0.0.1:0",
        initial_cluster: str | None = None,
        initial_cluster_token: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if socket_path is not None and client_url is not None:
            raise ValueError("pass socket_path or client_url, not both")
        self.data_dir = Path(data_dir).absolute()
        self.name = name
        self.client_url = client_url
        self.socket_path: Path | None = None
        if client_url is None:
            self.socket_path = Path(socket_path or self.data_dir / "etcd.sock").absolute()
        self.tuned = tuned
        self.peer_url = peer_url
        self.initial_cluster = initial_cluster or f"{name}={peer_url}"
        self.initial_cluster_token = initial_cluster_token or f"baryon-{name}"
        self.extra_args = list(extra_args)
        self.log_path = self.data_dir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0

    # ---- addressing

    @property
    def endpoint(self) -> str:
        """The target to give EtcdClient."""
        if self.client_url is not None:
            return normalize_endpoint(self.client_url)
        return f"unix:{self._socket_file}"

    @property
    def _socket_file(self) -> Path:
        assert self.socket_path is not None
        return self.socket_path.with_name(self.socket_path.name + ":0")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """etcd's argv (without the pdeathsig wrapper)."""
        if self.client_url is not None:
            client_url = self.client_url
        else:
            assert self.socket_path is not None
            client_url = f"unix://{self.socket_path.name}:0"
        argv = [
            etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir / "data"),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            self.initial_cluster_token,
            "--initial-cluster-state",
            "new",
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1h",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn" if self.tuned else "info",
        ]
        if self.tuned:
            argv += _TUNED_FLAGS
        return argv + self.extra_args

    # ---- lifecycle

    def launch(self) -> int:
        """Spawn etcd without waiting for it; returns its PID."""
        if self.running():
            raise EtcdStartError(f"etcd {self.name} is already running (pid {self.pid})")
        argv = self.command()  # raises EtcdNotInstalled first
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cwd = self.data_dir
        if self.socket_path is not None:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._remove_stale_socket()
            cwd = self.socket_path.parent
        self._rotate_log()
        prefix, preexec = _pdeathsig_prefix()
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                prefix + argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Only without setpriv: a prctl() call, no grpc object is touched.
                preexec_fn=preexec,
            )
        log.info("started etcd %s (pid %d) on %s", self.name, self._proc.pid, self.endpoint)
        return self._proc.pid

    def _rotate_log(self) -> None:
        # The log is appended to across restarts; keep one previous generation.
        try:
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass

    def _remove_stale_socket(self) -> None:
        # A killed etcd leaves its socket file behind and the next bind fails.
        # Refuse to steal a socket somebody still answers on.
        path = self._socket_file
        if not path.exists():
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)
                return
        raise EtcdStartError(f"another process is serving on {path}")

    async def start(self, timeout: float = 10.0) -> None:
        """Spawn etcd and wait until it reports healthy (has a leader, serves reads)."""
        self.launch()
        try:
            await self.wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    def start_blocking(self, timeout: float = 10.0) -> None:
        """``start`` for code without an event loop (test session set-up)."""
        self.launch()
        try:
            self.wait_ready_blocking(timeout)
        except BaseException:
            self.kill()
            raise

    async def wait_ready(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._check_alive()
            if await health_async(self.endpoint, _HEALTH_POLL_S * 4):
                return
            if loop.time() >= deadline:
                raise EtcdStartError(
                    f"etcd {self.name} not healthy after {timeout}s\n{self.log_tail()}"
                )
            await asyncio.sleep(_HEALTH_POLL_S)

    def wait_ready_blocking(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if health_blocking(self.endpoint, _HEALTH_POLL_S * 4):
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"etcd {self.name} not healthy after {timeout}s\n{self.log_tail()}"
                )
            time.sleep(_HEALTH_POLL_S)

    def _check_alive(self) -> None:
        if self._proc is None:
            raise EtcdStartError(f"etcd {self.name} was not started")
        code = self._proc.poll()
        if code is not None:
            raise EtcdStartError(f"etcd {self.name} exited with {code}\n{self.log_tail()}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop supervision, then SIGTERM, then SIGKILL after ``grace`` seconds."""
        await self._stop_supervisor()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            await _wait_exit(proc, grace)
        self.kill()

    def stop_blocking(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self.kill()

    def kill(self) -> None:
        """SIGKILL etcd by PID and reap it (also how tests simulate a crash)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGKILL)
            proc.wait()
        log.info("etcd %s (pid %d) exited with %s", self.name, proc.pid, proc.returncode)

    async def __aenter__(self) -> EmbeddedEtcd:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- supervision

    def supervise(self) -> asyncio.Task[None]:
        """Restart etcd whenever it dies, until ``stop()``. Call after ``start()``."""
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"etcd-supervisor-{self.name}"
            )
        return self._supervisor

    async def _stop_supervisor(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _supervise(self) -> None:
        backoff = 0.5
        while True:
            await asyncio.sleep(_SUPERVISE_POLL_S)
            if self.running():
                continue
            code = self._proc.returncode if self._proc is not None else None
            log.error("etcd %s exited (%s); restarting\n%s", self.name, code, self.log_tail())
            try:
                await self.start_again()
            except (EtcdStartError, OSError) as err:
                log.error("restarting etcd %s failed: %s", self.name, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RESTART_BACKOFF_MAX_S)
                continue
            backoff = 0.5
            self.restarts += 1
            log.warning("etcd %s restarted (pid %s)", self.name, self.pid)

    async def start_again(self, timeout: float = 10.0) -> None:
        """Start a member that has exited, on its existing data."""
        self.kill()  # reap whatever is left
        self.launch()
        try:
            await self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - _LOG_TAIL_BYTES, 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


async def _wait_exit(proc: subprocess.Popen[bytes], grace: float) -> None:
    # Polling, because the process is not an asyncio child: it must outlive the
    # event loop that started it (test sessions run many loops).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        if proc.poll() is not None or loop.time() >= deadline:
            return
        await asyncio.sleep(0.02)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ---- health probe: etcd's GET /health over the client listener (HTTP/1.1, no grpc)

_HEALTH_REQUEST: Final = b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n"


def _healthy(response: bytes) -> bool:
    return response.startswith(b"HTTP/1.1 200") and b'"health":"true"' in response


def _address(endpoint: str) -> str | tuple[str, int]:
    """A socket address: a path for "unix:" targets, else (host, port)."""
    if endpoint.startswith("unix:"):
        return endpoint.removeprefix("unix:").removeprefix("//")
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def health_blocking(endpoint: str, timeout: float) -> bool:
    """True if the member at ``endpoint`` (an EmbeddedEtcd.endpoint) is healthy."""
    addr = _address(endpoint)
    if isinstance(addr, str):
        family = socket.AF_UNIX
    else:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(addr)
            sock.sendall(_HEALTH_REQUEST)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return False
    return _healthy(b"".join(chunks))


async def health_async(endpoint: str, timeout: float) -> bool:
    addr = _address(endpoint)
    try:
        async with asyncio.timeout(timeout):
            if isinstance(addr, str):
                reader, writer = await asyncio.open_unix_connection(addr)
            else:
                reader, writer = await asyncio.open_connection(*addr)
            try:
                writer.write(_HEALTH_REQUEST)
                response = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return _healthy(response)
