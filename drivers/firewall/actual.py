"""The firewall's part of a namespace's ruleset, read back from ``nft -j list ruleset``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.firewall.render import (
    BASE_CHAINS,
    BRIDGE,
    INET,
    MARKER,
    SKELETON_MARKER,
    TABLE,
    as_network,
    element_text,
)
from drivers.model import FrozenDict


@dataclass(frozen=True)
class Ruleset:
    """What is loaded. ``skeleton``: both tables exist with the current base chains.

    bridges: bridge names in the inet ``bridges`` set; zones: bridge -> ct zone;
    egress_ports / ingress_ports: mark value -> chain jumped to; port_from / port_to:
    tap -> chain jumped to (None: accept); chains: (family, name) -> digest found in
    its marker comment ("" when none); sets: remote-group set -> elements.
    """

    skeleton: bool = False
    bridges: frozenset[str] = frozenset()
    zones: Mapping[str, int] = field(default_factory=lambda: FrozenDict())
    egress_ports: Mapping[int, str | None] = field(default_factory=lambda: FrozenDict())
    ingress_ports: Mapping[int, str | None] = field(default_factory=lambda: FrozenDict())
    port_from: Mapping[str, str | None] = field(default_factory=lambda: FrozenDict())
    port_to: Mapping[str, str | None] = field(default_factory=lambda: FrozenDict())
    chains: Mapping[tuple[str, str], str] = field(default_factory=lambda: FrozenDict())
    sets: Mapping[str, frozenset[str]] = field(default_factory=lambda: FrozenDict())
    problems: tuple[str, ...] = ()


EMPTY = Ruleset()


def _verdict_target(value: Any) -> str | None:
    if isinstance(value, dict):
        for kind in ("jump", "goto"):
            if kind in value:
                return str(value[kind]["target"])
    return None


def _element_key(value: Any) -> Any:
    if isinstance(value, dict) and "elem" in value:  # element with a comment/timeout
        return _element_key(value["elem"]["val"])
    return value


def _set_element(value: Any) -> str:
    value = _element_key(value)
    if isinstance(value, str):
        return element_text(as_network(value))
    if isinstance(value, dict) and "prefix" in value:
        p = value["prefix"]
        return element_text(as_network(f"{p['addr']}/{p['len']}"))
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        return f"{lo}-{hi}"
    return json.dumps(value)


def parse_ruleset(text: str) -> Ruleset:
    """Pure: the Ruleset in ``nft -j list ruleset`` output (other tables are ignored)."""
    doc = json.loads(text) if text.strip() else {"nftables": []}
    tables: set[str] = set()
    chain_digest: dict[tuple[str, str], str] = {}
    base_marked: dict[tuple[str, str], bool] = {}
    maps: dict[tuple[str, str], list[Any]] = {}
    sets: dict[str, frozenset[str]] = {}
    bridges: frozenset[str] = frozenset()
    problems: list[str] = []
    for item in doc.get("nftables", []):
        (kind, body), *_ = item.items()
        if kind == "metainfo":
            continue
        family = body.get("family")
        if family not in (INET, BRIDGE):
            continue
        if kind == "table":
            if body.get("name") == TABLE:
                tables.add(family)
            continue
        if body.get("table") != TABLE:
            continue
        if kind == "chain":
            name = str(body["name"])
            if name in BASE_CHAINS[family]:
                base_marked.setdefault((family, name), False)
            else:
                chain_digest.setdefault((family, name), "")
        elif kind == "rule":
            comment = str(body.get("comment") or "")
            key = (family, str(body["chain"]))
            if comment == SKELETON_MARKER:
                base_marked[key] = True
            elif comment.startswith(MARKER) and key in chain_digest:
                chain_digest[key] = comment[len(MARKER) :]
        elif kind == "map":
            maps[(family, str(body["name"]))] = list(body.get("elem") or [])
        elif kind == "set":
            name = str(body["name"])
            raw = list(body.get("elem") or [])
            if name == "bridges" and family == INET:
                bridges = frozenset(str(_element_key(e)) for e in raw)
                maps[(family, name)] = raw
            elif family == INET and name.startswith(("rg4_", "rg6_")):
                try:
                    sets[name] = frozenset(_set_element(e) for e in raw)
                except ValueError as exc:
                    problems.append(f"set {name}: {exc}")
                    sets[name] = frozenset()
    skeleton = tables == {INET, BRIDGE} and all(
        base_marked.get((fam, name), False) for fam, names in BASE_CHAINS.items() for name in names
    )
    for fam, names in (
        (INET, ("bridges", "zones", "egress_ports", "ingress_ports")),
        (BRIDGE, ("port_from", "port_to")),
    ):
        for name in names:
            if (fam, name) not in maps:
                skeleton = False

    def pairs(fam: str, name: str) -> list[tuple[Any, Any]]:
        out = []
        for elem in maps.get((fam, name), []):
            if isinstance(elem, list) and len(elem) == 2:
                out.append((_element_key(elem[0]), elem[1]))
        return out

    return Ruleset(
        skeleton=skeleton,
        bridges=bridges,
        zones=FrozenDict((str(k), int(v)) for k, v in pairs(INET, "zones")),
        egress_ports=FrozenDict(
            (int(k), _verdict_target(v)) for k, v in pairs(INET, "egress_ports")
        ),
        ingress_ports=FrozenDict(
            (int(k), _verdict_target(v)) for k, v in pairs(INET, "ingress_ports")
        ),
        port_from=FrozenDict((str(k), _verdict_target(v)) for k, v in pairs(BRIDGE, "port_from")),
        port_to=FrozenDict((str(k), _verdict_target(v)) for k, v in pairs(BRIDGE, "port_to")),
        chains=FrozenDict(chain_digest),
        sets=FrozenDict(sets),
        problems=tuple(problems),
    )
