"""The gateway's task routes (service/tasks.py): whose each task id is, bounded per principal and in all, expired
with the task; what a backend says about a task renamed to the gateway's id, and a backend that lies about one
refused precisely."""

from __future__ import annotations

from typing import Any

import pytest

from virtual_mcp.errors import InvalidParams, UpstreamProtocolError
from virtual_mcp.gateway.service.tasks import (
    RELATED_TASK_META_KEY,
    TaskRoute,
    TaskRoutes,
    created,
    relays_tasks,
    shown,
    task_support,
)
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.backend import BackendSession
from virtual_mcp.upstream.era import Era, Negotiated

REF = ServerRef("lab", "everything")
SESSION = BackendSession(REF, None)
TASK = {
    "taskId": "backend-1",
    "status": "working",
    "createdAt": "2026-12-05T00:00:00Z",
    "lastUpdatedAt": "2026-12-05T00:00:00Z",
    "ttl": 60000,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(subject: str = "user:alice", expires: float = 2000.0, upstream: str = "backend-1") -> TaskRoute:
    return TaskRoute(subject, "/mcp", "lab__everything__research", REF, SESSION, upstream, expires)


def test_a_task_is_found_only_by_its_creator_on_its_endpoint_until_it_expires() -> None:
    clock = Clock()
    routes = TaskRoutes(clock)
    task_id = routes.add(route())
    assert routes.find(task_id, "user:alice", "/mcp").upstream_id == "backend-1"
    assert len(task_id) >= 20 and task_id != "backend-1"
    said = set()
    for subject, endpoint, asked in (
        ("user:bob", "/mcp", task_id),  # another principal
        ("user:alice", "/mcp-server/lab/everything/server", task_id),  # another endpoint
        ("user:alice", "/mcp", "never-issued"),
        ("user:alice", "/mcp", 7),
    ):
        with pytest.raises(InvalidParams) as refused:
            routes.find(asked, subject, endpoint)
        said.add(refused.value.message)
    assert said == {"no such task (unknown, expired, or not yours)"}  # one answer: nothing is learned
    clock.now = 2000.0
    with pytest.raises(InvalidParams):
        routes.find(task_id, "user:alice", "/mcp")


def test_routes_are_bounded_per_principal_and_one_principal_cannot_evict_another() -> None:
    routes = TaskRoutes(Clock())
    bobs = routes.add(route("user:bob"))
    alices = [routes.add(route("user:alice")) for _ in range(300)]
    assert len(routes) == 257  # 256 of Alice's, Bob's one
    with pytest.raises(InvalidParams):
        routes.find(alices[0], "user:alice", "/mcp")  # her oldest went
    assert routes.find(alices[-1], "user:alice", "/mcp") is not None
    assert routes.find(bobs, "user:bob", "/mcp") is not None


def test_a_routes_lifetime_is_the_tasks_ttl_at_most_a_day() -> None:
    clock = Clock()
    routes = TaskRoutes(clock)
    assert routes.lifetime({"task": {**TASK, "ttl": 5000}}) == 1005.0
    for ttl in (None, 0, -1, True, "60000", 10**12):
        assert routes.lifetime({"task": {**TASK, "ttl": ttl}}) == 1000.0 + 24 * 3600


def test_what_a_backend_says_of_its_task_names_the_gateways_id() -> None:
    meta = {RELATED_TASK_META_KEY: {"taskId": "backend-1"}, "trace": "t"}
    created_result: dict[str, Any] = {"task": TASK, "_meta": meta}
    assert created(REF, created_result) == "backend-1"
    out = shown(created_result, "tools/call", REF, "backend-1", "gw-1")
    assert out["task"]["taskId"] == "gw-1" and out["_meta"] == {RELATED_TASK_META_KEY: {"taskId": "gw-1"}, "trace": "t"}
    assert created_result["task"]["taskId"] == "backend-1"  # the backend's answer itself is not changed
    # A backend that answers tasks/get about another task (or names another in _meta) is shown the caller's own.
    got = shown(
        {**TASK, "taskId": "backend-2", "_meta": {RELATED_TASK_META_KEY: {"taskId": "backend-9"}}},
        "tasks/get",
        REF,
        "backend-1",
        "gw-1",
    )
    assert got["taskId"] == "gw-1" and got["_meta"] == {}
    final = shown({"content": [], "_meta": meta}, "tasks/result", REF, "backend-1", "gw-1")
    assert final["_meta"][RELATED_TASK_META_KEY] == {"taskId": "gw-1"}
    assert created(REF, {"content": [{"type": "text", "text": "ran as a plain call"}]}) is None


@pytest.mark.parametrize(
    "lie",
    [{"task": "soon"}, {"task": {"taskId": 7}}, {"task": {**TASK, "status": "sleeping"}}],
    ids=["not-an-object", "id-not-a-string", "unknown-status"],
)
def test_a_malformed_task_is_refused_precisely(lie: dict[str, Any]) -> None:
    with pytest.raises(UpstreamProtocolError) as refused:
        created(REF, lie)
    assert "malformed task" in refused.value.message
    with pytest.raises(UpstreamProtocolError):
        shown(lie, "tasks/get", REF, "backend-1", "gw-1")


def test_tasks_are_relayed_only_where_the_backend_speaks_them() -> None:
    takes = {"tasks": {"requests": {"tools": {"call": {}}}}}
    assert relays_tasks(Negotiated(Era.LEGACY, "2025-11-25", takes, None))
    assert not relays_tasks(Negotiated(Era.MODERN, "2026-07-28", takes, None))
    assert not relays_tasks(Negotiated(Era.LEGACY, "2025-11-25", {"tasks": {"list": {}}}, None))
    assert not relays_tasks(Negotiated(Era.LEGACY, "2025-11-25", {"tasks": {"requests": {"tools": True}}}, None))
    assert not relays_tasks(None)
    assert task_support({"execution": {"taskSupport": "required"}}) == "required"
    assert task_support({"execution": {"taskSupport": "always"}}) == "forbidden"
    assert task_support({"execution": 5}) == "forbidden" and task_support(None) == "forbidden"


def test_the_ttl_a_caller_is_told_is_what_the_gateway_keeps() -> None:
    for ttl, told in ((5000, 5000), (10**12, 86_400_000), (None, 86_400_000), (0, 86_400_000)):
        result = shown({"task": {**TASK, "ttl": ttl}}, "tools/call", REF, "backend-1", "gw-1")
        assert result["task"]["ttl"] == told, ttl


def test_a_task_whose_backend_session_ended_is_gone() -> None:
    class Ended(BackendSession):
        @property
        def closed(self) -> bool:
            return True

    routes = TaskRoutes(Clock())
    task_id = routes.add(TaskRoute("user:alice", "/mcp", "t", REF, Ended(REF, None), "backend-1", 2000.0))
    with pytest.raises(InvalidParams) as gone:
        routes.find(task_id, "user:alice", "/mcp")
    assert gone.value.message == "no such task (unknown, expired, or not yours)" and len(routes) == 0
