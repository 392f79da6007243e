"""OpenFlow flows as values: rendered for ``ovs-ofctl`` and parsed back from its dump.

Flows are written in the form ``ovs-ofctl -O OpenFlow13 dump-flows --names`` prints
them (``pop_vlan``, ``push_vlan:0x8100,set_field:4101->vlan_vid``,
``set_field:0x3e9->tun_id``, ``goto_table:3``, port names), so that a flow read back
compares equal to the flow that was written: that is what makes the plan empty once
the bridge is converged. Match fields are compared as a set (OVS reorders them),
actions as the exact string (their order matters).

All flows of a group share one cookie (drivers.ovs.naming.cookie_for); a group is
replaced atomically with one ``--bundle``: ``delete cookie=C/-1`` then its ``add``s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from drivers.ovs.naming import COOKIE_MASK, is_our_cookie

OFCTL = "ovs-ofctl"
OPENFLOW = "OpenFlow13"
DEFAULT_PRIORITY = 32768


class OfctlError(Exception):
    pass


@dataclass(frozen=True, slots=True, order=True)
class Flow:
    table: int
    priority: int
    match: tuple[str, ...]  # "field=value" (or a bare protocol word), kept sorted
    actions: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "match", tuple(sorted(self.match)))

    def render(self, cookie: int) -> str:
        fields = [f"cookie={cookie:#x}", f"table={self.table}", f"priority={self.priority}"]
        return ",".join([*fields, *self.match]) + f" actions={self.actions}"

    def __str__(self) -> str:
        match = ",".join(self.match)
        return f"table={self.table},priority={self.priority},{match} actions={self.actions}"


def flow(table: int, priority: int, *match: str, actions: str) -> Flow:
    return Flow(table, priority, tuple(match), actions)


def vlan_vid(tag: int) -> int:
    """The OpenFlow 1.3 vlan_vid value of a tagged frame (OFPVID_PRESENT | tag)."""
    return 0x1000 | tag


def parse_flow_line(line: str) -> tuple[int, Flow] | None:
    """(cookie, flow) from one dump-flows line (--no-stats); None for anything else."""
    text = line.strip().replace('"', "")
    if " actions=" not in text:
        return None
    head, actions = text.split(" actions=", 1)
    cookie, table, priority = 0, 0, DEFAULT_PRIORITY
    match: list[str] = []
    for token in head.replace(", ", ",").split(","):
        token = token.strip()
        if not token:
            continue
        key, _, value = token.partition("=")
        if key == "cookie":
            cookie = int(value, 0)
        elif key == "table":
            table = int(value)
        elif key == "priority":
            priority = int(value)
        else:
            match.append(token)
    return cookie, Flow(table, priority, tuple(match), actions.strip())


def parse_dump(text: str) -> dict[int, frozenset[Flow]]:
    """Our flows (cookie with Baryon's prefix) of a dump, grouped by cookie."""
    groups: dict[int, set[Flow]] = {}
    for line in text.splitlines():
        parsed = parse_flow_line(line)
        if parsed is None or not is_our_cookie(parsed[0]):
            continue
        groups.setdefault(parsed[0], set()).add(parsed[1])
    return {cookie: frozenset(flows) for cookie, flows in groups.items()}


def render_bundle(replace: Mapping[int, Iterable[Flow]], delete: Iterable[int] = ()) -> str:
    """ovs-ofctl add-flows input that replaces groups `replace` and deletes `delete`."""
    lines: list[str] = []
    for cookie in delete:
        lines.append(f"delete cookie={cookie:#x}/{COOKIE_MASK:#x}")
    for cookie, flows in replace.items():
        lines.append(f"delete cookie={cookie:#x}/{COOKIE_MASK:#x}")
        lines.extend("add " + f.render(cookie) for f in sorted(flows))
    return "\n".join(lines) + "\n"


async def _ofctl(*argv: str, stdin: str | None = None, time_limit: float = 10.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        OFCTL,
        "-O",
        OPENFLOW,
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), time_limit
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise OfctlError(f"ovs-ofctl {' '.join(argv)}: timed out") from None
    if proc.returncode != 0:
        raise OfctlError(f"ovs-ofctl {' '.join(argv)}: {err.decode().strip()}")
    return out.decode()


async def dump_flows(target: str) -> dict[int, frozenset[Flow]]:
    return parse_dump(await _ofctl("--no-stats", "--names", "dump-flows", target))


async def apply_bundle(target: str, bundle: str) -> None:
    """Apply add-flows input atomically (one OpenFlow bundle)."""
    await _ofctl("--bundle", "add-flows", target, "-", stdin=bundle)
