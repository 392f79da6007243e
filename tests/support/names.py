"""Names for everything a test run creates, so a run's leftovers are recognisable.

Every interface, namespace, bridge or key a test makes should carry RUN_PREFIX.
It is short because Linux interface names are limited to 15 characters.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import uuid
from typing import Final

IFNAME_MAX: Final = 15

# Kept in the environment so that this module imported under two names
# ("tests.support.names" and "support.names") and the processes tests start
# all agree on one prefix per run.
RUN_PREFIX: Final = os.environ.setdefault("BARYON_TEST_RUN_PREFIX", "by" + secrets.token_hex(2))


def _shared_counter() -> itertools.count[int]:
    # Same reason: both copies of this module must draw from one counter, or
    # they would hand out the same names.
    for alias in ("tests.support.names", "support.names"):
        counter = getattr(sys.modules.get(alias), "_counter", None)
        if isinstance(counter, itertools.count):
            return counter
    return itertools.count()


_counter = _shared_counter()


def unique(name: str = "", *, max_len: int | None = None) -> str:
    """``<RUN_PREFIX><name>_<n>``: unique within this run, recognisably ours.

    The "_" keeps it unambiguous (the counter has none), e.g. "by3f0abr_1".
    """
    result = f"{RUN_PREFIX}{name}_{next(_counter):x}"
    if max_len is not None and len(result) > max_len:
        raise ValueError(f"{result!r} is longer than {max_len} characters")
    return result


def unique_ifname(name: str = "") -> str:
    """A unique name that fits a Linux interface name."""
    return unique(name, max_len=IFNAME_MAX)


def unique_key_prefix() -> bytes:
    """An etcd key prefix no other test uses: b"/t/<uuid>/"."""
    return f"/t/{uuid.uuid4().hex}/".encode()
