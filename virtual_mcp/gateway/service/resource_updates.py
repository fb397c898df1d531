"""Resource subscriptions: a caller subscribes through the gateway to a resource of a backend; the backend's
`notifications/resources/updated` for it reaches that caller, and only callers who subscribed to it.

A subscription is made on the backend session that serves the caller (each principal's own, as for any request:
upstream/pool.py), and recorded here with where its updates go (the caller's `Subscriber`: a 2025-11-25 session's
GET stream). The backend session is watched for its notifications outside requests. An update for a resource
nobody subscribed to on that session is dropped. Unsubscribing, or the caller's session ending, removes the
record; the backend is told to unsubscribe when the last subscriber of a resource on that session goes.

An update carries the resource's URI as the caller knows it (on /mcp, the wrapped `mcp-gateway://` URI).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from virtual_mcp.upstream.backend import BackendSession

_MAX_PER_SUBSCRIBER = 256  # resources one caller session may watch at once


class Subscriber(Protocol):
    """A caller that can be told of updates outside its requests (a 2025-11-25 session)."""

    @property
    def key(self) -> str: ...

    def push(self, message: Mapping[str, Any]) -> None: ...

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when the subscriber goes (its session ends)."""
        ...

    def on_unsubscribed(self, callback: Callable[[str], None]) -> None:
        """Call `callback(uri)` when the caller unsubscribes from `uri` through another replica."""
        ...

    async def unsubscribed(self, uri: str) -> None:
        """The caller unsubscribed from `uri` here: the replicas where it subscribed forget it too."""
        ...


@dataclass(frozen=True, slots=True)
class _Entry:
    subscriber: Subscriber
    shown_uri: str  # the URI as the caller knows it


class ResourceUpdates:
    def __init__(self) -> None:
        # backend session -> backend URI -> subscriber key -> entry
        self._watched: dict[BackendSession, dict[str, dict[str, _Entry]]] = {}
        self._counts: dict[str, int] = {}

    def has_room(self, subscriber: Subscriber) -> bool:
        """Whether `subscriber` may watch one more resource (at most `_MAX_PER_SUBSCRIBER`)."""
        return self._counts.get(subscriber.key, 0) < _MAX_PER_SUBSCRIBER

    def subscribed(self, session: BackendSession, uri: str, subscriber: Subscriber, shown_uri: str) -> None:
        """Record that `subscriber` subscribed to `uri` on `session` (once per resource, however often asked)."""
        per_uri = self._watched.setdefault(session, {})
        entries = per_uri.setdefault(uri, {})
        if subscriber.key not in entries:
            self._counts[subscriber.key] = self._counts.get(subscriber.key, 0) + 1
            if self._counts[subscriber.key] == 1:
                subscriber.on_end(lambda: self._forget(subscriber.key))
                subscriber.on_unsubscribed(lambda shown: self._forget_uri(subscriber.key, shown))
        entries[subscriber.key] = _Entry(subscriber, shown_uri)
        # A watcher per subscriber: a session the fleet holds hands each update to each watcher of the fleet once
        # (upstream/shared.py), and two subscribers on two replicas each get theirs.
        key = _watcher(subscriber.key)
        if not session.watches(key):
            session.watch(
                key, partial(self._on_message, session, subscriber.key), partial(self._wants, session, subscriber.key)
            )

    def unsubscribed(self, session: BackendSession, uri: str, subscriber_key: str) -> bool:
        """Remove the record; True if nobody else is subscribed to `uri` on `session` (tell the backend)."""
        per_uri = self._watched.get(session, {})
        entries = per_uri.get(uri, {})
        if entries.pop(subscriber_key, None) is not None:
            self._counts[subscriber_key] -= 1
            if not self._counts[subscriber_key]:
                del self._counts[subscriber_key]
            if not any(subscriber_key in others for others in per_uri.values()):
                session.unwatch(_watcher(subscriber_key))
        if entries:
            return False
        per_uri.pop(uri, None)
        if not per_uri:
            self._watched.pop(session, None)
        return True

    def _forget_uri(self, subscriber_key: str, shown_uri: str) -> None:
        """The caller unsubscribed from `shown_uri` through another replica: its updates stop here too (a 2025-11-25
        backend keeps sending them until its session closes; they are dropped as nobody's)."""
        for session, per_uri in list(self._watched.items()):
            for uri, entries in list(per_uri.items()):
                entry = entries.get(subscriber_key)
                if (
                    entry is not None
                    and entry.shown_uri == shown_uri
                    and self.unsubscribed(session, uri, subscriber_key)
                ):
                    session.stop_listening(uri)

    def _forget(self, subscriber_key: str) -> None:
        for session, per_uri in list(self._watched.items()):
            for uri in list(per_uri):
                if self.unsubscribed(session, uri, subscriber_key):
                    session.stop_listening(uri)  # a 2026-07-28 backend's stream (a 2025-11-25 one keeps its own)
        self._counts.pop(subscriber_key, None)

    def _entry(self, session: BackendSession, subscriber_key: str, message: Mapping[str, Any]) -> _Entry | None:
        """The subscription `message` updates, if it is an update of a resource `subscriber_key` subscribed to."""
        if message.get("method") != "notifications/resources/updated":
            return None
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, Mapping) else None
        entries = self._watched.get(session, {}).get(uri) if isinstance(uri, str) else None
        return entries.get(subscriber_key) if entries else None

    def _wants(self, session: BackendSession, subscriber_key: str, message: Mapping[str, Any]) -> bool:
        return self._entry(session, subscriber_key, message) is not None

    async def _on_message(self, session: BackendSession, subscriber_key: str, message: Mapping[str, Any]) -> None:
        entry = self._entry(session, subscriber_key, message)
        if entry is not None:
            entry.subscriber.push(
                {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": entry.shown_uri}}
            )


def _watcher(subscriber_key: str) -> str:
    return f"updates:{subscriber_key}"
