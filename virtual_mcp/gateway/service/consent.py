"""A caller's credential for a backend, where a per-user OAuth server needs the user to connect their account first:
a caller that declared URL-mode elicitation is asked to open the gateway's consent link through the same bridge as a
backend's questions (service/asks.py), and its call goes on once the account is connected. Any other caller gets
the -32042 error (its text carries the link).

- A 2025-11-25 caller is asked on its call's stream; when it accepts, the call waits (within its timeout) for the
  consent to finish in this process, says so (`notifications/elicitation/complete`), and goes on with the new token.
  Declined, cancelled, or not connected in time: -32042.
- A 2026-07-28 caller gets `input_required` with the URL elicitation and a sealed state; its retry goes on if the
  account is connected by then, and gets -32042 if it is not (it is asked once per call, never in a loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from virtual_mcp.errors import AskFailed
from virtual_mcp.gateway.service.context import RequestContext
from virtual_mcp.gateway.service.parts import ServiceParts
from virtual_mcp.gateway.service.passthrough import without_rounds
from virtual_mcp.gateway.service.request_state import Issued
from virtual_mcp.outbound.consent import ConsentRequired
from virtual_mcp.outbound.credentials import Credential
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream.capabilities import declares

_URL_MODE = ("elicitation", "url")


async def credential_or_consent(
    parts: ServiceParts, ctx: RequestContext, ref: ServerRef, issued: Issued, params: Mapping[str, Any]
) -> tuple[Credential | dict[str, Any], Mapping[str, Any]]:
    """(the caller's credential for `ref`, the params left for the call), or (an `input_required` result asking a
    2026-07-28 caller to connect, params). Raises ConsentRequired when the caller cannot be asked, or was."""
    credentials = parts.credentials
    if ctx.modern and parts.rounds.kind(params, issued) == "consent":
        await parts.rounds.spend(params, issued)  # the retry after being asked: connected by now, or -32042
        return await credentials.credential_for(ref, ctx.caller), without_rounds(params)
    try:
        return await credentials.credential_for(ref, ctx.caller), params
    except ConsentRequired as needed:
        if not declares(ctx.declared, _URL_MODE):
            raise
        link = {"mode": "url", "message": needed.message, "url": needed.url}
        if ctx.asker is not None:
            with credentials.connecting(ctx.caller.principal.name, ref) as connected:
                try:
                    answer = await ctx.asker.ask("elicitation/create", {**link, "elicitationId": needed.elicitation_id})
                except AskFailed:
                    raise needed from None
                if answer.get("action") != "accept":
                    raise
                with anyio.move_on_after(parts.settings.call_timeout_seconds):
                    await connected.wait()
                if not connected.is_set():
                    raise needed from None  # not connected in time: -32042, with the link
            await ctx.sink.notify("notifications/elicitation/complete", {"elicitationId": needed.elicitation_id})
            return await credentials.credential_for(ref, ctx.caller), params
        if ctx.modern:
            ttl = parts.settings.call_timeout_seconds
            asking = {"connect": {"method": "elicitation/create", "params": link}}
            return parts.rounds.asking(issued, asking, {"k": "consent"}, ttl), params
        raise
