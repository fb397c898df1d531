"""No cookie state crosses callers, credentials or servers: a backend's `Set-Cookie` is never stored, so no request
the gateway sends (to it, or to another backend on the same host) ever carries a `Cookie`."""

from __future__ import annotations

from pathlib import Path

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.lab_config import PLATFORM, group, remote, write_identities
from tests.security_support import secure_gateway
from tests.stateful_backend import Seen, stateful_app
from tests.support import serve
from virtual_mcp.types import PrincipalKind

USERS = ("alice@northwind.example", "bob@northwind.example")


def group_doc(first: str, second: str, third: str) -> str:
    return group("lab", remote("first", first), remote("second", second), remote("third", third))


async def test_no_request_carries_a_cookie_any_backend_set(tmp_path: Path) -> None:
    seen = {name: Seen() for name in ("first", "second", "third")}
    cookie = b"sid=set-by-a-backend-for-one-caller; Path=/"
    async with (
        serve(stateful_app(seen["first"], set_cookie=cookie)) as first,
        serve(stateful_app(seen["second"], set_cookie=cookie)) as second,
        serve(stateful_app(seen["third"], legacy=False, set_cookie=cookie)) as third,
    ):
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(group_doc(first=first.url, second=second.url, third=third.url))
        write_identities(config, {PLATFORM: USERS})
        async with secure_gateway(config, tmp_path / "data") as gw:
            for user in USERS:
                token = await gw.token(PrincipalKind.USER, user)
                for mode in ("legacy", "auto"):
                    async with Client(StreamableHttpTransport(f"{gw.url}/mcp", auth=token), mode=mode) as client:
                        assert len(await client.list_tools()) == 3 * 5  # remember, recall, session, wait, chatty
                        for server in ("first", "second", "third"):
                            await client.call_tool(f"lab__{server}__remember", {"value": user})
                            await client.call_tool(f"lab__{server}__recall", {})
    # Every backend on this host (the same host for cookies: ports do not count) set a cookie on every answer.
    assert all(s.requests > 4 for s in seen.values())
    assert [s.cookies for s in seen.values()] == [[], [], []]
