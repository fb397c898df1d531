"""No tool is ever listed or callable outside policy: random policies (hypothesis) checked against the gateway's
views over real backends, and a concrete matrix through the HTTP front door with real tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.backends import build_lab
from tests.lab_config import identities, write_identities
from tests.security_support import secure_gateway
from tests.support import LegacyOnly, Served, serve
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import GatewaySettings
from virtual_mcp.gateway.app import Security
from virtual_mcp.gateway.runtime import Runtime
from virtual_mcp.outbound.credentials import Caller
from virtual_mcp.registry import AGGREGATE_PATH, build_registry, server_path
from virtual_mcp.types import Authentication, AuthMethod, Principal, PrincipalKind, ServerRef

TEAMS = ["red", "blue", "green"]
USERS = ["u1@x.example", "u2@x.example", "u3@x.example"]
ACCOUNTS = ["ci", "bot"]
SERVERS = ["s1", "s2", "s3"]
SUBJECTS = [f"team:{t}" for t in TEAMS] + [f"user:{u}" for u in USERS] + [f"virtualaccount:{a}" for a in ACCOUNTS]
pytestmark = pytest.mark.anyio  # hypothesis wraps the async test, which hides it from the conftest hook
LAB_TOOLS = {
    "echo",
    "add",
    "point",
    "image",
    "audio",
    "embedded",
    "fail",
    "progress",
    "chatty",
    "slow",
    "headers",
    "grow",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[Served]:
    async with serve(build_lab().http_app(path="/mcp")) as served:
        yield served


policies = st.fixed_dictionaries(
    {
        "members": st.fixed_dictionaries({u: st.sets(st.sampled_from(TEAMS)) for u in USERS}),
        "servers": st.fixed_dictionaries({s: st.sets(st.sampled_from(SUBJECTS), max_size=3) for s in SERVERS}),
        "virtual": st.fixed_dictionaries(
            {
                "subjects": st.sets(st.sampled_from(SUBJECTS), max_size=3),
                "sources": st.lists(
                    st.tuples(st.sampled_from(SERVERS), st.sets(st.sampled_from(sorted(LAB_TOOLS)), min_size=1)),
                    min_size=1,
                    max_size=2,
                    unique_by=lambda t: t[0],
                ),
            }
        ),
    }
)


def write_policy(directory: Path, url: str, policy: dict[str, Any]) -> None:
    entries = []
    for server, subjects in policy["servers"].items():
        entries.append(
            f"  - name: {server}\n    type: integration/mcp-server/remote\n    url: {url}/mcp\n"
            f"    authorized_subjects: [{', '.join(sorted(subjects))}]\n"
        )
    sources = "".join(
        f"      - server: g/{server}\n        tools: [{', '.join(sorted(tools))}]\n"
        for server, tools in policy["virtual"]["sources"]
    )
    entries.append(
        "  - name: v\n    type: integration/mcp-server/virtual\n"
        f"    authorized_subjects: [{', '.join(sorted(policy['virtual']['subjects']))}]\n    servers:\n{sources}"
    )
    (directory / "g.yaml").write_text(
        "name: g\ntype: provider-account/mcp-server-group\nintegrations:\n" + "".join(entries)
    )
    teams = {team: [u for u in USERS if team in policy["members"][u]] for team in TEAMS}
    write_identities(directory, teams, ACCOUNTS)


def oracle(principal: Principal, subjects: set[str]) -> bool:
    """Policy as the configuration states it, written independently of virtual_mcp.policy."""
    if principal.subject in subjects:
        return True
    return any(f"team:{team}" in subjects for team in principal.teams)


def expected_tools(principal: Principal, policy: dict[str, Any], path: str) -> set[str]:
    direct = {s: oracle(principal, subjects) for s, subjects in policy["servers"].items()}
    virtual_ok = oracle(principal, policy["virtual"]["subjects"])
    virtual = {f"{s}__{t}" for s, tools in policy["virtual"]["sources"] for t in tools} if virtual_ok else set()
    if path == AGGREGATE_PATH:
        names = {f"g__{s}__{t}" for s, ok in direct.items() if ok for t in LAB_TOOLS}
        return names | {f"g__v__{n}" for n in virtual}
    if path == server_path(ServerRef("g", "v")):
        return virtual
    server = path.split("/")[3]
    return set(LAB_TOOLS) if direct[server] else set()


def principals(registry: Any) -> list[Principal]:
    users = [Principal(u, PrincipalKind.USER, registry.teams_of(u)) for u in USERS]
    return users + [Principal(a, PrincipalKind.VIRTUAL_ACCOUNT) for a in ACCOUNTS]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies)
async def test_random_policies_never_leak_a_tool(
    backend: Served, tmp_path_factory: Any, policy: dict[str, Any]
) -> None:
    directory = tmp_path_factory.mktemp("policy")
    write_policy(directory, backend.url, policy)
    registry = build_registry(load_config_dir(directory))
    gateway_settings = GatewaySettings(list_deadline_seconds=5)
    runtime = Runtime(registry, gateway_settings, Security.local(registry, gateway_settings).credentials)
    all_names = {name for p in registry.endpoints for name in expected_everything(policy, p)}
    async with runtime.running():
        with anyio.fail_after(30):
            for principal in principals(registry):
                caller = Caller(Authentication(principal, AuthMethod.TOKEN))
                for path in registry.endpoints:
                    view = runtime.views[path]
                    expected = expected_tools(principal, policy, path)
                    listed = {t["name"] for t in await view.list_tools(caller, 5)}
                    assert listed == expected, (principal, path)
                    for name in all_names:
                        route = await view.resolve(caller, name, 5)
                        assert (route is not None) == (name in expected), (principal, path, name)


def expected_everything(policy: dict[str, Any], path: str) -> set[str]:
    everyone = Principal("root", PrincipalKind.USER, frozenset(TEAMS))
    wide = {
        **policy,
        "servers": {s: {"team:red"} for s in SERVERS},
        "virtual": {**policy["virtual"], "subjects": {"team:red"}},
    }
    return expected_tools(everyone, wide, path) | {"g__s1__no_such_tool", "no_such_tool"}


MATRIX = """\
name: g
type: provider-account/mcp-server-group
integrations:
  - name: tracker
    type: integration/mcp-server/remote
    url: {url}/mcp
    authorized_subjects: [team:platform, virtualaccount:ci]
  - name: errors
    type: integration/mcp-server/remote
    url: {legacy}/mcp
    authorized_subjects: [team:platform, user:carol@x.example]
  - name: support-ro
    type: integration/mcp-server/virtual
    authorized_subjects: [team:support]
    servers:
      - server: g/tracker
        tools: [echo]
      - server: g/errors
        tools: [add]
"""
MATRIX_IDS = identities({"platform": ["alice@x.example"], "support": ["bob@x.example"]}, ["ci", "unused"])
ALL = LAB_TOOLS
EXPECTED = {
    # (subject, path) -> visible tool names; a path missing here is 403 for that subject.
    ("user:alice@x.example", "/mcp"): {f"g__tracker__{t}" for t in ALL} | {f"g__errors__{t}" for t in ALL},
    ("user:alice@x.example", "/mcp-server/g/tracker/server"): ALL,
    ("user:alice@x.example", "/mcp-server/g/errors/server"): ALL,
    ("user:bob@x.example", "/mcp"): {"g__support-ro__tracker__echo", "g__support-ro__errors__add"},
    ("user:bob@x.example", "/mcp-server/g/support-ro/server"): {"tracker__echo", "errors__add"},
    ("user:carol@x.example", "/mcp"): {f"g__errors__{t}" for t in ALL},
    ("user:carol@x.example", "/mcp-server/g/errors/server"): ALL,
    ("virtualaccount:ci", "/mcp"): {f"g__tracker__{t}" for t in ALL},
    ("virtualaccount:ci", "/mcp-server/g/tracker/server"): ALL,
    ("virtualaccount:unused", "/mcp"): set(),
}
PATHS = ["/mcp", "/mcp-server/g/tracker/server", "/mcp-server/g/errors/server", "/mcp-server/g/support-ro/server"]


@pytest.mark.parametrize("era", ["legacy", "2026-07-28"])
async def test_concrete_matrix_through_the_front_door(backend: Served, tmp_path: Path, era: str) -> None:
    async with serve(LegacyOnly(build_lab(name="old").http_app(path="/mcp"))) as legacy:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "g.yaml").write_text(MATRIX.format(url=backend.url, legacy=legacy.url))
        (config / "ids.yaml").write_text(MATRIX_IDS)
        async with secure_gateway(config, tmp_path / "data") as gw:
            subjects = sorted({s for s, _ in EXPECTED})
            for subject in subjects:
                kind, _, name = subject.partition(":")
                token = await gw.token(PrincipalKind(kind), name)
                every_name = {n for names in EXPECTED.values() for n in names} | {"g__tracker__nope"}
                for path in PATHS:
                    expected = EXPECTED.get((subject, path))
                    if expected is None:
                        await assert_forbidden(gw.url + path, token)
                        continue
                    async with gw.client(path, token, mode=era) as client:
                        assert {t.name for t in await client.list_tools()} == expected, (subject, path)
                        for tool in every_name:
                            if tool in expected and tool.rsplit("__", 1)[-1] not in ("echo", "add"):
                                continue  # listed is enough; calling e.g. `slow` would only wait
                            result = await call_outcome(client, tool)
                            assert result == ("ok" if tool in expected else "unknown"), (subject, path, tool)


async def call_outcome(client: Any, tool: str) -> str:
    from mcp.shared.exceptions import MCPError

    arguments = {"echo": {"text": "x"}, "add": {"a": 1, "b": 2}}.get(tool.rsplit("__", 1)[-1])
    if arguments is None:
        # Only echo and add are called for real; for the rest, route-or-refuse is what matters.
        arguments = {}
    try:
        await client.call_tool(tool, arguments, raise_on_error=False)
    except MCPError as exc:
        assert exc.code == -32602 and exc.message == f"Unknown tool: {tool!r}", exc
        return "unknown"
    return "ok"


async def assert_forbidden(url: str, token: str) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 403, (url, response.text)
