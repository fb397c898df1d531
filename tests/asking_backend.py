"""A backend that asks its caller things while a tool runs (elicitation, sampling, roots), in the way of each era:
a 2025-11-25 server sends a request on the call's stream and waits; a 2026-07-28 server answers `input_required`
and reads the answers when the caller retries."""

from __future__ import annotations

from typing import Any

import anyio
from fastmcp import Context, FastMCP
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    CreateMessageRequest,
    CreateMessageRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitRequestURLParams,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    TextContent,
)

NAME_STATE = "asked:name"  # ':' is no base64url character: it cannot appear in a sealed state by chance
NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
NESTED_SCHEMA = {"type": "object", "properties": {"address": {"type": "object", "properties": {}}}}


def _modern(ctx: Context) -> bool:
    return ctx._is_modern_protocol()


def _response(ctx: Context, key: str) -> Any:
    responses = ctx.input_responses or {}
    return responses.get(key)


def asking_backend() -> FastMCP:
    mcp = FastMCP("asker")
    withdraw = anyio.Event()  # set by `withdraw`: `ask_then_withdraw` takes its question back

    @mcp.tool
    async def ask_then_withdraw(ctx: Context) -> str:
        """(2025-11-25) Asks the caller's name, and takes the question back (the SDK tells the client it is
        cancelled) once `withdraw` is called."""
        nonlocal withdraw
        outcome = "answered"
        async with anyio.create_task_group() as tg:

            async def take_back() -> None:
                nonlocal outcome
                await withdraw.wait()
                outcome = "withdrawn"
                tg.cancel_scope.cancel()

            tg.start_soon(take_back)
            await ctx.session.elicit_form("What is your name?", NAME_SCHEMA, ctx.request_id)
            tg.cancel_scope.cancel()
        withdraw = anyio.Event()
        return outcome

    @mcp.tool
    def withdraw_question() -> str:
        """Makes `ask_then_withdraw` take its question back."""
        withdraw.set()
        return "done"

    @mcp.tool
    async def ask_name(ctx: Context) -> Any:
        """Asks the caller's name (form elicitation) and greets them."""
        if _modern(ctx):
            answer = _response(ctx, "name")
            if answer is None:
                params = ElicitRequestFormParams(message="What is your name?", requested_schema=NAME_SCHEMA)
                return InputRequiredResult(
                    input_requests={"name": ElicitRequest(params=params)}, request_state=NAME_STATE
                )
            action, content = answer.action, answer.content or {}
        else:
            result = await ctx.session.elicit_form("What is your name?", NAME_SCHEMA, ctx.request_id)
            action, content = result.action, result.content or {}
        return f"hello {content['name']}" if action == "accept" else action

    @mcp.tool
    async def ask_twice(ctx: Context) -> Any:
        """Two questions in a row: a first and a last name."""
        if _modern(ctx):
            # Each retry carries the answers of its own round only: what was learnt before is in the state.
            first = ctx.request_state.removeprefix("first:") if (ctx.request_state or "").startswith("first:") else None
            got = _response(ctx, "last" if first else "first")
            if got is not None and first is None:
                first, got = got.content["name"], None
            if first is not None and got is not None:
                return f"{first} {got.content['name']}"
            key = "last" if first else "first"
            params = ElicitRequestFormParams(message=f"Your {key} name?", requested_schema=NAME_SCHEMA)
            state = f"first:{first}" if first else "start"
            return InputRequiredResult(input_requests={key: ElicitRequest(params=params)}, request_state=state)
        one = await ctx.session.elicit_form("Your first name?", NAME_SCHEMA, ctx.request_id)
        two = await ctx.session.elicit_form("Your last name?", NAME_SCHEMA, ctx.request_id)
        return f"{(one.content or {})['name']} {(two.content or {})['name']}"

    @mcp.tool
    async def open_link(ctx: Context) -> Any:
        """A URL-mode elicitation."""
        if _modern(ctx):
            answer = _response(ctx, "link")
            if answer is None:
                params = ElicitRequestURLParams(
                    message="Connect your account", url="https://example.com/connect", elicitation_id="e1"
                )
                return InputRequiredResult(input_requests={"link": ElicitRequest(params=params)}, request_state="l1")
            return answer.action
        result = await ctx.session.elicit_url(
            "Connect your account", "https://example.com/connect", "e1", ctx.request_id
        )
        return result.action

    @mcp.tool
    async def summarize(text: str, ctx: Context) -> Any:
        """Asks the caller's model to summarise (sampling)."""
        message = SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarise: {text}"))
        if _modern(ctx):
            answer = _response(ctx, "llm")
            if answer is None:
                params = CreateMessageRequestParams(messages=[message], max_tokens=50)
                return InputRequiredResult(
                    input_requests={"llm": CreateMessageRequest(params=params)}, request_state="s"
                )
            return answer.content.text
        result = await ctx.session.create_message([message], max_tokens=50, related_request_id=ctx.request_id)
        return result.content.text  # type: ignore[union-attr]

    @mcp.tool
    async def roots(ctx: Context) -> Any:
        """The caller's roots."""
        if _modern(ctx):
            answer = _response(ctx, "roots")
            if answer is None:
                return InputRequiredResult(input_requests={"roots": ListRootsRequest()}, request_state="r")
            return [str(root.uri) for root in answer.roots]
        # On the call's own stream (the SDK's list_roots() would use the session's GET stream).
        related = ServerMessageMetadata(related_request_id=ctx.request_id)
        result = await ctx.session.send_request(ListRootsRequest(), ListRootsResult, metadata=related)
        return [str(root.uri) for root in result.roots]

    @mcp.tool
    async def bad_form(ctx: Context) -> str:
        """Asks with a form whose field is an object (not allowed): the caller must never see it."""
        try:
            await ctx.session.elicit_form("Your address?", NESTED_SCHEMA, ctx.request_id)
        except Exception as exc:
            return f"refused: {exc}"
        return "asked"

    return mcp
