"""Gateway-wide settings: where to listen, deadlines, limits. Defaults are what `serve` and `demo` use."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path(".virtual-mcp")
    # The identity used for unauthenticated requests in loopback-only local mode.
    local_user: str | None = None
    # Extra browser origins allowed to call the gateway (DNS-rebinding protection); loopback origins always are.
    allowed_origins: tuple[str, ...] = ()
    # Host names the gateway is reached by (besides loopback); on a non-loopback listener, empty means any.
    allowed_hosts: tuple[str, ...] = ()
    # Per-backend deadline for tools/list fan-out; a slower backend is left out of that answer.
    list_deadline_seconds: float = Field(default=3.0, gt=0)
    # Deadline for one forwarded call (tools/call, resources/read, ...).
    call_timeout_seconds: float = Field(default=120.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # Deadline for one request to an OAuth token endpoint (retried when nothing can have happened there).
    token_timeout_seconds: float = Field(default=10.0, gt=0)
    # A backend's cached tool list is refetched after this long even without list_changed.
    catalog_ttl_seconds: float = Field(default=300.0, gt=0)
    # After a backend failed, how long its tools stay left out before it is asked again.
    backend_retry_seconds: float = Field(default=10.0, gt=0)
    max_request_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Namespaced tool names are kept this short so clients can add their own prefix within 64 characters.
    max_tool_name_length: int = Field(default=48, ge=24, le=64)
    # How often a running gateway looks for identities revoked by `virtual-mcp revoke` (from any process).
    revocation_poll_seconds: float = Field(default=1.0, gt=0)
    # The audit trail's JSON lines copy (besides the database); None: `<data_dir>/audit.jsonl`.
    audit_jsonl: Path | None = None

    @property
    def audit_jsonl_path(self) -> Path:
        return self.audit_jsonl if self.audit_jsonl is not None else self.data_dir / "audit.jsonl"
