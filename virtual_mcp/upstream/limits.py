"""Bounds on what a backend's answer may cost the gateway: its size (checked while it streams in, never buffered past
the limit). Its depth and the credentials in it are upstream/answers.py's.

A backend is trusted to run tools, not to size its answers: one answer of 100 MB, or one endless event-stream line,
must cost the gateway no more than the limit, and only that backend's caller hears about it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


class AnswerTooLarge(Exception):
    """The backend's answer (a JSON body, or one line or event of an event stream) is larger than the limit."""

    def __init__(self, limit: int, what: str = "answer") -> None:
        super().__init__(f"its {what} is larger than limits.max_upstream_response_bytes ({limit} bytes)")
        self.limit = limit


async def read_capped(chunks: AsyncIterator[bytes], limit: int, declared: int | None = None) -> bytes:
    """The whole body from `chunks`, refused as soon as it is known to exceed `limit` (a declared Content-Length past
    it is refused before a byte of the body is read)."""
    if declared is not None and declared > limit:
        raise AnswerTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


async def capped_lines(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[str]:
    """The body as text lines (`\\n` or `\\r\\n` ended), each as soon as it is complete; a line (or what is pending
    of one) longer than `limit` is refused however the body is chunked."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            if len(pending) > limit:
                raise AnswerTooLarge(limit, "event-stream line")
            continue
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if len(line) > limit:
                raise AnswerTooLarge(limit, "event-stream line")
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
        if len(pending) > limit:
            raise AnswerTooLarge(limit, "event-stream line")
    if pending:
        yield pending.removesuffix(b"\r").decode("utf-8", "replace")
