"""Requests a backend makes of its client while a caller's request runs (elicitation, sampling, roots): checked
here before the caller sees them, and the caller's answers checked before the backend does.

A 2025-11-25 backend asks with a JSON-RPC request on the call's stream; a 2026-07-28 backend answers the call with an
`input_required` result listing its requests. A 2025-11-25 caller is asked by a request pushed on its call's stream
(an `Asker`, see wire/legacy.py); a 2026-07-28 caller by an `input_required` result (service/rounds.py). Both sides
meet in the same checks:

- only these three methods are relayed, each only to a caller that declared the capability it needs (URL-mode
  elicitation needs `elicitation.url`, sampling with tools `sampling.tools`); the backend is told otherwise;
- the request must be well-formed for its method (an elicitation's `requestedSchema` is a flat object of primitive
  fields): a malformed one never reaches the caller, and the backend is told why;
- the caller's answer must be a well-formed result of that method, or the backend gets an error instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from mcp_types import methods as spec_methods
from mcp_types._v2025_11_25 import PrimitiveSchemaDefinition
from pydantic import TypeAdapter, ValidationError

from virtual_mcp.errors import INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, AskFailed
from virtual_mcp.upstream.capabilities import Capabilities, declares

# Server-to-client requests are the 2025-11-25 schema's (2026-07-28 embeds the same payloads in input_required).
_SCHEMA_VERSION = "2025-11-25"
ASKABLE = frozenset({"elicitation/create", "sampling/createMessage", "roots/list"})
_FIELD = TypeAdapter[Any](PrimitiveSchemaDefinition)


class Asker(Protocol):
    """A caller that can be asked now, on its request's open stream (a 2025-11-25 session)."""

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The caller's result for the request; raises AskFailed with the error the backend is sent."""
        ...


def _needed(method: str, params: Mapping[str, Any]) -> tuple[str, ...]:
    if method == "elicitation/create":
        return ("elicitation", "url" if params.get("mode") == "url" else "form")
    if method == "sampling/createMessage":
        return ("sampling", "tools") if params.get("tools") else ("sampling",)
    return ("roots",)


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else None
    if first is None:
        return "invalid"
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("params",))
    return f"{where or 'params'}: {first.get('msg', 'invalid')}"


def checked_request(method: str, params: object, declared: Capabilities) -> dict[str, Any]:
    """The backend's request of its caller, if it may be put to the caller; AskFailed (the backend's answer) if not."""
    if method not in ASKABLE:
        raise AskFailed(METHOD_NOT_FOUND, f"virtual-mcp does not relay {method!r} to its callers")
    if not isinstance(params, dict):
        raise AskFailed(INVALID_PARAMS, f"malformed {method} request: params must be an object")
    try:
        spec_methods.parse_server_request(method, _SCHEMA_VERSION, params)
    except ValidationError as exc:
        raise AskFailed(INVALID_PARAMS, f"malformed {method} request: {_why(exc)}") from None
    except (KeyError, ValueError):
        raise AskFailed(INVALID_PARAMS, f"malformed {method} request") from None
    if method == "elicitation/create" and params.get("mode") != "url":
        _check_form(params["requestedSchema"])
    needed = _needed(method, params)
    if not declares(declared, needed):
        raise AskFailed(
            METHOD_NOT_FOUND, f"the caller did not declare the client capability {'.'.join(needed)}; {method} refused"
        )
    return params


def _check_form(schema: Mapping[str, Any]) -> None:
    """A form's fields are primitives (string, number, boolean, enum), never objects or arrays of objects."""
    properties = schema.get("properties") or {}
    for name, field in properties.items():
        try:
            _FIELD.validate_python(field, by_name=False)
        except ValidationError:
            raise AskFailed(
                INVALID_PARAMS,
                f"malformed elicitation/create request: requestedSchema field {name[:64]!r} is not a primitive field",
            ) from None
    required = schema.get("required") or []
    missing = [name for name in required if name not in properties]
    if missing:
        raise AskFailed(
            INVALID_PARAMS,
            f"malformed elicitation/create request: required field {str(missing[0])[:64]!r} is not in its properties",
        )


def checked_answer(method: str, result: object) -> dict[str, Any]:
    """The caller's result for `method`, if well-formed; AskFailed otherwise (what the backend is sent)."""
    if not isinstance(result, dict):
        raise AskFailed(INTERNAL_ERROR, f"the caller's answer to {method} is not an object")
    try:
        spec_methods.validate_client_result(method, _SCHEMA_VERSION, result)
    except ValidationError as exc:
        raise AskFailed(INTERNAL_ERROR, f"the caller's answer to {method} is malformed: {_why(exc)}") from None
    return result


def caller_error(method: str, error: object) -> AskFailed:
    """The caller answered `method` with a JSON-RPC error: the same error for the backend (a malformed one, -32603)."""
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, int) and not isinstance(code, bool) and isinstance(message, str):
            return AskFailed(code, message[:1000], error.get("data"))
    return AskFailed(INTERNAL_ERROR, f"the caller answered {method} with a malformed error")
