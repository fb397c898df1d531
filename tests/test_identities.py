"""One identity, however it is written: a token created as `Dave@X.example` is revoked by `revoke --user
dave@x.example` (real serve and CLI processes on one data directory), a JWT subject with a KELVIN SIGN is not kate,
stored rows are migrated to the canonical form, and a revocation that matches nobody says so."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import anyio
import httpx

from tests.audit_lab import ALICE, HIDDEN, MODERN_META, PLAIN, Lab, audit_lab, in_both_sinks
from tests.backends import build_lab
from tests.ports import free_ports
from tests.processes import cli, gateway_process, tools_list
from tests.security_support import GATEWAY_AUDIENCE, idp_jwt
from tests.sensitive import mark
from tests.support import serve
from virtual_mcp.types import PrincipalKind
from virtual_mcp.vault import Database
from virtual_mcp.vault.db import DB_FILE_NAME, MIGRATIONS
from virtual_mcp.vault.tokens import TokenStore

KELVIN = "\u212a"  # KELVIN SIGN: Python's str.lower() makes it "k"
SERVER = """\
name: lab
type: provider-account/mcp-server-group
integrations:
  - name: echo
    type: integration/mcp-server/remote
    url: {url}/mcp
    authorized_subjects: [user:DAVE@x.example]
"""


async def status(url: str, bearer: str) -> int:
    return (await tools_list(url, bearer, "/mcp-server/lab/echo/server")).status_code


async def test_revoke_user_reaches_a_token_created_in_another_case(tmp_path: Path) -> None:
    """Was: the token was stored as typed, `revoke --user dave@x.example` matched 0 tokens, reported success, and the
    token kept working."""
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    data = str(tmp_path / "data")
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = tmp_path / "servers.d"
        config.mkdir()
        (config / "lab.yaml").write_text(SERVER.format(url=backend.url))
        code, token, err = await cli("token", "create", "--user", "Dave@X.example", "--data-dir", data)
        assert code == 0, err
        mark(token.strip())
        assert "subject:  user:dave@x.example" in err
        async with gateway_process(["--config", str(config), "--port", str(port), "--data-dir", data]):
            assert await status(url, token.strip()) == 200  # `user:DAVE@x.example` in the config is the same user
            code, out, err = await cli("revoke", "--user", "dave@x.example", "--data-dir", data)
            assert (code, err) == (0, "")
            assert out.startswith("revoked dave@x.example: 1 gateway token(s)\n")
            assert await status(url, token.strip()) == 401  # the very next request
            # The trail answers "what happened to dave" with the revocation too, however the name is written.
            code, out, err = await cli("audit", "--user", "DAVE@X.EXAMPLE", "--format", "json", "--data-dir", data)
            assert code == 0, err
            [record] = [json.loads(line) for line in out.splitlines()]
            assert (record["method"], record["target"]) == ("revoke", "user:dave@x.example")
            assert record["detail"]["gateway_tokens_revoked"] == 1
    lines = [json.loads(line) for line in (tmp_path / "data" / "audit.jsonl").read_text().splitlines()]
    assert [line["target"] for line in lines if line["method"] == "revoke"] == ["user:dave@x.example"]


async def test_a_revocation_that_matches_nobody_says_so(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    code, _, err = await cli("token", "create", "--user", "dave@x.example", "--data-dir", data)
    assert code == 0, err
    code, _, err = await cli("secrets", "set", "t:g:k", "--data-dir", data, stdin="value")  # as serve, makes a key
    assert code == 0, err
    code, out, err = await cli("revoke", "--user", "dave@x.exmaple", "--data-dir", data)
    assert code == 1
    assert out.startswith("revoked dave@x.exmaple: 0 gateway token(s)\n")
    assert err == (
        "error: no token, connected account or audit record of dave@x.exmaple, and no team or subject in the "
        "configuration names them (give --config to look there too): check the spelling. The revocation is recorded "
        "anyway: IdP JWTs for this name issued before now are refused.\n"
    )
    code, out, _ = await cli("audit", "--user", "dave@x.exmaple", "--format", "json", "--data-dir", data)
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["detail"]["known"] is False
    code, _, err = await cli("revoke", "--user", "Dave@X.example", "--data-dir", data)
    assert (code, err) == (0, "")


async def test_a_kelvin_sign_subject_is_not_kate(tmp_path: Path) -> None:
    """Was: the JWT subject went through str.lower(), which maps U+212A to "k": a `\u212aate@x.example` token
    acted as kate, with kate's team. Now only ASCII letters are folded: it is another identity, seen as written."""
    async with audit_lab(tmp_path) as lab:
        now = time.time()
        impostor = idp_jwt(f"{KELVIN}ate@x.example", GATEWAY_AUDIENCE, now)
        kate = idp_jwt("KATE@X.example", GATEWAY_AUDIENCE, now)
        denied = await status_of(lab, impostor)
        assert denied.status_code == 403
        event = await in_both_sinks(lab.gw, denied.headers["x-request-id"])
        assert (event.subject, event.teams, event.outcome) == (f"user:{KELVIN}ate@x.example", (), "denied")
        allowed = await status_of(lab, kate)
        assert allowed.status_code == 200
        await lab.served_and_audited()


async def status_of(lab: Lab, bearer: str, path: str = PLAIN) -> httpx.Response:
    """The answer to a 2026-07-28 tools/list with this credential."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}}
    headers = {
        "authorization": f"Bearer {bearer}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    return await lab.http.post(f"{lab.url}{path}", json=body, headers=headers)


async def test_configuration_identities_are_canonical(tmp_path: Path) -> None:
    """`team:Platform` with member `Alice@X.example`, `user:Dave@X.example`, `virtualaccount:CI` in the
    configuration: tokens for alice, dave and ci (in any case) are the identities the configuration names."""
    async with audit_lab(tmp_path) as lab:
        for kind, name in (
            (PrincipalKind.USER, "ALICE@x.example"),
            (PrincipalKind.USER, "dave@X.EXAMPLE"),
            (PrincipalKind.VIRTUAL_ACCOUNT, "ci"),
        ):
            token = await lab.gw.token(kind, name)
            assert (await status_of(lab, token)).status_code == 200, name
        assert lab.gw.registry.teams_of(ALICE) == frozenset({"platform"})
        assert lab.gw.registry.virtual_accounts == frozenset({"ci"})
        assert (await status_of(lab, lab.alice, HIDDEN)).status_code == 403
        await lab.served_and_audited()


async def test_stored_identities_are_migrated_to_canonical_form(tmp_path: Path) -> None:
    """A database written before identities were canonical: token subjects and revocations are folded (ASCII only),
    and revocations already in the trail get the identity they are about, so `audit --user` finds them."""
    path = tmp_path / DB_FILE_NAME
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL)")
        for version, statements in enumerate(MIGRATIONS[:3], start=1):
            for statement in statements:
                raw.execute(statement)
            raw.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
        token = (
            "INSERT INTO tokens (id, secret_hash, subject_kind, subject_name, created_at) VALUES (?, x'00', ?, ?, 0)"
        )
        raw.execute(token, ("000000000001", "user", "Dave@X.Example"))
        raw.execute(token, ("000000000002", "user", "dave@x.example"))
        raw.execute(token, ("000000000003", "user", f"{KELVIN}ATE@X.example"))
        raw.execute(token, ("000000000004", "virtualaccount", "CI"))
        raw.execute("INSERT INTO revocations (subject, revoked_at) VALUES ('user:Eve@X.example', 1)")
        audit = (
            "INSERT INTO audit (ts, request_id, subject, kind, name, teams, endpoint, method, outcome, latency_ms,"
            " forwarded_headers, detail) VALUES (1, 'cli', 'operator:root', 'operator', 'root', '[]', ?, ?, 'allowed',"
            " 0, '[]', ?)"
        )
        raw.execute(audit, ("cli", "revoke", json.dumps({"user": "Eve@X.example", "gateway_tokens_revoked": 0})))
        raw.execute(audit, ("cli", "revoke", json.dumps({"token": "000000000004", "subject": "virtualaccount:CI"})))
        raw.execute(audit, ("cli", "revoke", "NaN"))  # not JSON SQLite reads: left alone, not a failed migration
        raw.execute(audit, ("/mcp", "tools/call", json.dumps({"user": "Mallory@X.example"})))  # a call: untouched
    async with Database.open(tmp_path) as db:
        rows = await db.fetchall("SELECT id, subject_name FROM tokens ORDER BY id")
        assert [r["subject_name"] for r in rows] == [
            "dave@x.example",
            "dave@x.example",
            f"{KELVIN}ate@x.example",  # not kate: only ASCII letters are folded
            "ci",
        ]
        assert await TokenStore(db).revoke_subject(PrincipalKind.USER, "DAVE@x.example") == 2
        assert [r[0] for r in await db.fetchall("SELECT subject FROM revocations")] == ["user:eve@x.example"]
        targets = [r[0] for r in await db.fetchall("SELECT target FROM audit ORDER BY id")]
        assert targets == ["user:eve@x.example", "virtualaccount:ci", None, None]


async def test_revocation_of_a_jwt_user_written_in_another_case(tmp_path: Path) -> None:
    """`revoke --user ALICE@X.example` refuses alice's IdP JWTs issued before it, whatever case their subject has."""
    async with audit_lab(tmp_path) as lab:
        early = idp_jwt("Alice@x.EXAMPLE", GATEWAY_AUDIENCE, time.time() - 5)
        assert (await status_of(lab, early)).status_code == 200
        code, _, err = await cli("revoke", "--user", "ALICE@X.example", "--data-dir", str(lab.gw.data_dir))
        assert code == 0, err
        with anyio.fail_after(30):
            await lab.gw.runtime.revocations_applied()
        assert (await status_of(lab, early)).status_code == 401
        late = idp_jwt("alice@X.example", GATEWAY_AUDIENCE, time.time() + 2)
        assert (await status_of(lab, late)).status_code == 200
