"""A DHCP client for workload namespaces: busybox udhcpc with a script of our own.

Never Debian's dhclient-script (it rewrites the host's /etc/resolv.conf: ip netns exec
does not isolate /etc). The script below only runs ``ip`` inside the namespace udhcpc
runs in, and writes what it was given to a file for the test to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

from tests.support.netns import NamespacePool

SCRIPT = r"""#!/bin/sh
# udhcpc hook: configure $interface in the current (workload) namespace only, with one
# `ip -batch` run per event (each exec costs milliseconds).
out="${BARYON_DHCP_OUT:-/dev/null}"
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ;;
bound|renew)
    {
        [ -n "$mtu" ] && echo "link set dev $interface mtu $mtu"
        echo "addr replace $ip/$mask dev $interface"
        if [ -n "$staticroutes" ]; then
            set -- $staticroutes
            while [ $# -ge 2 ]; do
                echo "route replace $1 via $2 dev $interface"
                shift 2
            done
        elif [ -n "$router" ]; then
            echo "route replace default via ${router%% *} dev $interface"
        fi
    } | ip -batch - || exit 1
    printf 'ip=%s\nmask=%s\nrouter=%s\ndns=%s\nmtu=%s\nhostname=%s\nstaticroutes=%s\nlease=%s\n' \
        "$ip" "$mask" "$router" "$dns" "$mtu" "$hostname" "$staticroutes" "$lease" > "$out.tmp"
    mv "$out.tmp" "$out"
    ;;
esac
exit 0
"""


def install_script(directory: str) -> str:
    path = os.path.join(directory, "udhcpc-hook.sh")
    with open(path, "w") as f:
        f.write(SCRIPT)
    os.chmod(path, 0o755)
    return path


@dataclass(frozen=True)
class Lease:
    values: dict[str, str]
    seconds: float  # udhcpc start -> exited after configuring

    def __getitem__(self, key: str) -> str:
        return self.values[key]


async def dhcp_lease(
    pool: NamespacePool, ns: str, script: str, out: str, *, ifname: str = "eth0", limit: float = 10
) -> Lease | None:
    """Run udhcpc once (-q) in ns; the lease it applied, or None (no lease). The
    process is tracked by the pool (killed by PID on cleanup) and killed on timeout."""
    _remove(out)
    started = time.monotonic()
    proc = await pool.spawn(
        ns, "env", f"BARYON_DHCP_OUT={out}",
        "busybox", "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1",
        "-O", "mtu", "-O", "staticroutes", "-s", script, "-i", ifname,
    )  # fmt: skip
    try:
        await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None
    elapsed = time.monotonic() - started
    values = _read_values(out)
    if proc.returncode != 0 or values is None:
        return None
    return Lease(values, elapsed)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _read_values(path: str) -> dict[str, str] | None:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    return dict(line.split("=", 1) for line in lines if "=" in line)
