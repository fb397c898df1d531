"""What the gateway knows about a request, turned into audit events (see `virtual_mcp/audit.py`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from virtual_mcp.audit import DENIED, FAILED, AuditEvent, AuditLog, safe_text
from virtual_mcp.audit_bounds import FIELD_LIMITS, redacted, render_parts
from virtual_mcp.config.models import AuthData, HeaderAuthData, OAuth2AuthData, PassthroughAuthData
from virtual_mcp.errors import GatewayError, ToolNotFound, UpstreamRpcError
from virtual_mcp.metrics import UNKNOWN, Metrics
from virtual_mcp.outbound.consent import ConsentRequired
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.registry import Registry
from virtual_mcp.types import Principal, ServerRef

logger = logging.getLogger(__name__)


def auth_mode(auth: AuthData | None) -> str:
    if auth is None:
        return "none"
    if isinstance(auth, OAuth2AuthData):
        return f"oauth2:{auth.grant_type}"
    if isinstance(auth, HeaderAuthData | PassthroughAuthData):
        return auth.type
    return "unknown"


@dataclass(slots=True)
class CallNote:
    """Filled in by a `tools/call` handler as it learns where the call goes and how it ended."""

    server: ServerRef | None = None
    tool: str | None = None
    denial: str | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)
    # The header values the call presented upstream (an OAuth token, a forwarded value): a backend may echo them.
    sent: Mapping[str, str] = field(default_factory=dict, repr=False)


class Auditor:
    def __init__(
        self,
        log: AuditLog | None,
        registry: Registry,
        scrub: Callable[[str], str] = lambda text: text,
        metrics: Metrics | None = None,
        known_tool: Callable[[ServerRef, str], bool] = lambda ref, name: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._registry = registry
        self._scrub = scrub
        self._metrics = metrics
        self._known_tool = known_tool
        self._clock = clock

    async def refused(
        self, request_id: str, principal: Principal, endpoint: str, server: str | None, method: str, reason: str
    ) -> None:
        """A request the front door refused for an authenticated caller (e.g. a `tools/list` on a server they may
        not use); `server` is the one the endpoint serves, if it serves one."""
        if self._log is None:
            return
        # The endpoint and the server may come from the URL the caller chose: redacted, and bounded here already.
        event = self._event(request_id, principal, redacted(endpoint, FIELD_LIMITS["endpoint"]), method, None)
        event.server = redacted(server, FIELD_LIMITS["server"]) if server is not None else None
        event.outcome, event.error = DENIED, safe_text(reason)
        await self._record(event)

    async def consent(
        self, request_id: str, principal: Principal, endpoint: str, server: str, refusal: str | None
    ) -> None:
        """A per-user OAuth consent of `principal` for `server`: connected (`refusal` None), or refused (a link
        used by another account, an answer arriving in another browser)."""
        if self._log is None:
            return
        event = self._event(request_id, principal, endpoint, "oauth/consent", None)
        event.server, event.auth_mode = server, "oauth2:authorization_code"
        if refusal is not None:
            event.outcome, event.error = DENIED, safe_text(refusal)
        await self._record(event)

    @asynccontextmanager
    async def tool_call(
        self,
        request_id: str,
        caller: Caller,
        endpoint: str,
        called: str,
        arguments: dict[str, Any],
        method: str = "tools/call",
    ) -> AsyncIterator[CallNote]:
        """Wrap one `tools/call` (or a request about a task one created: `method`): the event is recorded (and
        counted) when the block ends, however it ends."""
        note = CallNote()
        if self._log is None and self._metrics is None:
            yield note
            return
        started = time.perf_counter()
        failure: BaseException | None = None
        event = self._event(request_id, caller.principal, endpoint, method, called)
        try:
            yield note
            if note.result is not None and note.result.get("isError") is True:
                event.error = "the tool reported an error (isError)"
        except ToolNotFound:
            event.outcome, event.error = DENIED, note.denial or "unknown tool"
            raise
        except ConsentRequired as exc:
            event.outcome, event.error = FAILED, safe_text(exc.message)
            raise
        except UpstreamRpcError as exc:
            message = f"backend error {exc.code}: {exc.message}"
            event.outcome, event.error, failure = FAILED, safe_text(self._scrubbed(message, note)), exc
            raise
        except GatewayError as exc:
            event.outcome, event.error, failure = FAILED, safe_text(self._scrubbed(exc.message, note)), exc
            raise
        except anyio.get_cancelled_exc_class():
            event.outcome, event.error = FAILED, "cancelled"
            raise
        except Exception:
            event.outcome, event.error = FAILED, "internal error"
            raise
        finally:
            elapsed = time.perf_counter() - started
            event.latency_ms = round(elapsed * 1000, 3)
            self._complete(event, note, caller)
            # The record and the metric never depend on the detail: whatever the arguments or the result hold,
            # rendering them cannot raise (audit_bounds), and if it ever did, the record says so instead.
            try:
                self._details(event, note, arguments)
            except Exception:
                logger.exception("audit detail of a call to %s could not be rendered", event.server)
                event.detail = {"unrendered": "the detail could not be rendered (see the gateway log)"}
            if self._log is not None and not self._log.record_nowait(event):
                with anyio.CancelScope(shield=True):  # the queue is full: wait for room, even if cancelled
                    await self._log.record(event)
            if self._metrics is not None:
                self._count(event, note, elapsed, failure)

    def _scrubbed(self, text: str, note: CallNote) -> str:
        """`text` without configured secrets nor any credential this call presented upstream."""
        text = self._scrub(text)
        for value in note.sent.values():
            _, _, token = value.partition(" ")
            for secret in (value, token):
                if len(secret) >= 8:
                    text = text.replace(secret, "[REDACTED]")
        return text

    def _count(self, event: AuditEvent, note: CallNote, elapsed: float, failure: BaseException | None) -> None:
        assert self._metrics is not None
        metrics = self._metrics
        server = event.server or UNKNOWN
        # Label values only from the configuration and the backends' own tool lists, never from the caller.
        tool = note.tool if note.server is not None and note.tool and self._known_tool(note.server, note.tool) else None
        metrics.child(metrics.tool_calls, event.endpoint, server, tool or UNKNOWN, event.outcome).inc()
        if event.outcome != DENIED:
            metrics.child(metrics.tool_call_seconds, server).observe(elapsed)
        if failure is not None and note.server is not None:
            metrics.child(metrics.upstream_errors, server, type(failure).__name__).inc()

    def _event(
        self, request_id: str, principal: Principal, endpoint: str, method: str, called: str | None
    ) -> AuditEvent:
        return AuditEvent(
            ts=self._clock(),
            request_id=request_id,
            subject=principal.subject,
            kind=principal.kind.value,
            name=principal.name,
            teams=tuple(sorted(principal.teams)),
            endpoint=endpoint,
            method=method,
            called=called,
        )

    def _complete(self, event: AuditEvent, note: CallNote, caller: Caller) -> None:
        if note.server is None:
            return
        event.server, event.tool = note.server.key, note.tool
        if event.called == note.tool:
            event.called = None
        remote = self._registry.remotes.get(note.server)
        event.auth_mode = auth_mode(remote.auth if remote else None)
        event.forwarded_headers = tuple(sorted(caller.overrides.get(note.server, {})))

    def _details(self, event: AuditEvent, note: CallNote, arguments: dict[str, Any]) -> None:
        """The arguments and result, for a server that opted in; bounded in depth and size (audit_bounds)."""
        remote = self._registry.remotes.get(note.server) if note.server is not None else None
        payloads = remote.audit if remote else None
        if payloads is None or event.outcome == DENIED:
            return
        keys = frozenset(k.lower() for k in payloads.redact)
        scrub = partial(self._scrubbed, note=note)
        # One rendering of both, so their total is bounded, not each.
        parts: dict[str, Any] = {}
        if payloads.arguments:
            parts["arguments"] = arguments
        if payloads.results and note.result is not None:
            parts["result"] = note.result
        if parts:
            event.detail = render_parts(parts, keys, scrub)

    async def _record(self, event: AuditEvent) -> None:
        if self._log is not None:
            await self._log.record(event)
