"""Gateway-wide settings: where to listen, deadlines, limits. Defaults are what `serve` and `demo` use."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """What one caller (or one backend) may take of the gateway's shared capacity. Set in the gateway document
    (`limits:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 2025-11-25 client sessions one principal may hold open at once, over all endpoints.
    sessions_per_principal: int = Field(default=64, gt=0)
    # Client sessions the gateway holds open at once, over all endpoints and principals.
    max_sessions: int = Field(default=10_000, gt=0)
    # A client session without a request for this long is ended (its client re-initialises).
    session_idle_seconds: float = Field(default=1800.0, gt=0)
    # Requests one principal may send per second, sustained, and in one burst (a token bucket), on every route.
    requests_per_second_per_principal: float = Field(default=100.0, gt=0)
    request_burst_per_principal: int = Field(default=500, gt=0)
    # Upstream (backend) sessions. A 2025-11-25 backend session belongs to one principal and one credential (unless
    # the server says `upstream_session: shared`). A principal over its quota loses its own least recently used idle
    # session, a newcomer at the total cap one of whoever holds the most; a session with a call in flight is never
    # closed. At least the number of servers one principal uses at once (each is one session), plus room for
    # x-tfy-mcp-headers overrides (each distinct value is a session of its own).
    upstream_sessions_per_principal: int = Field(default=64, gt=0)
    max_upstream_sessions: int = Field(default=4096, gt=0)
    # stdio processes in all (each server's own, and each principal's where the server keeps per-user state or
    # credentials); at the cap the least recently used idle caller's process is stopped for a newcomer.
    max_stdio_processes: int = Field(default=64, gt=0)
    # A backend session nobody used for this long is ended (DELETE); the next call opens a new one.
    upstream_session_idle_seconds: float = Field(default=300.0, gt=0)
    # The largest backend answer the gateway reads: a JSON body, or one line or event of an event stream, checked as
    # it streams in. Past it the caller gets -32012 naming this limit and the connection is closed. 8 MiB holds a
    # ~5 MiB file as base64 inside a result; the gateway never holds more than this per answer in flight.
    max_upstream_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # One backend list (tools, resources, resource templates, prompts), whatever its pagination: at most this many
    # entries, and max_upstream_response_bytes of them; the rest are left out (logged, counted).
    max_backend_list_entries: int = Field(default=2000, gt=0)
    # Tool lists fetched with a caller's own credential (passthrough, per-user OAuth) are cached per credential:
    # at most this many are kept (least recently fetched dropped first).
    max_cached_tool_lists: int = Field(default=1024, gt=0)


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path(".virtual-mcp")
    # Where the state lives when not in the data directory's SQLite file: postgresql://... (replicas that share it).
    # The master key stays in the data directory (or VIRTUAL_MCP_MASTER_KEY).
    database_url: str | None = Field(default=None, repr=False)
    # Redis for what replicas share live (the token refresh lock, revocation and catalog events, request rates):
    # redis://... (virtual_mcp/fleet).
    redis_url: str | None = Field(default=None, repr=False)
    # How long a replica holds the fleet's token refresh lock without extending it: a holder that stops (crashed,
    # paused) lets the next one in after this long. The holder extends it every third of it while it works.
    refresh_lock_lease_seconds: float = Field(default=30.0, ge=0.1)
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
    # Reading a request (serve and demo; every route): its head must arrive within this long of the connection
    # opening (or of the next request's first byte), and be at most this large; its body within this long of the
    # head. Past them: 408 or 431 and the connection is closed (slowloris).
    request_head_timeout_seconds: float = Field(default=10.0, gt=0)
    max_request_head_bytes: int = Field(default=64 * 1024, ge=1024)
    request_body_timeout_seconds: float = Field(default=60.0, gt=0)
    # How often a running gateway looks for identities revoked by `virtual-mcp revoke` (from any process).
    revocation_poll_seconds: float = Field(default=1.0, gt=0)
    # The audit trail's JSON lines copy (besides the database); None: `<data_dir>/audit.jsonl`.
    audit_jsonl: Path | None = None
    limits: Limits = Field(default_factory=Limits)

    @property
    def audit_jsonl_path(self) -> Path:
        return self.audit_jsonl if self.audit_jsonl is not None else self.data_dir / "audit.jsonl"
