from __future__ import annotations

import httpx
import pytest

from virtual_mcp.upstream.wire import iter_sse_messages, modern_headers, modern_params


async def collect(body: bytes) -> list[dict[str, object]]:
    response = httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    return [m async for m in iter_sse_messages(response.aiter_lines(), 1 << 20)]


async def test_sse_frames_comments_and_multiline_data() -> None:
    body = (
        b": keepalive\n\n"
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
        b'data: {"jsonrpc":"2.0",\r\ndata: "id":1,"result":{}}\r\n\r\n'
        b'event: other\ndata: {"ignored":true}\n\n'
    )
    messages = await collect(body)
    assert messages == [
        {"jsonrpc": "2.0", "method": "notifications/progress"},
        {"jsonrpc": "2.0", "id": 1, "result": {}},
    ]


async def test_sse_garbage_is_an_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        await collect(b"data: {not json\n\n")


def test_modern_envelope_keeps_caller_meta_and_sets_routing_headers() -> None:
    params = modern_params({"name": "echo", "_meta": {"progressToken": "p"}}, {"x": 1})
    meta = params["_meta"]
    assert meta["progressToken"] == "p" and meta["x"] == 1
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert modern_headers("tools/call", params) == {
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }


async def test_an_event_without_data_carries_no_message() -> None:
    """The spec's priming event (an id and an empty `data`, so a client can resume from it), a `retry:` advice and
    an event of ids only are not messages: skipped, as an EventSource dispatches no event with empty data."""
    body = (
        b"id: stream-1/0\ndata: \n\n"
        b"id: stream-1/1\ndata:\n\n"
        b"retry: 2000\n\n"
        b"id: stream-1/2\n\n"
        b'id: stream-1/3\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
    )
    assert await collect(body) == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
