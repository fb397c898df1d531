from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.inbound.jwt_support import KEYS, Clock, JwksEndpoint
from tests.support import Served, serve


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one JWKS server can serve a whole module (starting uvicorn per test is the slow part)."""
    return "asyncio"


@pytest.fixture(scope="module")
async def jwks_server() -> AsyncIterator[tuple[Served, JwksEndpoint]]:
    """A JWKS endpoint publishing KEYS; tests that change what it serves or count its fetches start their own."""
    endpoint = JwksEndpoint(KEYS)
    async with serve(endpoint.app) as served:
        yield served, endpoint


@pytest.fixture
def clock() -> Clock:
    """The verifier's time, moved by hand: no test sleeps."""
    return Clock()
