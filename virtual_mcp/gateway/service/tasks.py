"""Task-augmented tool calls (protocol 2025-11-25 `tasks`), passed through where the backend and the caller speak
them: the caller is a 2025-11-25 session, the backend speaks 2025-11-25 and declares `tasks.requests.tools.call`,
and lists the tool with `execution.taskSupport` (optional or required).

Such a `tools/call` with a `task` goes to the caller's own backend session with it, and the backend's
`CreateTaskResult` comes back with the task's id replaced by one of the gateway's (random, 128 bits). The gateway
records whose task it is (principal, endpoint, the tool as the caller named it), which backend session holds it, and
the backend's own id. `tasks/get`, `tasks/result` and `tasks/cancel` with that id go to that backend session with the
backend's id, from that principal on that endpoint only (anyone else is told no such task exists), while the caller
may still use that tool (a revoked grant ends access to its tasks too); each answer carries the gateway's id again,
and each is audited with the tool it belongs to. What the backend asks during `tasks/result` (an elicitation while
the task is `input_required`) reaches the caller like any question during a call (service/asks.py).

Not relayed: `tasks/list` (the gateway's tasks of one caller span backends; not offered), `notifications/tasks/status`
(optional in the protocol: callers poll `tasks/get`), the caller's own tasks (a backend is never told its client
runs task-augmented sampling or elicitation), and the 2026-07-28 tasks extension (`io.modelcontextprotocol/tasks`):
a 2026-07-28 caller is listed no `execution`, and a `task` it sends is not passed on. A task lives as long as the
backend session that holds it: ended (idle, evicted, the backend restarted), its tasks are gone, and a caller asking
is told so.

Over a fleet of replicas (`SharedRoutes`, fleet/tasks.py), each route is also kept in Redis, sealed, for the task's
life: a `tasks/get` reaching another replica finds it there, and goes to the same backend session, which the fleet
holds as one (upstream/shared.py); the replica that created the task keeps that session open while the task lives.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mcp_types import CreateTaskResult, GetTaskResult
from pydantic import ValidationError

from virtual_mcp.errors import InvalidParams, UpstreamProtocolError
from virtual_mcp.gateway.service.asks import Asker
from virtual_mcp.gateway.service.context import Sink
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.backend import BackendSession
from virtual_mcp.upstream.era import Era, Negotiated

RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
TASK_METHODS = ("tasks/get", "tasks/result", "tasks/cancel")
_PER_SUBJECT = 256  # tasks one principal may have routed at once; past it, its oldest route is forgotten
_IN_ALL = 10_000
_LONGEST = 24 * 3600.0  # a route outlives no task past a day, whatever ttl the backend gave


def relays_tasks(learned: Negotiated | None) -> bool:
    """Whether task-augmented tool calls may be passed on to a backend that said this of itself."""
    if learned is None or learned.era is not Era.LEGACY:
        return False
    tasks = learned.capabilities.get("tasks")
    requests = tasks.get("requests") if isinstance(tasks, dict) else None
    tools = requests.get("tools") if isinstance(requests, dict) else None
    return isinstance(tools, dict) and isinstance(tools.get("call"), dict)


def cancels_tasks(learned: Negotiated | None) -> bool:
    """Whether a backend that takes task-augmented calls said it takes `tasks/cancel` too."""
    tasks = learned.capabilities.get("tasks") if relays_tasks(learned) and learned is not None else None
    return isinstance(tasks, dict) and isinstance(tasks.get("cancel"), dict)


def without_execution(tool: dict[str, Any]) -> dict[str, Any]:
    """The tool as a caller that cannot make task-augmented calls is shown it."""
    return {k: v for k, v in tool.items() if k != "execution"} if "execution" in tool else tool


def task_support(tool: Mapping[str, Any] | None) -> str:
    """The tool's `execution.taskSupport` ("forbidden" when absent or unreadable)."""
    execution = tool.get("execution") if tool is not None else None
    support = execution.get("taskSupport") if isinstance(execution, dict) else None
    return support if support in ("optional", "required") else "forbidden"


@dataclass(frozen=True, slots=True)
class TaskRoute:
    subject: str  # whose task
    endpoint: str  # where it was created, and where it may be asked about
    tool: str  # the tool as the caller named it there
    server: ServerRef
    session: BackendSession | None  # which backend session holds it (None: one another replica opened; the pool's)
    upstream_id: str  # the backend's own id
    expires: float
    held_by: str | None = None  # (from the fleet) the backend session id holding it, which the fleet holds as one


class SharedRoutes(Protocol):
    """The fleet's task routes (fleet/tasks.py): best effort, None where it cannot say."""

    async def put(self, task_id: str, route: Mapping[str, Any], seconds: float) -> None: ...

    async def get(self, task_id: str) -> dict[str, Any] | None: ...


class TaskRoutes:
    """Where each of the gateway's task ids leads, bounded per principal and in all (oldest forgotten first)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedRoutes | None = None,
        servers: Mapping[str, ServerRef] | None = None,
    ) -> None:
        self._clock = clock
        self._shared = shared
        self._servers = dict(servers or {})
        self._routes: OrderedDict[str, TaskRoute] = OrderedDict()
        self._by_subject: dict[str, OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, route: TaskRoute) -> str:
        """Record `route`; the gateway's id for it."""
        self._expire()
        mine = self._by_subject.setdefault(route.subject, OrderedDict())
        if len(mine) >= _PER_SUBJECT:
            self._forget(next(iter(mine)))
        if len(self._routes) >= _IN_ALL:
            self._forget(next(iter(self._routes)))
        task_id = secrets.token_urlsafe(16)
        self._routes[task_id] = route
        self._by_subject.setdefault(route.subject, OrderedDict())[task_id] = None
        return task_id

    def find(self, task_id: object, subject: str, endpoint: str) -> TaskRoute:
        """The route of `task_id` if it is `subject`'s, made on `endpoint`; InvalidParams otherwise (another's task
        is answered exactly as one that never existed)."""
        route = self._routes.get(task_id) if isinstance(task_id, str) else None
        if route is not None and route.session is not None and route.session.closed:  # ended with its session
            self._forget(str(task_id))
            route = None
        if route is None or route.subject != subject or route.endpoint != endpoint or route.expires <= self._clock():
            raise InvalidParams("no such task (unknown, expired, or not yours)")
        return route

    async def share(self, task_id: str, route: TaskRoute, held_by: str) -> None:
        """Tell the fleet (if any) where task `task_id` leads, for as long as it lives: to backend session `held_by`,
        which the fleet holds as one (a task on any other session is this replica's alone)."""
        if self._shared is None:
            return
        record = {
            "held": held_by,
            "subject": route.subject,
            "endpoint": route.endpoint,
            "tool": route.tool,
            "server": route.server.key,
            "upstream": route.upstream_id,
        }
        await self._shared.put(task_id, record, route.expires - self._clock())

    async def locate(self, task_id: object, subject: str, endpoint: str) -> TaskRoute:
        """`find`, or the route another replica of the fleet made."""
        try:
            return self.find(task_id, subject, endpoint)
        except InvalidParams:
            if self._shared is None or not isinstance(task_id, str):
                raise
        record = await self._shared.get(task_id)
        route = self._from_fleet(record) if record is not None else None
        if route is None or route.subject != subject or route.endpoint != endpoint:
            raise InvalidParams("no such task (unknown, expired, or not yours)")
        return route

    def _from_fleet(self, record: Mapping[str, Any]) -> TaskRoute | None:
        fields = [record.get(k) for k in ("subject", "endpoint", "tool", "server", "upstream", "held")]
        server = self._servers.get(fields[3]) if isinstance(fields[3], str) else None
        seconds = record.get("seconds")
        if server is None or not all(isinstance(f, str) for f in fields) or not isinstance(seconds, int | float):
            return None  # (a replica on another configuration may name a server this one does not have)
        subject, endpoint, tool, _, upstream, held = (str(f) for f in fields)
        return TaskRoute(subject, endpoint, tool, server, None, upstream, self._clock() + seconds, held)

    def _expire(self) -> None:
        now = self._clock()
        for task_id in [t for t, r in self._routes.items() if r.expires <= now][:64]:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        route = self._routes.pop(task_id, None)
        if route is None:
            return
        mine = self._by_subject.get(route.subject)
        if mine is not None:
            mine.pop(task_id, None)
            if not mine:
                del self._by_subject[route.subject]

    def lifetime(self, result: Mapping[str, Any]) -> float:
        """When a route for the task in `result` expires (its `ttl` in ms; a day at most, and for null)."""
        task = result.get("task")
        return self._clock() + _ttl_seconds(task.get("ttl") if isinstance(task, dict) else None)


def _related(params: Mapping[str, Any], upstream_id: str, task_id: str) -> dict[str, Any]:
    """`params` of a message the backend sends about a task, naming it by the gateway's id (a task it names that is
    not this one is not named: its id means nothing to the caller)."""
    out = dict(params)
    meta = out.get("_meta")
    if not isinstance(meta, dict) or RELATED_TASK_META_KEY not in meta:
        return out
    related = meta[RELATED_TASK_META_KEY]
    rest = {k: v for k, v in meta.items() if k != RELATED_TASK_META_KEY}
    if isinstance(related, dict) and related.get("taskId") == upstream_id:
        rest[RELATED_TASK_META_KEY] = {**related, "taskId": task_id}
    out["_meta"] = rest
    return out


class TaskAsker:
    """The caller's asker for what a backend asks during a request about a task: the task named by the gateway's id."""

    def __init__(self, inner: Asker, upstream_id: str, task_id: str) -> None:
        self._inner, self._upstream_id, self._task_id = inner, upstream_id, task_id

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self._inner.ask(method, _related(params, self._upstream_id, self._task_id))


class TaskSink:
    """The request's sink for what a backend tells during a request about a task, the same way."""

    def __init__(self, inner: Sink, upstream_id: str, task_id: str) -> None:
        self._inner, self._upstream_id, self._task_id = inner, upstream_id, task_id

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        await self._inner.notify(method, _related(params, self._upstream_id, self._task_id))


def created(ref: ServerRef, result: dict[str, Any]) -> str | None:
    """The backend's task id if `result` is a CreateTaskResult (None: the call ran and answered as a plain call)."""
    if "task" not in result:
        return None
    try:
        return CreateTaskResult.model_validate(result, by_name=False).task.task_id
    except ValidationError:
        raise UpstreamProtocolError(ref.key, "answered a task-augmented call with a malformed task") from None


def _ttl_seconds(ttl: object) -> float:
    """How long the gateway keeps a task whose `ttl` (ms) is this: the backend's, a day at most (and for none or
    unlimited)."""
    if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl > 0:
        return min(ttl / 1000, _LONGEST)
    return _LONGEST


def shown(result: dict[str, Any], method: str, ref: ServerRef, upstream_id: str, task_id: str) -> dict[str, Any]:
    """The backend's answer to a request about its task `upstream_id` as the caller gets it: the task named by the
    gateway's id `task_id` wherever the answer names it."""
    out = _related(result, upstream_id, task_id)
    if method == "tools/call":  # a CreateTaskResult (checked by `created`)
        out["task"] = {**out["task"], "taskId": task_id, "ttl": round(_ttl_seconds(out["task"].get("ttl")) * 1000)}
    elif method in ("tasks/get", "tasks/cancel"):
        try:
            GetTaskResult.model_validate(out, by_name=False)
        except ValidationError:
            raise UpstreamProtocolError(ref.key, f"answered {method} with a malformed task") from None
        out["taskId"] = task_id
    return out
