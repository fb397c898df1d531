"""Prompts, resources and resource templates of every remote server a caller may use, on `/mcp`; and of a virtual
server's sources, those it offers (`prompts` and `resources` of each source in its configuration), on its own
endpoint.

Each is the backend's own, named so that it finds its way back:
- a prompt as a tool is: `{group}__{server}__{prompt}` (or the server's `tool_prefix`), by `naming.namespaced`;
- a resource by a URI that wraps the backend's own: `mcp-gateway://{group}/{server}/{original URI}`; a template
  the same way, so a URI made from it is one the gateway can read (`parse_uri` undoes it).

Lists are asked of every backend the caller may use at once, each within `list_deadline_seconds`; a backend that
cannot answer (down, slow, the caller not connected to its per-user OAuth) is left out of the answer and logged,
as for tools. A prompt or resource of a server the caller may not use does not exist for them (the same answer
as one that does not exist at all).

A virtual server offers only what it names of each source (shell-style patterns; none by default): what it leaves
out of a server must not come back through that server's prompts or resources. Its gate is the virtual server's own
`authorized_subjects`, as for its tools. On `/mcp` its prompts are named like its tools; a resource keeps the
source's wrapped URI, listed once however many of the caller's servers offer it, and read through any of them that
offers it to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from virtual_mcp.errors import GatewayError, InvalidParams
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.passthrough import without_rounds
from virtual_mcp.gateway.service.relay import forward
from virtual_mcp.gateway.service.request_state import Issued
from virtual_mcp.gateway.service.subscriptions import subscription_handlers
from virtual_mcp.naming import SEPARATOR, namespaced
from virtual_mcp.policy import decide
from virtual_mcp.registry import Endpoint, Member
from virtual_mcp.timing import phase
from virtual_mcp.types import ServerRef

logger = logging.getLogger(__name__)
Handler = Callable[[RequestContext, Mapping[str, Any]], Awaitable[dict[str, Any]]]
SCHEME = "mcp-gateway"
_MAX_PAGES = 20  # a backend's list followed through at most this many pages
METHODS = frozenset({"prompts/list", "prompts/get", "resources/list", "resources/templates/list", "resources/read"})


def wrap_uri(ref: ServerRef, original: str) -> str:
    return f"{SCHEME}://{ref.group}/{ref.name}/{original}"


def parse_uri(uri: str) -> tuple[ServerRef, str] | None:
    """The server and the backend's own URI of a wrapped one; None for any other URI."""
    head = f"{SCHEME}://"
    if not uri.startswith(head):
        return None
    group, _, rest = uri[len(head) :].partition("/")
    name, _, original = rest.partition("/")
    if not group or not name or not original:
        return None
    return ServerRef(group, name), original


class Aggregate:
    """The handlers of `/mcp` for prompts and resources."""

    def __init__(self, endpoint: Endpoint, parts: ServiceParts) -> None:
        self._parts = parts
        self._path = endpoint.path
        self._budget = parts.registry.naming.budget
        # A remote server's own members offer everything; a virtual server's, what it names.
        self._members = tuple(m for m in endpoint.members if m.offers is None or m.offers.anything)
        self._by_source: dict[ServerRef, list[Member]] = {}
        for member in self._members:
            self._by_source.setdefault(member.source, []).append(member)

    def handlers(self) -> dict[str, Handler]:
        return {
            "prompts/list": self._prompts,
            "prompts/get": self._get_prompt,
            "resources/list": self._resources,
            "resources/templates/list": self._templates,
            "resources/read": self._read,
            **subscription_handlers(self._parts, self._resource_route),
        }

    async def _resource_route(self, ctx: RequestContext, uri: str) -> tuple[Member, str] | None:
        parsed = parse_uri(uri)
        if parsed is None:
            return None
        for member in self._by_source.get(parsed[0], ()):
            # Through any member the caller may use that offers it (not offered: as for one that does not exist).
            if _offered(member, "resources", parsed[1]) and self._allowed(ctx, member):
                return member, parsed[1]
        return None

    def _prompt_name(self, member: Member, original: str) -> str:
        return namespaced(member.prefix, original, self._budget)

    def _allowed(self, ctx: RequestContext, member: Member) -> bool:
        with phase("policy"):
            return decide(ctx.caller.principal, self._parts.registry.gates[member.gate]).allowed

    async def _ask(
        self,
        ctx: RequestContext,
        member: Member,
        method: str,
        params: Mapping[str, Any],
        timeout: float,
        asked: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`method` with `params` to the member's backend; `asked` is the caller's own request when it is one that
        may take rounds (prompts/get, resources/read: service/rounds.py)."""
        parts = self._parts
        credential = await parts.credentials.credential_for(member.source, ctx.caller)
        session = parts.pool.session(member.source, credential, ctx.caller.principal, ctx.declared)
        if asked is None:
            return await forward(ctx, session, method, params, timeout=timeout)
        target = str(asked.get("name", asked.get("uri", "")))
        issued = Issued.of(ctx.caller.principal.subject, self._path, method, target, asked.get("arguments"))
        upstream = without_rounds(params)
        return await parts.rounds.call(ctx, issued, asked, session, method, upstream, timeout=timeout)

    async def _gather(self, ctx: RequestContext, method: str, key: str) -> list[tuple[Member, dict[str, Any]]]:
        """Every entry of `method`'s list (under `key`) of every server the caller may use, in configuration order."""
        deadline = self._parts.settings.list_deadline_seconds
        found: dict[ServerRef, list[dict[str, Any]]] = {}

        async def fetch(member: Member) -> None:
            entries: list[dict[str, Any]] = []
            params: dict[str, Any] = {}
            try:
                for _ in range(_MAX_PAGES):
                    result = await self._ask(ctx, member, method, params, deadline)
                    page = result.get(key)
                    if isinstance(page, list):
                        entries.extend(e for e in page if isinstance(e, dict))
                    cursor = result.get("nextCursor")
                    if not isinstance(cursor, str) or not cursor:
                        break
                    params = {"cursor": cursor}
            except GatewayError as exc:
                logger.info("%s of %s left out of /mcp: %s", key, member.source, exc.message)
                return
            found[member.source] = entries

        allowed = [m for m in self._members if self._allowed(ctx, m)]
        with phase("upstream"), anyio.move_on_after(deadline + 1):
            async with anyio.create_task_group() as tg:
                for source in dict.fromkeys(m.source for m in allowed):  # each backend asked once
                    tg.start_soon(fetch, self._by_source[source][0])
        out: list[tuple[Member, dict[str, Any]]] = []
        shown: set[tuple[ServerRef, str]] = set()  # a resource offered by two members is listed once
        for member in allowed:
            for entry in found.get(member.source, ()):
                if not _entry_offered(member, key, entry):
                    continue
                if key != "prompts":
                    seen = (member.source, str(entry.get(_ENTRY_KEYS[key])))
                    if seen in shown:
                        continue
                    shown.add(seen)
                out.append((member, entry))
        return out

    async def _prompts(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        _no_cursor(params)
        prompts = []
        seen: set[str] = set()
        for member, prompt in await self._gather(ctx, "prompts/list", "prompts"):
            original = prompt.get("name")
            if not isinstance(original, str):
                continue
            name = self._prompt_name(member, original)
            if name in seen:
                continue
            seen.add(name)
            prompts.append({**prompt, "name": name})
        return {"prompts": prompts}

    async def _get_prompt(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        route = await self._prompt_route(ctx, name) if isinstance(name, str) else None
        if route is None:
            raise InvalidParams(f"Unknown prompt: {name}")
        member, original = route
        timeout = self._parts.settings.call_timeout_seconds
        return await self._ask(ctx, member, "prompts/get", {**params, "name": original}, timeout, params)

    async def _prompt_route(self, ctx: RequestContext, name: str) -> tuple[Member, str] | None:
        for member in self._members:
            prefix = SEPARATOR.join(member.prefix) + SEPARATOR
            if not name.startswith(prefix) or not self._allowed(ctx, member):
                continue
            original = name[len(prefix) :]
            if self._prompt_name(member, original) == name and _offered(member, "prompts", original):
                return member, original
        # A shortened name: which prompt it stands for is in the lists (which hold only what is offered).
        for member, prompt in await self._gather(ctx, "prompts/list", "prompts"):
            listed = prompt.get("name")
            if isinstance(listed, str) and self._prompt_name(member, listed) == name:
                return member, listed
        return None

    async def _resources(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        _no_cursor(params)
        resources = []
        for member, resource in await self._gather(ctx, "resources/list", "resources"):
            uri = resource.get("uri")
            if isinstance(uri, str):
                resources.append({**resource, "uri": wrap_uri(member.source, uri)})
        return {"resources": resources}

    async def _templates(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        _no_cursor(params)
        templates = []
        for member, template in await self._gather(ctx, "resources/templates/list", "resourceTemplates"):
            uri = template.get("uriTemplate")
            if isinstance(uri, str):
                templates.append({**template, "uriTemplate": wrap_uri(member.source, uri)})
        return {"resourceTemplates": templates}

    async def _read(self, ctx: RequestContext, params: Mapping[str, Any]) -> dict[str, Any]:
        uri = params.get("uri")
        route = await self._resource_route(ctx, uri) if isinstance(uri, str) else None
        if route is None:
            raise InvalidParams(f"Resource not found: {uri}")
        member, original = route
        timeout = self._parts.settings.call_timeout_seconds
        result = await self._ask(ctx, member, "resources/read", {**params, "uri": original}, timeout, params)
        contents = result.get("contents")
        if isinstance(contents, list):  # the contents carry the URI as the caller knows it
            result = {**result, "contents": [_wrapped(member.source, c) for c in contents]}
        return result


_ENTRY_KEYS = {"prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}


def _offered(member: Member, kind: str, key: str) -> bool:
    """Whether `member` offers the prompt (kind "prompts") or resource or template named `key`."""
    if member.offers is None:
        return True
    return member.offers.prompt(key) if kind == "prompts" else member.offers.resource(key)


def _entry_offered(member: Member, kind: str, entry: Mapping[str, Any]) -> bool:
    key = entry.get(_ENTRY_KEYS[kind])
    return isinstance(key, str) and _offered(member, kind, key)


def _wrapped(ref: ServerRef, content: Any) -> Any:
    if isinstance(content, dict) and isinstance(content.get("uri"), str):
        return {**content, "uri": wrap_uri(ref, content["uri"])}
    return content


def _no_cursor(params: Mapping[str, Any]) -> None:
    if params.get("cursor") is not None:
        raise InvalidParams("invalid cursor: this server returns every entry in one page")
