"""Fixtures shared by every test. Keep logic in tests/support/."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# The repository is not installed into the venv: make `controller`, `tests.support`
# and the other top-level packages importable.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from controller.etcd import EtcdClient  # noqa: E402
from tests.support.etcd import session_etcd  # noqa: E402
from tests.support.names import unique_key_prefix  # noqa: E402


@pytest.fixture(scope="session")
def etcd_endpoint() -> Iterator[str]:
    """Target of the etcd shared by the whole session (see tests/support/etcd.py)."""
    with session_etcd() as endpoint:
        yield endpoint


@pytest.fixture
async def etcd_client(etcd_endpoint: str) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_endpoint], timeout=5.0) as client:
        yield client


@pytest.fixture
def key_prefix() -> bytes:
    """A key prefix of this test's own: tests never see each other's keys."""
    return unique_key_prefix()
