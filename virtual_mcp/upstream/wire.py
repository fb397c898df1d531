"""Streamable-HTTP wire details shared by the upstream client: era constants, envelopes, SSE framing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types.version import LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from virtual_mcp.upstream import answers
from virtual_mcp.upstream.limits import AnswerTooLarge

MODERN_VERSION = MODERN_PROTOCOL_VERSIONS[-1]
LEGACY_VERSION = LATEST_HANDSHAKE_VERSION
ACCEPT = "application/json, text/event-stream"
CLIENT_INFO = {"name": "virtual-mcp", "version": "0.1.0"}


def modern_params(
    params: Mapping[str, Any] | None,
    extra_meta: Mapping[str, Any] | None = None,
    declared: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`params` with the 2026-07-28 per-request envelope merged into `_meta`, declaring `declared` client
    capabilities (the caller's relayed ones: upstream/capabilities.py)."""
    out = dict(params) if params else {}
    meta = dict(out.get("_meta") or {})
    if extra_meta:
        meta.update(extra_meta)
    meta[PROTOCOL_VERSION_META_KEY] = MODERN_VERSION
    meta[CLIENT_CAPABILITIES_META_KEY] = dict(declared or {})
    meta[CLIENT_INFO_META_KEY] = CLIENT_INFO
    out["_meta"] = meta
    return out


def modern_headers(method: str, params: Mapping[str, Any]) -> dict[str, str]:
    headers = {"mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
    key = NAME_BEARING_METHODS.get(method)
    if key is not None:
        value = params.get(key)
        if isinstance(value, str):
            headers["mcp-name"] = encode_header_value(value)
    return headers


@dataclass(slots=True)
class Cursor:
    """Where an event stream got to: its last event id and the retry advice it gave (milliseconds)."""

    last_id: str | None = None
    retry_ms: int | None = None


async def iter_sse_events(
    lines: AsyncIterator[str], max_event_bytes: int, cursor: Cursor | None = None
) -> AsyncIterator[tuple[str, str]]:
    """Yield (event name, data) for each event of an SSE body that carries data (an EventSource dispatches no
    other). An event's data is bounded by `max_event_bytes` however many lines carry it (AnswerTooLarge). `cursor`,
    when given, keeps the last event id and retry advice seen (to resume the stream from there)."""
    event = "message"
    data: list[str] = []
    size = 0
    async for line in lines:
        if line == "":
            if payload := "\n".join(data):
                yield event, payload
            event, data, size = "message", [], 0
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            size += len(value) + 1
            if size > max_event_bytes:
                raise AnswerTooLarge(max_event_bytes, "event-stream event")
            data.append(value)
        elif name == "event":
            event = value or "message"
        elif name == "id" and cursor is not None and "\0" not in value:
            cursor.last_id = value[:256] or None
        elif name == "retry" and cursor is not None and value.isdigit():
            cursor.retry_ms = int(value[:9])
    if payload := "\n".join(data):
        yield event, payload


async def iter_sse_messages(
    lines: AsyncIterator[str],
    max_event_bytes: int,
    parse: Callable[[str], Any] = answers.parse,
    cursor: Cursor | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield each JSON-RPC message carried by the lines of an SSE body (events named `message` or unnamed), each
    decoded by `parse` (which raises ValueError for what it refuses, AnswerTooDeep for JSON nested too deep).

    An event whose data is empty carries no message and is skipped, as an EventSource dispatches none: the spec's
    priming event (an id and `data:` with nothing after it, sent first so a client can resume), `retry:` advice, an
    event of ids only (iter_sse_events).
    """
    async for event, payload in iter_sse_events(lines, max_event_bytes, cursor):
        if event == "message":
            message = _message(payload, parse)
            if isinstance(message, dict):
                yield message


def _message(payload: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(payload)
    except answers.AnswerTooDeep:
        raise
    except ValueError:
        raise ValueError("SSE event carried invalid JSON") from None
