"""`subscriptions/listen` (2026-07-28): the request's answer is a stream of the endpoint's change notifications.

The acknowledgement (the honoured filter) is the first frame; every frame carries the listen request's id as its
subscription id; the stream lasts until the client closes it or the gateway stops (then it ends with the listen
result, the spec's graceful close). A stream whose client stops reading is ended at a backlog bound (the client
listens again and refetches: there is no replay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ServerEvent, event_matches, event_to_notification
from mcp_types import INTERNAL_ERROR, SubscriptionFilter, SubscriptionsListenRequestParams
from pydantic import ValidationError
from starlette.types import Receive, Send

from virtual_mcp.errors import INVALID_PARAMS
from virtual_mcp.gateway.service.results import shape
from virtual_mcp.gateway.wire import framing
from virtual_mcp.gateway.wire.keepalive import Keepalive

logger = logging.getLogger(__name__)
MAX_STREAMS = 1024
MAX_BACKLOG = 1024


class Listens:
    def __init__(self, bus: SubscriptionBus, keepalive: Keepalive, stamp: Mapping[str, Any]) -> None:
        self._bus = bus
        self._keepalive = keepalive
        self._stamp = stamp
        self._streams: set[MemoryObjectSendStream[ServerEvent]] = set()

    async def serve(self, version: str, request_id: int | str, params: Any, receive: Receive, send: Send) -> None:
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
        honored = SubscriptionFilter(
            tools_list_changed=True if requested.tools_list_changed else None,
            prompts_list_changed=True if requested.prompts_list_changed else None,
            resources_list_changed=True if requested.resources_list_changed else None,
            resource_subscriptions=list(requested.resource_subscriptions) if requested.resource_subscriptions else None,
        )
        uris = frozenset(honored.resource_subscriptions or ())
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: request_id}
        events, pending = anyio.create_memory_object_stream[ServerEvent](MAX_BACKLOG)

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

    def close(self) -> None:
        """End every listen stream gracefully (each sends its listen result as its last frame)."""
        for stream in list(self._streams):
            stream.close()
