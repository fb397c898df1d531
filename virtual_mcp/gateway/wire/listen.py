"""`subscriptions/listen` (2026-07-28): the request's answer is a stream of the endpoint's change notifications.

The acknowledgement (the honoured filter) is the first frame: tool list changes when asked for, and each resource
subscription the caller's backend accepted for this caller (made on the caller's own backend session, as a
2025-11-25 session's `resources/subscribe` is: service/subscriptions.py; ended with the stream); list changes of
prompts and resources are not offered. Every frame carries the listen request's id as its subscription id; the
stream lasts until the client closes it or the gateway stops (then it ends with the listen result, the spec's
graceful close). A stream whose client stops reading is ended at a backlog bound (the client listens again and
refetches: there is no replay).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    ResourceUpdated,
    ServerEvent,
    event_matches,
    event_to_notification,
)
from mcp_types import INTERNAL_ERROR, SubscriptionFilter, SubscriptionsListenRequestParams
from pydantic import ValidationError
from starlette.types import Receive, Send

from virtual_mcp.errors import INVALID_PARAMS
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.mcp import McpService
from virtual_mcp.gateway.service.results import shape
from virtual_mcp.gateway.wire import framing
from virtual_mcp.gateway.wire.keepalive import Keepalive

logger = logging.getLogger(__name__)
MAX_STREAMS = 1024
MAX_BACKLOG = 1024
MAX_RESOURCES = 64  # resource subscriptions of one listen stream


class _Silent:
    """A listen stream's subscriptions are made outside any request: there is nothing to relay to."""

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        return None


class _ListenSubscriber:
    """A listen stream as a subscriber of resource updates (service/resource_updates.py)."""

    def __init__(self, deliver: Callable[[ServerEvent], None]) -> None:
        self.key = f"listen-{secrets.token_hex(8)}"
        self._deliver = deliver
        self._ending: list[Callable[[], None]] = []

    def push(self, message: Mapping[str, Any]) -> None:
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, Mapping) else None
        if isinstance(uri, str):
            self._deliver(ResourceUpdated(uri=uri))

    def on_end(self, callback: Callable[[], None]) -> None:
        self._ending.append(callback)

    # A listen stream is one request's: there is no other replica for it to tell.
    def on_unsubscribed(self, callback: Callable[[str], None]) -> None:
        pass

    async def unsubscribed(self, uri: str) -> None:
        pass

    def end(self) -> None:
        for callback in self._ending:
            callback()
        self._ending.clear()


class Listens:
    def __init__(self, bus: SubscriptionBus, keepalive: Keepalive, service: McpService) -> None:
        self._bus = bus
        self._keepalive = keepalive
        self._service = service
        self._stamp = service.stamp
        self._streams: set[MemoryObjectSendStream[ServerEvent]] = set()

    async def _watch(self, ctx: RequestContext, requested: list[str]) -> list[str]:
        """The resource subscriptions honoured: each made for the caller, at most MAX_RESOURCES."""
        watched = []
        for uri in dict.fromkeys(requested[:MAX_RESOURCES]):
            if await self._service.watch(ctx, uri):
                watched.append(uri)
        return watched

    async def _unwatch(self, ctx: RequestContext, watched: list[str]) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            for uri in watched:
                await self._service.unwatch(ctx, uri)

    async def serve(
        self,
        ctx: RequestContext,
        params: Any,
        receive: Receive,
        send: Send,
    ) -> None:
        version, request_id = ctx.version, ctx.request_id
        try:
            requested = SubscriptionsListenRequestParams.model_validate(params or {}, by_name=False).notifications
        except ValidationError:
            failure = {"code": INVALID_PARAMS, "message": "Invalid request parameters", "data": ""}
            await framing.send_json(send, framing.error(request_id, failure))
            return
        if len(self._streams) >= MAX_STREAMS:
            failure = {"code": INTERNAL_ERROR, "message": "Subscription limit reached"}
            await framing.send_json(send, framing.error(request_id, failure))
            return
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: request_id}
        events, pending = anyio.create_memory_object_stream[ServerEvent](MAX_BACKLOG)
        honored = SubscriptionFilter(tools_list_changed=True if requested.tools_list_changed else None)
        uris: frozenset[str] = frozenset()

        def deliver(event: ServerEvent) -> None:
            if not event_matches(honored, uris, event):
                return
            try:
                events.send_nowait(event)
            except anyio.WouldBlock:
                logger.warning("a listen stream is not being read; ending it")
                self._streams.discard(events)
                events.close()
            except anyio.ClosedResourceError:
                pass

        # Subscribed before the acknowledgement goes out, so an event meanwhile is queued, not lost.
        subscriber = _ListenSubscriber(deliver)
        watching = RequestContext(
            ctx.caller, version, request_id, ctx.trace_id, _Silent(), declared=ctx.declared, subscriber=subscriber
        )
        watched = await self._watch(watching, list(requested.resource_subscriptions or ()))
        if watched:
            honored.resource_subscriptions = watched
            uris = frozenset(watched)
        unsubscribe = self._bus.subscribe(deliver)
        self._streams.add(events)
        answer = framing.Answer(send, self._keepalive, json_allowed=False)
        closed_by_client = False
        try:
            acknowledged = {"notifications": honored.model_dump(by_alias=True, exclude_none=True), "_meta": meta}
            await answer.notify("notifications/subscriptions/acknowledged", acknowledged)
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    nonlocal closed_by_client
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    closed_by_client = True
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                async for event in pending:
                    wire = event_to_notification(event, meta).model_dump(by_alias=True, mode="json", exclude_none=True)
                    await answer.event({"jsonrpc": "2.0", **wire})
                tg.cancel_scope.cancel()
            if closed_by_client:
                answer.abandon()
            else:
                result = shape("subscriptions/listen", version, {"_meta": dict(meta)}, self._stamp)
                await answer.finish(framing.response(request_id, result))
        finally:
            unsubscribe()
            self._streams.discard(events)
            events.close()
            pending.close()
            await self._unwatch(watching, watched)
            subscriber.end()

    def close(self) -> None:
        """End every listen stream gracefully (each sends its listen result as its last frame)."""
        for stream in list(self._streams):
            stream.close()
