"""Hostile corpus: identities in every odd form at every entry (token creation, the configuration, IdP JWT claims,
CLI filters), audit fields at and beyond every bound, CSV and terminal injection, deep and huge arguments.

Each case gets its precise answer (the canonical identity, or the precise error), and is followed by a normal call
of alice's that must be served and recorded in both audit sinks: nothing a hostile input did costs anyone else.
One gateway with its production stores and one backend serve the whole module.
"""

from __future__ import annotations

import csv
import io
import json
import time
import unicodedata
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.audit_lab import HIDDEN, PLAIN, Lab, audit_lab, in_both_sinks, modern_call
from tests.processes import cli as cli_process
from tests.security_support import GATEWAY_AUDIENCE, idp_jwt
from tests.test_cli import run
from virtual_mcp.audit_report import render
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import ConfigError, InvalidIdentity
from virtual_mcp.registry import build_registry
from virtual_mcp.types import PrincipalKind

KELVIN = "\u212a"
ACCEPT = "application/json, text/event-stream"
# Rate and session limits have their own tests; here one principal sends a few hundred requests in seconds.
UNLIMITED = Limits(requests_per_second_per_principal=1e6, request_burst_per_principal=1_000_000)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    async with audit_lab(tmp_path_factory.mktemp("audit-identity"), limits=UNLIMITED) as lab:
        yield lab


async def modern_list(lab: Lab, bearer: str, path: str = PLAIN) -> Any:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    headers = {
        "authorization": f"Bearer {bearer}",
        "accept": ACCEPT,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    return await lab.http.post(f"{lab.url}{path}", json=body, headers=headers)


# --- identities at token creation ------------------------------------------------------------------------------

CREATED = [
    pytest.param("Dave@X.example", "dave@x.example", True, id="mixed case, authorized as user:Dave@X.example"),
    pytest.param("ALICE@X.EXAMPLE", "alice@x.example", True, id="upper case, team member as Alice@X.example"),
    pytest.param(f"{KELVIN}ate@x.example", f"{KELVIN}ate@x.example", False, id="kelvin sign is not kate"),
    pytest.param("Ölaf@X.example", "Ölaf@x.example", False, id="non-ascii kept, ascii folded"),
    pytest.param("\u0130smail@x.example", "\u0130smail@x.example", False, id="dotted capital I kept"),
]


@pytest.mark.parametrize(("name", "canonical", "allowed"), CREATED)
async def test_token_for_an_odd_identity_is_its_canonical_self(
    lab: Lab, name: str, canonical: str, allowed: bool
) -> None:
    token = await lab.gw.token(PrincipalKind.USER, name)
    [info] = [t for t in await lab.gw.tokens.list() if token.split("_")[1] == t.id]
    assert info.name == canonical
    answer = await modern_list(lab, token)
    assert answer.status_code == (200 if allowed else 403)
    if not allowed:
        event = await in_both_sinks(lab.gw, answer.headers["x-request-id"])
        assert (event.subject, event.outcome) == (f"user:{canonical}", "denied")
    await lab.served_and_audited()


REFUSED_NAMES = [
    pytest.param("", "invalid user: user is empty", id="empty"),
    pytest.param("da ve@x.example", "contains whitespace (U+0020) at position 3", id="space"),
    pytest.param("dave@x.example\t", "contains a control character (U+0009) at position 15", id="tab"),
    pytest.param("dave@x.example\n", "contains a control character (U+000A) at position 15", id="newline"),
    pytest.param("\x1b[31mdave", "contains a control character (U+001B) at position 1", id="escape"),
    pytest.param("dave\x85@x", "contains a control character (U+0085) at position 5", id="C1 NEL"),
    pytest.param("dave\u00a0@x", "contains whitespace (U+00A0) at position 5", id="no-break space"),
    pytest.param("da\u200bve@x", "contains an invisible format character (U+200B) at position 3", id="zero width"),
    pytest.param("dave\u202e@x", "contains an invisible format character (U+202E) at position 5", id="bidi override"),
    pytest.param("dave\ud800@x", "contains a lone surrogate (U+D800) at position 5", id="lone surrogate"),
    pytest.param("dave\ue000@x", "contains a private-use character (U+E000) at position 5", id="private use"),
    pytest.param("d" * 257, "is 257 characters long (at most 256)", id="too long"),
]


@pytest.mark.parametrize(("name", "message"), REFUSED_NAMES)
async def test_token_for_what_cannot_be_an_identity_is_refused(lab: Lab, name: str, message: str) -> None:
    before = len(await lab.gw.tokens.list())
    with pytest.raises(InvalidIdentity) as refused:
        await lab.gw.tokens.create(PrincipalKind.USER, name)
    assert message in refused.value.message
    assert len(await lab.gw.tokens.list()) == before  # nothing was stored
    await lab.served_and_audited()


async def test_a_token_stored_before_identities_were_checked_is_refused_and_listed_inertly(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row written by an older gateway (`token create --user` took anything): refused with the reason, and shown
    escaped by `token list` rather than clearing the operator's screen."""
    token = await lab.gw.token(PrincipalKind.USER, "bob@x.example")
    token_id = token.split("_")[1]
    async with lab.gw.db.transaction() as tx:
        await tx.execute("UPDATE tokens SET subject_name = ? WHERE id = ?", ("bob\x1b[2J@x.example", token_id))
    refused = await modern_list(lab, token)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == (
        "invalid token: the token's subject is not a valid identity: it contains a control character (U+001B) at "
        "position 4; identities may not contain whitespace or control characters"
    )
    code, out, err = await cli(capsys, "token", "list", "--data-dir", str(lab.gw.data_dir))
    assert code == 0, err
    assert "user:bob\\x1b[2J@x.example" in out and "\x1b" not in out
    await lab.served_and_audited()


# --- identities in the configuration -----------------------------------------------------------------------------

GROUP = """\
name: g
type: provider-account/mcp-server-group
integrations:
  - name: s
    type: integration/mcp-server/remote
    url: http://127.0.0.1:9/mcp
    authorized_subjects: [{subjects}]
"""


def configured(directory: Path, subjects: str, identities: str) -> Any:
    directory.mkdir()
    (directory / "g.yaml").write_text(GROUP.format(subjects=subjects))
    (directory / "ids.yaml").write_text("type: identities\n" + identities)
    return build_registry(load_config_dir(directory))


CONFIGS = [
    pytest.param('"user:Dave@X.example"', "", "user:dave@x.example", id="user subject folded"),
    pytest.param('"team:PLATFORM-Eng"', "", "team:platform-eng", id="team subject folded"),
    pytest.param('"virtualaccount:CI"', "virtual_accounts: [{name: CI}]\n", "virtualaccount:ci", id="account folded"),
    pytest.param(f'"user:{KELVIN}ate@X.example"', "", f"user:{KELVIN}ate@x.example", id="kelvin kept"),
]


@pytest.mark.parametrize(("subjects", "identities", "canonical"), CONFIGS)
async def test_configured_identities_are_canonical(
    lab: Lab, tmp_path: Path, subjects: str, identities: str, canonical: str
) -> None:
    registry = configured(tmp_path / "c", subjects, identities)
    [gate] = registry.gates.values()
    assert gate == frozenset({canonical})
    await lab.served_and_audited()


async def test_configured_team_members_are_canonical(lab: Lab, tmp_path: Path) -> None:
    registry = configured(tmp_path / "c", '"team:ops"', 'teams: [{name: Ops, members: ["Kate@X.Example"]}]\n')
    assert registry.teams_of("KATE@x.example") == frozenset({"ops"})
    assert registry.teams_of(f"{KELVIN}ate@x.example") == frozenset()
    await lab.served_and_audited()


CONFIG_ERRORS = [
    pytest.param(
        '"user:da\\u200bve@x.example"',
        "",
        "g.yaml: integration 's': authorized_subjects[0]: invalid subject 'user:da\\u200bve@x.example': contains an "
        "invisible format character (U+200B) at position 8",
        id="zero width in a subject",
    ),
    pytest.param(
        '"team:ops\\u202e"',
        "",
        "invalid subject 'team:ops\\u202e': contains an invisible format character (U+202E) at position 9",
        id="bidi override in a subject",
    ),
    pytest.param(
        '"team:ops"',
        "teams: [{name: Ops}, {name: ops}]\n",
        "ids.yaml: team 'ops': name: duplicate team (also in ids.yaml)",
        id="teams equal once folded",
    ),
    pytest.param(
        '"team:ops"',
        "virtual_accounts: [{name: CI}, {name: ci}]\n",
        "ids.yaml: virtual account 'ci': name: duplicate (also in ids.yaml)",
        id="accounts equal once folded",
    ),
    pytest.param(
        '"team:ops"',
        'teams: [{name: "o\\x1bps"}]\n',
        "invalid team 'o\\x1bps': contains a control character (U+001B) at position 2",
        id="escape in a team name",
    ),
]


@pytest.mark.parametrize(("subjects", "identities", "message"), CONFIG_ERRORS)
async def test_configured_identities_that_cannot_be_are_refused(
    lab: Lab, tmp_path: Path, subjects: str, identities: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        configured(tmp_path / "c", subjects, identities)
    assert message in refused.value.message
    await lab.served_and_audited()


# --- identities in IdP JWT claims --------------------------------------------------------------------------------

JWT_ACCEPTED = [
    pytest.param("Dave@X.example", {}, 200, "user:dave@x.example", (), id="subject folded"),
    pytest.param("ALICE@x.example", {}, 200, "user:alice@x.example", ("platform",), id="member folded"),
    pytest.param(f"{KELVIN}ate@x.example", {}, 403, f"user:{KELVIN}ate@x.example", (), id="kelvin is not kate"),
    pytest.param("bob@x.example", {"groups": ["PLATFORM"]}, 200, "user:bob@x.example", ("platform",), id="team"),
    pytest.param(
        "bob@x.example",
        {"groups": ["Domain Users", "Platform"]},
        200,
        "user:bob@x.example",
        ("platform",),
        id="a team with a space is left out",
    ),
    pytest.param(
        "bob@x.example", {"groups": ["plat\u200bform"]}, 403, "user:bob@x.example", (), id="invisible team is not it"
    ),
    pytest.param(
        "bob@x.example", {"groups": "Ops Platform"}, 200, "user:bob@x.example", ("ops", "platform"), id="teams string"
    ),
]


@pytest.mark.parametrize(("sub", "claims", "status", "subject", "teams"), JWT_ACCEPTED)
async def test_jwt_identities_are_canonical(
    lab: Lab, sub: str, claims: dict[str, Any], status: int, subject: str, teams: tuple[str, ...]
) -> None:
    answer = await modern_list(lab, idp_jwt(sub, GATEWAY_AUDIENCE, time.time(), **claims))
    assert answer.status_code == status
    if status == 403:
        event = await in_both_sinks(lab.gw, answer.headers["x-request-id"])
        assert (event.subject, event.teams) == (subject, teams)
    else:
        session = await lab.session(idp_jwt(sub, GATEWAY_AUDIENCE, time.time(), **claims))
        _, request_id = await session.call("echo", {"text": "who am I"})
        event = await in_both_sinks(lab.gw, request_id)
        assert (event.subject, event.teams, event.outcome) == (subject, teams, "allowed")
        await session.close()
    await lab.served_and_audited()


async def test_a_jwt_with_hundreds_of_teams_is_recorded_with_a_bounded_list(lab: Lab) -> None:
    groups = ["Platform", *(f"group-{i:03}" for i in range(300))]
    session = await lab.session(idp_jwt("carol@x.example", GATEWAY_AUDIENCE, time.time(), groups=groups))
    _, request_id = await session.call("echo", {"text": "many teams"})
    await session.close()
    event = await in_both_sinks(lab.gw, request_id)
    assert event.outcome == "allowed" and len(event.teams) == 64 and event.teams[-1] == "…[238 more]"
    assert [e.request_id for e in await lab.gw.audit(team="group-000", user="carol@x.example")] == [request_id]
    marker = await lab.gw.db.fetchone("SELECT 1 FROM audit_teams WHERE team = ?", ("…[238 more]",))
    assert marker is None  # the marker is not indexed as a team
    await lab.served_and_audited()


JWT_REFUSED = [
    pytest.param("da\x07ve@x.example", "it contains a control character (U+0007) at position 3", id="bell"),
    pytest.param("dave\u202e@x.example", "it contains an invisible format character (U+202E) at position 5", id="bidi"),
    pytest.param(" dave@x.example", "it contains whitespace (U+0020) at position 1", id="leading space"),
    pytest.param("dave@x.example\r\n", "it contains a control character (U+000D) at position 15", id="CRLF"),
    pytest.param("dave\ud800@x.example", "it contains a lone surrogate (U+D800) at position 5", id="lone surrogate"),
    pytest.param("d" * 300, "it is 300 characters long (at most 256)", id="too long"),
]


@pytest.mark.parametrize(("sub", "reason"), JWT_REFUSED)
async def test_jwt_subjects_that_cannot_be_identities_are_refused(lab: Lab, sub: str, reason: str) -> None:
    answer = await modern_list(lab, idp_jwt(sub, GATEWAY_AUDIENCE, time.time()))
    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert message.startswith(f"invalid token: the subject claim is not a valid identity: {reason}")
    assert sub not in message and sub not in answer.headers["www-authenticate"]  # the claim is never quoted back
    await lab.served_and_audited()


# --- identities in CLI filters -----------------------------------------------------------------------------------


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in a thread of its own (it runs its own event loop), on the module gateway's data directory."""
    return await anyio.to_thread.run_sync(partial(run, list(args), capsys))


CLI_FOUND = [
    pytest.param(["audit", "--user", "ALICE@X.example"], "user:alice@x.example", id="audit --user folded"),
    pytest.param(["audit", "--team", "PLATFORM"], "user:alice@x.example", id="audit --team folded"),
    pytest.param(["audit", "--virtual-account", "CI"], "virtualaccount:ci", id="audit --virtual-account folded"),
]


@pytest.mark.parametrize(("args", "subject"), CLI_FOUND)
async def test_cli_filters_find_the_canonical_identity(
    lab: Lab, capsys: pytest.CaptureFixture[str], args: list[str], subject: str
) -> None:
    if subject.startswith("virtualaccount:"):
        session = await lab.session(await lab.gw.token(PrincipalKind.VIRTUAL_ACCOUNT, "Ci"))
        await session.call("echo", {"text": "from ci"})
        await session.close()
    await lab.served_and_audited()
    await lab.gw.audit_log.flush()
    code, out, err = await cli(capsys, *args, "--format", "json", "--limit", "5", "--data-dir", str(lab.gw.data_dir))
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records and {r["subject"] for r in records} == {subject}


CLI_REFUSED = [
    pytest.param(["audit", "--user", "alice @x.example"], "invalid user 'alice @x.example': contains whitespace "
                 "(U+0020) at position 6", id="audit --user space"),
    pytest.param(["audit", "--user", "alice\x1b[2J"], "invalid user 'alice\\x1b[2J': contains a control character "
                 "(U+001B) at position 6", id="audit --user escape"),
    pytest.param(["audit", "--team", "plat\u202eform"], "invalid team 'plat\\u202eform': contains an invisible "
                 "format character (U+202E) at position 5", id="audit --team bidi"),
    pytest.param(["audit", "--virtual-account", ""], "invalid virtual account: virtual account is empty",
                 id="audit --virtual-account empty"),
    pytest.param(["connections", "list", "--user", "al\u200bice"], "invalid user 'al\\u200bice': contains an "
                 "invisible format character (U+200B) at position 3", id="connections --user zero width"),
    pytest.param(["token", "create", "--user", "eve\u2028@x"], "invalid user 'eve\\u2028@x': contains whitespace "
                 "(U+2028) at position 4", id="token create --user line separator"),
    pytest.param(["revoke", "--user", ""], "invalid user: user is empty", id="revoke --user empty"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), CLI_REFUSED)
async def test_cli_filters_refuse_what_cannot_be_an_identity(
    lab: Lab, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = await cli(capsys, *args, "--data-dir", str(lab.gw.data_dir))
    assert (code, out) == (2, "")
    assert err == f"error: {message}; identities may not contain whitespace or control characters\n" or (
        err == f"error: {message}\n"
    )
    assert "\x1b" not in err and "\u202e" not in err  # the operator's terminal never gets them raw
    await lab.served_and_audited()


async def test_cli_token_create_stores_the_canonical_identity(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, token, err = await cli(
        capsys, "token", "create", "--user", "Eve@X.Example", "--data-dir", str(lab.gw.data_dir)
    )
    assert code == 0, err
    assert "subject:  user:eve@x.example" in err
    assert (await modern_list(lab, token.strip())).status_code == 403  # eve is nobody the configuration names
    await lab.served_and_audited()


async def test_cli_revoke_of_nobody_says_so(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(lab.gw.data_dir)
    code, out, err = await cli(capsys, "revoke", "--user", "Nobody@Nowhere.example", "--data-dir", data)
    assert code == 1 and out.startswith("revoked nobody@nowhere.example: 0 gateway token(s)")
    assert "check the spelling" in err
    [record] = await lab.gw.audit(user="NOBODY@nowhere.example")
    assert (record.method, record.target, record.detail) == (
        "revoke",
        "user:nobody@nowhere.example",
        {"user": "nobody@nowhere.example", "gateway_tokens_revoked": 0, "upstream": {}, "known": False},
    )
    await lab.served_and_audited()


# --- audit fields at and beyond their bounds ---------------------------------------------------------------------


def clipped(text: str, limit: int) -> str:
    """What a field of `limit` characters holds of `text`: all of it, or its start and a marker with its length."""
    marker = f"…[truncated, {len(text)} chars]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


TOOL_NAMES = [
    pytest.param("t" * 256, "t" * 256, id="tool name at the bound"),
    pytest.param("t" * 257, "t" * 233 + "…[truncated, 257 chars]", id="tool name one past"),
    pytest.param("t" * 1_000_000, "t" * 229 + "…[truncated, 1000000 chars]", id="tool name of a megabyte"),
    # Controls kept exactly, but a NUL (which no PostgreSQL text can hold) as its escape, on either engine.
    pytest.param("a\x00b\x1b[2J\u202ec", "a\\x00b\x1b[2J\u202ec", id="controls kept, NUL escaped"),
    pytest.param("é" * 300, clipped("é" * 300, 256), id="non-ascii past the bound"),
]


@pytest.mark.parametrize(("name", "recorded"), TOOL_NAMES)
async def test_a_refused_tool_name_is_recorded_within_its_bound(lab: Lab, name: str, recorded: str) -> None:
    session = await lab.alices()
    answer, request_id = await session.call(name, {})
    assert answer["error"]["code"] == -32602
    event = await in_both_sinks(lab.gw, request_id)
    assert (event.tool, event.called, event.outcome, event.error) == (recorded, None, "denied", "unknown tool")
    await lab.served_and_audited()


async def test_a_huge_name_on_the_aggregate_endpoint_is_recorded_within_its_bound(lab: Lab) -> None:
    session = await lab.alices("/mcp")
    answer, request_id = await session.call("x__" + "y" * 50_000, {})
    assert answer["error"]["code"] == -32602
    event = await in_both_sinks(lab.gw, request_id)
    assert event.tool is None and event.called == clipped("x__" + "y" * 50_000, 256)
    await lab.served_and_audited()


def refusal_body(method: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}


METHODS = [
    pytest.param(refusal_body("m" * 64), {}, "m" * 64, id="method at the bound"),
    pytest.param(refusal_body("m" * 65), {}, clipped("m" * 65, 64), id="method one past"),
    pytest.param(refusal_body("tools/call"), {"mcp-method": "initialize"}, "tools/call", id="header lies"),
    pytest.param(refusal_body("tools/list"), {"mcp-method": "x" * 10_000}, "tools/list", id="header huge"),
    pytest.param(b"not json", {"mcp-method": "tools/call"}, "HTTP POST (no JSON-RPC method)", id="body not json"),
    pytest.param(refusal_body(5), {"mcp-method": "tools/call"}, "HTTP POST (no JSON-RPC method)", id="method number"),
    pytest.param(
        refusal_body("ping Bearer abcdefghijklmnopqrstuvwxyz"), {}, "ping Bearer [REDACTED]", id="method redacted"
    ),
]


@pytest.mark.parametrize(("body", "headers", "recorded"), METHODS)
async def test_a_refusal_records_the_bodys_method_within_its_bound(
    lab: Lab, body: Any, headers: dict[str, str], recorded: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = {"authorization": f"Bearer {lab.alice}", "accept": ACCEPT, "content-type": "application/json"}
    refused = await lab.http.post(f"{lab.url}{HIDDEN}", content=content, headers={**auth, **headers})
    assert refused.status_code == 403
    event = await in_both_sinks(lab.gw, refused.headers["x-request-id"])
    assert (event.method, event.outcome, event.server) == (recorded, "denied", "lab/hidden")
    await lab.served_and_audited()


async def test_an_unconfigured_path_is_recorded_within_its_bounds(lab: Lab) -> None:
    path = "/mcp-server/" + "g" * 5000 + "/" + "s%1B" * 2000 + "/server"
    decoded = path.replace("%1B", "\x1b")
    refused = await lab.http.get(lab.url + path, headers={"authorization": f"Bearer {lab.alice}", "accept": ACCEPT})
    assert refused.status_code == 403
    event = await in_both_sinks(lab.gw, refused.headers["x-request-id"])
    assert (event.method, event.endpoint) == ("HTTP GET", clipped(decoded, 256))
    # The front door names an unconfigured server by at most 81 characters (the longest configurable group/server).
    assert event.server == "g" * 81 + "..."
    await lab.served_and_audited()


# --- deep and huge arguments -------------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"a": value}
    return value


ARGUMENTS = [
    pytest.param({"value": nested(600)}, "nested deeper than 16 levels", id="600 levels"),
    pytest.param({"value": "v" * 3_000_000}, "…[truncated, 3000000 chars]", id="a 3 MB string"),
    pytest.param({"value": {f"k{i}": i for i in range(100_000)}}, '"…": "[99937 more entries]"', id="100,000 keys"),
    pytest.param({"value": list(range(100_000))}, "…[99937 more items]", id="100,000 items"),
    pytest.param({"value": {f"k{i}": "v" * 2000 for i in range(40)}}, "more entries", id="40 x 2,000 chars"),
    pytest.param(
        {"value": "x" * 1000 + " Bearer abcdefghijklmnopqrstuvwxyz0123456789"}, "Bearer [REDACTED]", id="bearer at cut"
    ),
    pytest.param({"value": {"api_key": "k-123456789", "pin": "4321"}}, '"pin": "[REDACTED]"', id="keys redacted"),
]


@pytest.mark.parametrize(("arguments", "marker"), ARGUMENTS)
async def test_hostile_arguments_are_served_and_recorded_within_bounds(
    lab: Lab, arguments: dict[str, Any], marker: str
) -> None:
    session = await lab.alices()
    answer, request_id = await session.call("take", arguments)
    assert answer["result"]["structuredContent"] == {"result": "took it"}, str(answer)[:300]
    event = await in_both_sinks(lab.gw, request_id)
    assert event.detail is not None
    stored = json.dumps(event.detail, ensure_ascii=False)
    assert marker in stored
    assert len(json.dumps(event.detail, separators=(",", ":"))) <= 16_384
    assert "abcdefghijklmnop" not in stored and "k-123456789" not in stored and "4321" not in stored
    await lab.served_and_audited()


RAW_ARGUMENTS = [
    pytest.param('{"value": NaN}', {"value": "…[nan]"}, id="NaN"),
    pytest.param('{"value": [Infinity, -Infinity]}', {"value": ["…[inf]", "…[-inf]"]}, id="infinities"),
    pytest.param('{"value": ' + "9" * 400 + "}", {"value": "…[integer of 1329 bits]"}, id="a 400-digit integer"),
    pytest.param('{"value": "a\\udc80b"}', {"value": "a\\udc80b"}, id="lone surrogate in a value"),
    pytest.param('{"\\ud800": 1}', {"\\ud800": 1}, id="lone surrogate in a key"),
]


@pytest.mark.parametrize(("arguments", "recorded"), RAW_ARGUMENTS)
async def test_arguments_json_sinks_cannot_hold_are_recorded_as_markers(
    lab: Lab, arguments: str, recorded: dict[str, Any]
) -> None:
    answer, request_id = await modern_call(lab, "take", arguments)
    assert "result" in answer or "error" in answer
    event = await in_both_sinks(lab.gw, request_id)
    assert event.detail is not None and event.detail["arguments"] == recorded
    await lab.served_and_audited()


async def test_arguments_deeper_than_json_parsing_allows_are_a_parse_error(lab: Lab) -> None:
    session = await lab.alices()
    raw = b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"take","arguments":{"value":'
    raw += b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}}}"
    answer, _ = await session.request({}, raw=raw)
    assert answer["error"]["code"] == -32700
    await lab.served_and_audited()


# --- CSV and terminal injection ----------------------------------------------------------------------------------

INJECTIONS = [
    pytest.param('=HYPERLINK("http://evil.example","x")', "'=HYPERLINK", id="formula"),
    pytest.param("+cmd|' /C calc'!A0", "'+cmd", id="plus"),
    pytest.param("-2+3+cmd", "'-2+3", id="minus"),
    pytest.param("@SUM(1+1)", "'@SUM", id="at"),
    pytest.param("\t=1+1", "\\t=1+1", id="tab"),
    pytest.param("\r=1+1", "\\r=1+1", id="carriage return"),
    pytest.param("\x1b]0;owned\x07", "\\x1b]0;owned\\x07", id="terminal title"),
    pytest.param("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H", id="clear screen"),
    pytest.param("\x9b31m", "\\x9b31m", id="C1 CSI"),
    pytest.param("evil\u202etxt.exe", "evil\\u202etxt.exe", id="bidi override"),
    pytest.param("line\u2028break", "line\\u2028break", id="line separator"),
    pytest.param("\uff1dcmd", "'\uff1dcmd", id="full-width equals"),
]


def acted_on(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")]


@pytest.mark.parametrize(("name", "shown"), INJECTIONS)
async def test_hostile_values_are_inert_in_every_report_format(lab: Lab, name: str, shown: str) -> None:
    session = await lab.alices()
    _, request_id = await session.call(name, {})
    event = await in_both_sinks(lab.gw, request_id)
    assert event.tool == name  # the record is exact; only what shows it escapes
    out = io.StringIO()
    render([event], "csv", out)
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["tool"].startswith(shown) and acted_on(out.getvalue().replace("\r\n", "\n")) == []
    out = io.StringIO()
    render([event], "table", out)
    assert shown.lstrip("'") in out.getvalue() and acted_on(out.getvalue()) == []
    assert len(out.getvalue().splitlines()) == 2
    out = io.StringIO()
    render([event], "json", out)
    assert out.getvalue().isascii() and json.loads(out.getvalue())["tool"] == name
    await lab.served_and_audited()


async def test_the_cli_process_reports_every_hostile_value_inertly(lab: Lab) -> None:
    """`virtual-mcp audit` as a separate process on the running gateway's data directory, in all three formats."""
    session = await lab.alices()
    for param in INJECTIONS:
        await session.call(param.values[0], {})
    await lab.gw.audit_log.flush()
    data = str(lab.gw.data_dir)
    for fmt in ("csv", "table", "json"):
        code, out, err = await cli_process("audit", "--format", fmt, "--limit", "1000", "--data-dir", data)
        assert (code, err) == (0, "")
        assert acted_on(out.replace("\r\n", "\n")) == []
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(out)))
            assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r", "\uff1d")) for r in rows for v in r.values())
        if fmt == "json":
            assert out.isascii()
    await lab.served_and_audited()
