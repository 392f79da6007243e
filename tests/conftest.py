"""Fixtures shared by every test. Keep logic in tests/support/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from controller.etcd import EtcdClient
from tests.support.etcd import session_etcd
from tests.support.names import unique_key_prefix


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


# In-process controller fixtures (env, start_env): see tests/support/controller.py.
from tests.support.controller import env, start_env  # noqa: E402, F401
