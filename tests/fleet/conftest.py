"""Fixtures of the fleet's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Redis, redis_server


@pytest.fixture
def own_redis() -> Iterator[Redis]:
    """A Redis of the test's own, so that no other test's replicas hear its channels."""
    with redis_server() as redis:
        yield redis
