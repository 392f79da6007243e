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


from tests.support.controller import Env, StartEnv, env_factory  # noqa: E402


@pytest.fixture
async def start_env(etcd_endpoint: str, key_prefix: bytes) -> AsyncIterator[StartEnv]:
    """``await start_env(**config_overrides)``: a started controller on this test's
    prefix (call it again for a second controller on the same prefix)."""
    async with env_factory(etcd_endpoint, key_prefix.decode()) as start:
        yield start


@pytest.fixture
async def env(start_env: StartEnv) -> Env:
    """A started controller with the default config, and admin / p1 / p2 clients."""
    return await start_env()
