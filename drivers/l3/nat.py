"""A router's NAT, rendered as one nftables table and loaded in one transaction.

Table ``ip baryon_router`` in the router namespace:

* prerouting (dstnat): ``ip daddr FIP dnat to FIXED`` for every floating IP (from
  outside and from inside alike);
* postrouting (srcnat), first match wins:
  1. ``oifname GW ip saddr FIXED snat to FIP``: a workload with a floating IP leaves
     with it;
  2. ``ct status dnat iifname != GW snat to GW_IP``: hairpin - a connection to a
     floating IP that came from inside goes back in through the router (otherwise the
     target would answer the client directly, from its fixed IP);
  3. (enable_snat) ``oifname GW snat to GW_IP``: everything else leaving by the
     gateway (Neutron SNATs all of it, routed prefixes included).

A digest of the rendered body is stored in the comment of the last rule of
postrouting (a no-op ``accept``: the policy is accept anyway; nft 1.0.6 does not list
table comments in JSON), so the read-back compares one string. Every floating IP rule
carries a comment ``fip <floating> <fixed>`` so the mappings loaded can be read back
(the conntrack entries of a mapping that goes away are flushed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from drivers.l3.model import FloatingIp, RouterSpec
from drivers.l3.naming import gateway_device

TABLE = "baryon_router"
DIGEST_PREFIX = "baryon:"
FIP_COMMENT = "fip"


def render_body(spec: RouterSpec) -> str:
    """The table's chains (pure). Empty chains when the router has no gateway."""
    pre: list[str] = []
    post: list[str] = []
    gw_ip = spec.gateway_ip
    if spec.gateway is not None and gw_ip is not None:
        gw = gateway_device(spec.gateway.port_id)
        for fip in spec.floating_ips:
            note = f'comment "{FIP_COMMENT} {fip.floating_ip} {fip.fixed_ip}"'
            pre.append(f"ip daddr {fip.floating_ip} dnat to {fip.fixed_ip} {note}")
            post.append(f'oifname "{gw}" ip saddr {fip.fixed_ip} snat to {fip.floating_ip} {note}')
        post.append(f'ct status dnat iifname != "{gw}" snat to {gw_ip}')
        if spec.enable_snat:
            post.append(f'oifname "{gw}" snat to {gw_ip}')

    def chain(name: str, hook: str, priority: str, rules: list[str]) -> str:
        body = "".join(f"\t\t{r}\n" for r in rules)
        return (
            f"\tchain {name} {{\n\t\ttype nat hook {hook} priority {priority}; policy accept;\n"
            f"{body}\t}}\n"
        )

    return chain("prerouting", "prerouting", "dstnat", pre) + chain(
        "postrouting", "postrouting", "srcnat", post
    )


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def render_script(spec: RouterSpec) -> str:
    """Replace the table atomically: create-if-missing, delete, create anew (one nft run)."""
    body = render_body(spec)
    marker = f'add rule ip {TABLE} postrouting accept comment "{DIGEST_PREFIX}{digest(body)}"'
    return f"table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n{body}}}\n{marker}\n"


@dataclass(frozen=True)
class LoadedNat:
    """What ``nft -j list ruleset`` says about our table (None digest: no table)."""

    digest: str | None = None
    floating_ips: frozenset[FloatingIp] = frozenset()


def parse_ruleset(text: str) -> LoadedNat:
    """Pure: our table's digest and floating IP mappings, from ``nft -j list ruleset``."""
    doc = json.loads(text) if text.strip() else {"nftables": []}
    found: str | None = None
    fips: set[FloatingIp] = set()
    for item in doc.get("nftables", []):
        table = item.get("table")
        if table is not None and table.get("family") == "ip" and table.get("name") == TABLE:
            found = found or ""  # the table exists (with a marker, if one follows)
        rule = item.get("rule")
        if rule is not None and rule.get("table") == TABLE and rule.get("family") == "ip":
            comment = str(rule.get("comment", ""))
            if comment.startswith(DIGEST_PREFIX):
                found = comment[len(DIGEST_PREFIX) :]
            words = comment.split()
            if len(words) == 3 and words[0] == FIP_COMMENT:
                try:
                    fips.add(FloatingIp(words[1], words[2]))
                except ValueError:
                    continue
    return LoadedNat(found, frozenset(fips))


DELETE_SCRIPT = f"table ip {TABLE}\ndelete table ip {TABLE}\n"
