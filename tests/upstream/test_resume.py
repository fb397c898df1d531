"""A 2025-11-25 backend that closes a call's event stream before answering (SEP-1699 polling: it primed the stream
with an event id and retry advice) has the stream resumed by the gateway with `Last-Event-ID`, and the caller gets
its answer, in both client eras."""

from __future__ import annotations

from pathlib import Path

from fastmcp import Client
from fastmcp.server.event_store import EventStore
from starlette.types import Receive, Scope, Send

from tests.interop.conformance_fixture import conformance_fixture
from tests.support import LegacyOnly, gateway, serve, write_config


class Resumes:
    """Counts the GETs that resume a stream (they carry Last-Event-ID)."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.last_event_ids: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            headers = dict(scope["headers"])
            if b"last-event-id" in headers:
                self.last_event_ids.append(headers[b"last-event-id"].decode())
        await self.app(scope, receive, send)  # type: ignore[operator]


async def test_a_stream_closed_before_its_answer_is_resumed(tmp_path: Path) -> None:
    app = conformance_fixture().http_app(path="/mcp", event_store=EventStore(), retry_interval=20)
    backend = Resumes(LegacyOnly(app))
    async with serve(backend) as served:  # type: ignore[arg-type]
        config = write_config(tmp_path / "servers.d", {"polling": served.url})
        async with gateway(config) as gw:
            for mode in ("legacy", "2026-07-28"):
                before = len(backend.last_event_ids)
                async with Client(f"{gw.url}/mcp-server/lab/polling/server", mode=mode) as client:
                    result = await client.call_tool("test_reconnection", {})
                    assert result.content[0].text == "Reconnection test completed successfully"  # type: ignore[union-attr]
                # At least one resume per call. The reference server may end a resumed stream without the answer
                # when the resume lands while it is still tearing down the closed one (its replay then finds the
                # stream id still registered and stops): the gateway then resumes again, as a client should.
                assert len(backend.last_event_ids) > before
    assert all(backend.last_event_ids)
