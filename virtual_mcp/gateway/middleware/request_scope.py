"""Per request on the MCP endpoints: an id and a phase timing, bound wherever the request's work runs.

The id is answered in `x-request-id`, stamped on every log line logged for the request (`logs.REQUEST_ID`) and
recorded in its audit events; the timing is answered in `Server-Timing`.
"""

from __future__ import annotations

import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtual_mcp.logs import REQUEST_ID
from virtual_mcp.metrics import Metrics
from virtual_mcp.registry import AGGREGATE_PATH
from virtual_mcp.timing import Timings, use

logger = logging.getLogger(__name__)
# Where the request's Timings and id travel in the ASGI scope (read by the routes and the wire).
TIMINGS_STATE_KEY = "timings"
REQUEST_ID_STATE_KEY = "request_id"
SERVER_TIMING = b"server-timing"
REQUEST_ID_HEADER = b"x-request-id"


def is_endpoint_path(path: str) -> bool:
    """`/mcp` and everything under `/mcp-server/`, configured or not (an unknown server must look like a known one)."""
    return path == AGGREGATE_PATH or path.startswith("/mcp-server/")


class RequestScope:
    """Outermost layer for the endpoint routes: gives the request its id (`x-request-id` on the answer, in its log
    lines and audit records) and its `Timings`, and writes the `Server-Timing` header.

    Every answer of those routes carries it, refusals included (a 401 carries `auth` and `total`; a 403 or a 400
    about overrides also `policy`). The header holds what was measured when the response starts, and the wire starts
    an answer only with its first message (`wire/framing.Answer`): a JSON answer, or a call whose only event is its
    result, reports its full timing; a call whose first event is a notification or a keepalive comment reports what
    was known at that moment, a running phase counted up to it; a GET stream (2025-11-25) starts at once and carries
    only the front door's phases.

    The complete timing of every request, whatever its header held, is logged at debug level when it ends.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None, endpoints: frozenset[str] = frozenset()) -> None:
        self._app = app
        self._metrics = metrics
        self._endpoints = endpoints  # metric labels: configured paths only, never what a caller made up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_endpoint_path(scope.get("path", "")):
            await self._app(scope, receive, send)
            return
        timings = Timings()
        request_id = secrets.token_hex(8)
        state = scope.setdefault("state", {})
        state[TIMINGS_STATE_KEY] = timings
        state[REQUEST_ID_STATE_KEY] = request_id
        stamp = [(REQUEST_ID_HEADER, request_id.encode("ascii"))]
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message.get("status", 0))
                message = _stamped(message, timings, stamp)
            await send(message)

        reset = REQUEST_ID.set(request_id)
        try:
            with use(timings):
                await self._app(scope, receive, timed_send)
            if logger.isEnabledFor(logging.DEBUG):
                path = scope.get("path")
                logger.debug("%s %s %d timing: %s", scope.get("method"), path, status, timings.server_timing())
        finally:
            REQUEST_ID.reset(reset)
            if self._metrics is not None:
                path = scope.get("path", "")
                endpoint = path if path in self._endpoints else "(unconfigured)"
                self._metrics.child(self._metrics.http_requests, endpoint, str(status)).inc()
                self._metrics.observe_phases(timings.phases, time.perf_counter() - timings.started)


def _stamped(start: Message, timings: Timings, stamp: list[tuple[bytes, bytes]]) -> Message:
    headers = [*start.get("headers", []), *stamp, (SERVER_TIMING, timings.server_timing().encode("ascii"))]
    return {**start, "headers": headers}


def request_id_in(scope: Scope) -> str:
    """The id `RequestScope` gave this request ("-" outside one)."""
    value = scope.get("state", {}).get(REQUEST_ID_STATE_KEY)
    return value if isinstance(value, str) else "-"
