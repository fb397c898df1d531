"""The server the official conformance suite's server scenarios expect (`@modelcontextprotocol/conformance`): its
tools, resources, prompts and completions, written with fastmcp as our users write servers. The suite is run
against it directly and through the gateway (tests/interop/test_conformance.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import mcp_types
from fastmcp import Context, FastMCP
from fastmcp.prompts import Message
from fastmcp.tools import Tool, ToolResult
from fastmcp.utilities.types import Audio, Image
from mcp.server.context import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from mcp_types import EmbeddedResource, ImageContent, TextContent, TextResourceContents
from pydantic import Field

from tests.backends import PNG, WAV

STEP = 0.05  # the suite's scenarios ask for pauses of ~50 ms between a tool's notifications

SEP1034 = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}
SEP1330 = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}
SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


async def ask(ctx: Context, key: str, request: Any) -> Any:
    """The client's answer to `request`: asked on the call's stream (2025-11-25), or by an `input_required` result
    whose retry carries it (2026-07-28: the result is returned for the tool to return)."""
    if ctx._is_modern_protocol():
        answer = (ctx.input_responses or {}).get(key)
        if answer is None:
            return mcp_types.InputRequiredResult(input_requests={key: request}, request_state=key)
        return answer
    related = ServerMessageMetadata(related_request_id=ctx.request_id)
    result_type = mcp_types.ElicitResult if request.method == "elicitation/create" else mcp_types.CreateMessageResult
    return await ctx.session.send_request(request, result_type, metadata=related)


async def elicit(ctx: Context, schema: dict[str, Any], message: str, prefix: str = "Elicitation completed") -> Any:
    params = mcp_types.ElicitRequestFormParams(message=message, requested_schema=schema)
    answer = await ask(ctx, "form", mcp_types.ElicitRequest(params=params))
    if isinstance(answer, mcp_types.InputRequiredResult):
        return answer
    return f"{prefix}: action={answer.action}, content={json.dumps(answer.content or {})}"


def conformance_fixture() -> FastMCP:
    mcp = FastMCP("conformance-fixture", dereference_schemas=False)

    @mcp.tool
    def test_simple_text() -> str:
        """Returns simple text."""
        return "This is a simple text response for testing."

    @mcp.tool
    def test_image_content() -> Image:
        """Returns an image."""
        return Image(data=PNG, format="png")

    @mcp.tool
    def test_audio_content() -> Audio:
        """Returns audio."""
        return Audio(data=WAV, format="wav")

    @mcp.tool
    def test_embedded_resource() -> ToolResult:
        """Returns an embedded resource."""
        resource = TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return ToolResult(content=[EmbeddedResource(type="resource", resource=resource)])

    @mcp.tool
    def test_multiple_content_types() -> ToolResult:
        """Returns text, an image and a resource."""
        resource = TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
        )
        return ToolResult(
            content=[
                TextContent(type="text", text="Multiple content types test:"),
                ImageContent(type="image", data=base64.b64encode(PNG).decode(), mime_type="image/png"),
                EmbeddedResource(type="resource", resource=resource),
            ]
        )

    @mcp.tool
    async def test_tool_with_logging(ctx: Context) -> str:
        """Logs three messages at info level while it runs."""
        for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.info(message)
            await anyio.sleep(STEP)
        return "Tool with logging executed successfully"

    @mcp.tool
    def test_error_handling() -> str:
        """Always fails."""
        raise ValueError("This tool intentionally returns an error for testing")

    @mcp.tool
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50, 100 of 100."""
        for done in (0, 50, 100):
            await ctx.report_progress(done, 100)
            await anyio.sleep(STEP)
        return "Tool with progress executed successfully"

    @mcp.tool
    async def test_sampling(prompt: str, ctx: Context) -> Any:
        """Asks the client's model."""
        message = mcp_types.SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
        params = mcp_types.CreateMessageRequestParams(messages=[message], max_tokens=100)
        answer = await ask(ctx, "llm", mcp_types.CreateMessageRequest(params=params))
        if isinstance(answer, mcp_types.InputRequiredResult):
            return answer
        content = answer.content
        return f"LLM response: {content.text if isinstance(content, TextContent) else content}"

    @mcp.tool
    async def test_elicitation(message: str, ctx: Context) -> Any:
        """Asks the user for a username and an email."""
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        return await elicit(ctx, schema, message, "User response")

    @mcp.tool
    async def test_elicitation_sep1034_defaults(ctx: Context) -> Any:
        """Asks with defaults for every primitive type."""
        return await elicit(ctx, SEP1034, "Test client default value handling - please accept with defaults")

    @mcp.tool
    async def test_elicitation_sep1330_enums(ctx: Context) -> Any:
        """Asks with every enum variant."""
        return await elicit(ctx, SEP1330, "Test enum schema variants")

    @mcp.tool
    async def test_reconnection(ctx: Context) -> str:
        """Closes its response stream before answering: the client resumes it (SEP-1699)."""
        close = ctx.request_context.close_sse_stream if ctx.request_context is not None else None
        if close is not None:
            await close()
        await anyio.sleep(STEP)
        return "Reconnection test completed successfully"

    def schema_tool(name: str = "", address: dict[str, str] | None = None) -> str:
        return "ok"

    tool = Tool.from_function(
        schema_tool, name="json_schema_2020_12_tool", description="Tool with JSON Schema 2020-12 features"
    )
    mcp.add_tool(tool.model_copy(update={"parameters": SCHEMA_2020_12}))

    @mcp.resource("test://static-text", mime_type="text/plain", description="A static text resource")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", mime_type="image/png", description="A static binary resource")
    def static_binary() -> bytes:
        return PNG

    @mcp.resource("test://template/{id}/data", mime_type="application/json", description="A resource template")
    def template(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.resource("test://watched-resource", mime_type="text/plain", description="A resource to subscribe to")
    def watched() -> str:
        return "Watched resource content"

    @mcp.prompt
    def test_simple_prompt() -> str:
        """A simple prompt."""
        return "This is a simple prompt for testing."

    @mcp.prompt
    def test_prompt_with_arguments(
        arg1: str = Field(description="First test argument"), arg2: str = Field(description="Second test argument")
    ) -> str:
        """A prompt with arguments."""
        return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"

    @mcp.prompt
    def test_prompt_with_embedded_resource(
        resourceUri: str = Field(description="URI of the resource"),
    ) -> list[Message]:
        """A prompt embedding a resource."""
        resource = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            Message(EmbeddedResource(type="resource", resource=resource)),
            Message("Please process the embedded resource above."),
        ]

    @mcp.prompt
    def test_prompt_with_image() -> list[Message]:
        """A prompt with an image."""
        image = ImageContent(type="image", data=base64.b64encode(PNG).decode(), mime_type="image/png")
        return [Message(image), Message("Please analyze the image above.")]

    @mcp.completion
    def complete(ref: Any, argument: Any, context: Any) -> list[str]:
        return [value for value in ("paris", "park", "party") if value.startswith(argument.value)]

    subscribed: set[str] = set()

    async def subscribe(
        ctx: ServerRequestContext[Any], params: mcp_types.SubscribeRequestParams
    ) -> mcp_types.EmptyResult:
        subscribed.add(str(params.uri))
        return mcp_types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any], params: mcp_types.UnsubscribeRequestParams
    ) -> mcp_types.EmptyResult:
        subscribed.discard(str(params.uri))
        return mcp_types.EmptyResult()

    mcp._mcp_server.add_request_handler("resources/subscribe", mcp_types.SubscribeRequestParams, subscribe)
    mcp._mcp_server.add_request_handler("resources/unsubscribe", mcp_types.UnsubscribeRequestParams, unsubscribe)
    return mcp
