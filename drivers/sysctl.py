"""Per-namespace sysctls (/proc/sys/net is resolved in the network namespace of the
thread that opens it).

For a named namespace the work runs in a fresh thread that first joins the namespace
(setns with CLONE_NEWNET affects only the calling thread) and then exits, releasing the
namespace. Such a thread is never reused, so nothing else ever runs in the wrong
namespace, and a failing setns means the work does not run at all.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from drivers.netlink import netns_path

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# Per-device IPv6 settings for devices that only forward frames: no addresses, no
# router solicitations, no DAD/MLD chatter into the overlay.
IPV6_OFF = {"disable_ipv6": "1", "autoconf": "0", "accept_ra": "0"}


def _enter_netns(name: str) -> None:
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


async def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run a blocking `fn` in a throwaway thread inside `netns` (None: current)."""
    if netns is None:
        return await asyncio.to_thread(fn)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, exc: BaseException | None) -> None:
        if fut.cancelled():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        try:
            _enter_netns(netns)
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=body, name=f"netns-{netns}", daemon=True).start()
    return await fut


def _conf_path(device: str, key: str) -> str:
    if "/" in device or device in ("", ".", ".."):
        raise ValueError(f"bad device name {device!r}")
    return f"/proc/sys/net/ipv6/conf/{device}/{key}"


def _write_device_conf(items: Iterable[tuple[str, Mapping[str, str]]]) -> None:
    for device, settings in items:
        for key, value in settings.items():
            with open(_conf_path(device, key), "w") as f:
                f.write(value)


def _read_ipv6_disabled(devices: Iterable[str]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for device in devices:
        try:
            with open(_conf_path(device, "disable_ipv6")) as f:
                out[device] = f.read().strip() == "1"
        except FileNotFoundError:
            continue
    return out


async def disable_ipv6(netns: str | None, devices: Iterable[str]) -> None:
    """Turn IPv6 off (and autoconf/accept_ra) on `devices` in `netns`."""
    items = [(d, IPV6_OFF) for d in devices]
    if items:
        await run_in_netns(netns, lambda: _write_device_conf(items))


async def ipv6_disabled(netns: str | None, devices: Iterable[str]) -> dict[str, bool]:
    """device -> whether IPv6 is disabled on it (devices that vanished are left out)."""
    names = list(devices)
    if not names:
        return {}
    return await run_in_netns(netns, lambda: _read_ipv6_disabled(names))
