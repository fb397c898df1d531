"""A real OAuth 2 / OIDC authorization server for the tests: oidc-provider 9 on Node 22, in a child process.

`authorization_server()` starts tests/oauth/provider/server.mjs on a free loopback port and yields an `AuthServer`:
its endpoints, its clients, a headless login (`login`) and the test-only admin API (counters and behaviour switches).
Node 22 itself comes from the `node` npm package, so a machine needs only some Node.js with npm (20 is enough) and
the npm registry; `ensure_installed()` runs `npm ci` the first time.

No polling: the server binds port 0 and prints `READY <port>` once it is listening; the harness reads its stdout up to
that line under a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import anyio
import anyio.to_thread
import httpx
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.node_packages import NodePackage, stop_process_group
from tests.sensitive import mark

PROVIDER_DIR = Path(__file__).parent / "oauth" / "provider"
SERVER_SCRIPT = PROVIDER_DIR / "server.mjs"
READY_DEADLINE = 30.0
STOP_DEADLINE = 5.0

ACCOUNT = "alice@northwind.example"
RESOURCE_SCOPE = "mcp:tools mcp:read mcp:write"
REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"  # never dialled: the login stops at the redirect to it

# The default clients. Secrets are new for every run and registered as sensitive: no gateway log line may carry one.
CC_CLIENT_ID = "gateway-cc"  # client_credentials, client_secret_post
CC_BASIC_CLIENT_ID = "gateway-cc-basic"  # client_credentials, client_secret_basic
CODE_CLIENT_ID = "gateway-web"  # authorization_code (PKCE S256 required) + refresh_token, client_secret_basic
CLIENT_SECRETS = {
    CC_CLIENT_ID: secrets.token_urlsafe(24),
    CC_BASIC_CLIENT_ID: secrets.token_urlsafe(24),
    CODE_CLIENT_ID: secrets.token_urlsafe(24),
}
mark(*CLIENT_SECRETS.values())


# --- installation -------------------------------------------------------------------------------------------------


PROVIDER = NodePackage(PROVIDER_DIR, "oidc-provider 9")


def ensure_installed() -> Path:
    """Install the server's npm dependencies if they are missing or stale; returns the Node 22 binary."""
    return PROVIDER.ensure_installed()


# --- clients and PKCE ---------------------------------------------------------------------------------------------


def client_metadata(
    client_id: str,
    client_secret: str,
    grant_types: Sequence[str],
    redirect_uris: Sequence[str] = (),
    auth_method: str = "client_secret_basic",
) -> dict[str, Any]:
    """oidc-provider client metadata for a confidential client."""
    mark(client_secret)
    return {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_types": list(grant_types),
        "response_types": ["code"] if "authorization_code" in grant_types else [],
        "redirect_uris": list(redirect_uris),
        "token_endpoint_auth_method": auth_method,
    }


def default_clients(redirect_uris: Sequence[str] = (REDIRECT_URI,)) -> list[dict[str, Any]]:
    return [
        client_metadata(
            CC_CLIENT_ID, CLIENT_SECRETS[CC_CLIENT_ID], ["client_credentials"], auth_method="client_secret_post"
        ),
        client_metadata(CC_BASIC_CLIENT_ID, CLIENT_SECRETS[CC_BASIC_CLIENT_ID], ["client_credentials"]),
        client_metadata(
            CODE_CLIENT_ID, CLIENT_SECRETS[CODE_CLIENT_ID], ["authorization_code", "refresh_token"], redirect_uris
        ),
    ]


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE (code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


# --- the running server -------------------------------------------------------------------------------------------


@dataclass
class AuthServer:
    """A running authorization server. Endpoints come from its RFC 8414 metadata."""

    issuer: str
    metadata: dict[str, Any]
    clients: dict[str, dict[str, Any]]
    config: dict[str, Any]
    admin: httpx.AsyncClient = field(repr=False)
    log_file: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return self.issuer

    @property
    def token_endpoint(self) -> str:
        return str(self.metadata["token_endpoint"])

    @property
    def authorization_endpoint(self) -> str:
        return str(self.metadata["authorization_endpoint"])

    @property
    def revocation_endpoint(self) -> str:
        return str(self.metadata["revocation_endpoint"])

    @property
    def introspection_endpoint(self) -> str:
        return str(self.metadata["introspection_endpoint"])

    @property
    def jwks_uri(self) -> str:
        return str(self.metadata["jwks_uri"])

    def secret(self, client_id: str) -> str:
        return str(self.clients[client_id]["client_secret"])

    # Admin API (test only).

    async def stats(self) -> dict[str, Any]:
        """Counters since the last reset: {"token": {"total", "by_grant_type", "by_client", "requests": [...]},
        "revocation": {"total", "by_client"}, "introspection": {"total"}, "authorization": {"total"}}."""
        response = await self.admin.get("/__admin/stats")
        response.raise_for_status()
        return dict(response.json())

    async def token_requests(self, grant_type: str | None = None) -> int:
        """How many token requests arrived (of one grant type, or all) since the last reset."""
        token = (await self.stats())["token"]
        return int(token["total"] if grant_type is None else token["by_grant_type"].get(grant_type, 0))

    async def reset(self, *, stats: bool = True, behaviour: bool = True) -> None:
        """Zero the counters and/or put every behaviour switch back to its default."""
        response = await self.admin.post("/__admin/reset", json={"stats": stats, "behaviour": behaviour})
        response.raise_for_status()

    async def behave(self, **switches: Any) -> dict[str, Any]:
        """Change behaviour from now on; returns all switches. See server.mjs: token_delay_ms, token_fail_status,
        token_fail_count (None: every request), token_fail_error, omit_expires_in, access_token_ttl,
        login_account, interaction_error."""
        response = await self.admin.post("/__admin/behaviour", json=switches)
        response.raise_for_status()
        return dict(response.json())

    async def behaviour(self) -> dict[str, Any]:
        response = await self.admin.get("/__admin/behaviour")
        response.raise_for_status()
        return dict(response.json())

    async def jwks(self) -> dict[str, Any]:
        response = await self.admin.get(self.jwks_uri)
        response.raise_for_status()
        return dict(response.json())

    def log(self) -> str:
        """What the server wrote to stderr so far (oidc-provider's notices and warnings, crashes)."""
        self.log_file.flush()
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")

    # The authorization code flow, headless.

    def authorization_url(
        self,
        code_challenge: str,
        state: str,
        *,
        client_id: str = CODE_CLIENT_ID,
        redirect_uri: str = REDIRECT_URI,
        resource: str | None = None,
        scope: str | None = "mcp:tools",
        code_challenge_method: str = "S256",
        **extra: str,
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": code_challenge,
            "code_challenge_method": code_challenge_method,
            "state": state,
            **({"scope": scope} if scope is not None else {}),
            **({"resource": resource} if resource is not None else {}),
            **extra,
        }
        return f"{self.authorization_endpoint}?{urlencode(params)}"

    async def login(self, url: str, redirect_uri: str = REDIRECT_URI, max_hops: int = 10) -> dict[str, str]:
        """Play the browser: follow redirects from an authorization URL, cookies kept, through the headless login
        and consent, and return the query of the final redirect to `redirect_uri` (code, state, iss; or error)."""
        async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
            for _ in range(max_hops):
                response = await browser.get(url)
                if not response.is_redirect:
                    raise AssertionError(f"login stopped at {url}: HTTP {response.status_code} {response.text[:500]}")
                url = urljoin(url, response.headers["location"])
                if url.startswith(redirect_uri):
                    return dict(parse_qsl(urlsplit(url).query))
        raise AssertionError(f"no redirect to {redirect_uri} after {max_hops} hops")


def server_config(
    *,
    clients: list[dict[str, Any]] | None = None,
    redirect_uris: Sequence[str] = (REDIRECT_URI,),
    account_id: str = ACCOUNT,
    resources: Sequence[str] | None = None,
    default_resource: str | None = None,
    resource_scope: str = RESOURCE_SCOPE,
    access_token_ttl: int = 300,
    refresh_token_ttl: int = 86400,
) -> dict[str, Any]:
    """The JSON config server.mjs reads. `resources=None` accepts any http(s) resource indicator."""
    return {
        "clients": clients if clients is not None else default_clients(redirect_uris),
        "account_id": account_id,
        "resources": list(resources) if resources is not None else None,
        "default_resource": default_resource,
        "resource_scope": resource_scope,
        "access_token_ttl": access_token_ttl,
        "refresh_token_ttl": refresh_token_ttl,
    }


async def _wait_ready(process: Process, log_file: IO[bytes]) -> int:
    assert process.stdout is not None
    stdout = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(READY_DEADLINE):
            while True:
                line = (await stdout.receive_until(b"\n", 4096)).decode().strip()
                if line.startswith("READY "):
                    return int(line.split()[1])
    except (TimeoutError, anyio.IncompleteRead, anyio.EndOfStream) as exc:
        log_file.seek(0)
        log = log_file.read().decode(errors="replace")
        raise RuntimeError(f"the OAuth test server did not get ready ({exc!r}); its stderr:\n{log}") from exc


@asynccontextmanager
async def authorization_server(**options: Any) -> AsyncIterator[AuthServer]:
    """Run the OAuth test server for the duration of the block; `options` go to `server_config`."""
    node = await anyio.to_thread.run_sync(ensure_installed)
    config = server_config(**options)
    with tempfile.TemporaryFile() as log_file:
        process = await anyio.open_process(
            [str(node), str(SERVER_SCRIPT), json.dumps(config)],
            cwd=PROVIDER_DIR,
            stdin=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )
        try:
            port = await _wait_ready(process, log_file)
            issuer = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=issuer, timeout=10) as admin:
                response = await admin.get("/.well-known/oauth-authorization-server")
                response.raise_for_status()
                clients = {client["client_id"]: client for client in config["clients"]}
                yield AuthServer(issuer, response.json(), clients, config, admin, log_file)
        finally:
            await stop_process_group(process, STOP_DEADLINE)
