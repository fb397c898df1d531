"""The management CLI as an operator uses it: tokens, secrets, and serve refusing unresolvable references."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from tests.store_mode import state_database
from virtual_mcp.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str, str]:
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(args)
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def test_token_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    code, out, err = run(["token", "create", "--user", "alice@northwind.example", "--expires-in", "30d", *data], capsys)
    token = out.strip()
    assert code == 0 and token.startswith("vmcp_") and "only time the token is shown" in err
    code, out, _ = run(["token", "create", "--virtual-account", "ci", "--description", "CI", *data], capsys)
    assert code == 0
    code, listing, _ = run(["token", "list", *data], capsys)
    assert "user:alice@northwind.example" in listing and "virtualaccount:ci" in listing
    assert token not in listing and token.split("_")[2] not in listing
    token_id = token.split("_")[1]
    code, out, _ = run(["token", "revoke", token_id, *data], capsys)
    assert code == 0 and out.splitlines()[0] == f"revoked {token_id}"
    code, _, err = run(["token", "revoke", token_id, *data], capsys)
    assert code == 1 and "no active token" in err
    assert token_id not in run(["token", "list", *data], capsys)[1]
    assert token_id in run(["token", "list", "--all", *data], capsys)[1]
    code, _, err = run(["token", "create", "--user", "a@b.example", "--expires-in", "soon", *data], capsys)
    assert code == 2 and "invalid duration 'soon'" in err


def test_secrets_are_stored_encrypted_and_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    value = "sentry-token-XYZ-0987654321"
    code, out, _ = run(["secrets", "set", "northwind:sentry:token", *data], capsys, stdin=value + "\n")
    assert (code, out) == (0, "stored tfy-secret://northwind:sentry:token\n")
    code, out, _ = run(["secrets", "list", *data], capsys)
    assert out == "tfy-secret://northwind:sentry:token\n"
    for path in tmp_path.iterdir():
        assert value.encode() not in path.read_bytes(), path
    code, _, err = run(["secrets", "set", "not a ref", *data], capsys, stdin="x")
    assert code == 2 and "expected TENANT:GROUP:KEY" in err
    code, _, err = run(["secrets", "set", "t:g:k", *data], capsys, stdin="")
    assert code == 2 and "refusing to store an empty secret" in err
    assert run(["secrets", "delete", "northwind:sentry:token", *data], capsys)[0] == 0
    assert run(["secrets", "delete", "northwind:sentry:token", *data], capsys)[0] == 1


def test_serve_refuses_unresolvable_secret_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    run(["secrets", "set", "northwind:sentry:token", *data], capsys, stdin="v")
    code, _, err = run(["serve", "--config", str(REPO / "servers.d"), "--port", "0", *data], capsys)
    assert code == 2
    assert (
        "server 'backend-group/github': unresolvable secret reference tfy-secret://northwind:github-oauth:client_id "
        "(store it with: virtual-mcp secrets set northwind:github-oauth:client_id)"
    ) in err
    assert "tfy-secret://northwind:sentry:token" not in err  # that one resolves


def test_a_wrong_master_key_is_a_clear_startup_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    run(["secrets", "set", "northwind:sentry:token", *data], capsys, stdin="v")
    (tmp_path / "master.key").chmod(0o644)
    code, _, err = run(["secrets", "list", *data], capsys)
    assert code != 0 and "master.key" in err and "chmod 600" in err


def test_keys_rotate_rewraps_everything_and_keeps_it_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anyio

    from virtual_mcp.config.secrets import SecretRef
    from virtual_mcp.vault import Envelope, LocalKeyProvider, SecretStore
    from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

    data = ["--data-dir", str(tmp_path)]
    run(["secrets", "set", "t:g:one", *data], capsys, stdin="value-one-123")
    run(["secrets", "set", "t:g:two", *data], capsys, stdin="value-two-456")

    async def put_token() -> None:
        async with state_database(tmp_path) as db:
            await OAuthTokenStore(db, LocalKeyProvider.load(tmp_path)).put("g/s", "user:a@x", {"access_token": "a"})

    anyio.run(put_token)
    old = LocalKeyProvider.load(tmp_path).current_key_id()
    code, out, _ = run(["keys", "rotate", *data], capsys)
    assert code == 0 and "re-wrapped 2 secret(s) and 1 token record(s)" in out

    async def read_back() -> tuple[list[str], set[str]]:
        keys = LocalKeyProvider.load(tmp_path)
        async with state_database(tmp_path) as db:
            store = SecretStore(db, keys)
            values = [await store.get(SecretRef.parse(f"tfy-secret://t:g:{k}")) for k in ("one", "two")]
            rows = await db.fetchall("SELECT envelope FROM secrets UNION ALL SELECT envelope FROM oauth_tokens")
            kids = {Envelope.from_bytes(bytes(r["envelope"])).kek_id for r in rows}
            assert (await OAuthTokenStore(db, keys).get("g/s", "user:a@x")) == {"access_token": "a"}
        return values, kids

    values, kids = anyio.run(read_back)
    assert values == ["value-one-123", "value-two-456"]
    assert kids == {LocalKeyProvider.load(tmp_path).current_key_id()} and old not in kids


def test_a_missing_or_wrong_master_key_stops_serve_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "servers.d"
    config.mkdir()
    (config / "ids.yaml").write_text("type: identities\n")
    data = tmp_path / "data"
    run(["secrets", "set", "t:g:one", "--data-dir", str(data)], capsys, stdin="value-one-123")
    serve = ["serve", "--config", str(config), "--data-dir", str(data), "--port", "0"]
    monkeypatch.setenv("VIRTUAL_MCP_MASTER_KEY", "A" * 43 + "=")
    code, _, err = run(serve, capsys)
    assert code == 2 and "wrong master key?" in err
    monkeypatch.delenv("VIRTUAL_MCP_MASTER_KEY")
    (data / "master.key").unlink()
    code, _, err = run(serve, capsys)
    assert code == 2 and "no master key file at" in err
    assert not (data / "master.key").exists()  # no new key was minted over the sealed records


def test_connected_accounts_can_be_listed_and_disconnected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import anyio

    from virtual_mcp.vault import LocalKeyProvider
    from virtual_mcp.vault.oauth_tokens import OAuthTokenStore

    async def connect() -> None:
        async with state_database(tmp_path) as db:
            store = OAuthTokenStore(db, LocalKeyProvider.load(tmp_path))
            for server in ("g/github", "g/jira"):
                await store.put(server, "user:alice@x.example", {"access_token": "at-0123456789", "obtained_at": 1.0})

    anyio.run(connect)
    data = ["--data-dir", str(tmp_path)]
    assert run(["connections", "list", "--user", "Alice@x.example", *data], capsys)[1] == "g/github\ng/jira\n"
    code, out, _ = run(["connections", "disconnect", "--user", "alice@x.example", "g/github", *data], capsys)
    assert code == 0 and out == "disconnected alice@x.example from g/github\n"
    assert run(["connections", "list", "--user", "alice@x.example", *data], capsys)[1] == "g/jira\n"
    assert run(["connections", "disconnect", "--user", "alice@x.example", "g/github", *data], capsys)[0] == 1


def test_a_revocation_with_an_unusable_redis_url_is_refused_before_anything_is_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    code, out, _ = run(["token", "create", "--user", "alice@northwind.example", *data], capsys)
    token_id = out.strip().split("_")[1]
    for url, said in [("ftp://redis.internal", "unsupported Redis URL scheme 'ftp'"), ("redis://h:port", "")]:
        code, _, err = run(["token", "revoke", token_id, *data, "--redis-url", url], capsys)
        assert code == 2 and said in err and "port" not in err.replace("unsupported", "")
        code, _, err = run(["revoke", "--user", "alice@northwind.example", *data, "--redis-url", url], capsys)
        assert code == 2 and said in err
    assert token_id in run(["token", "list", *data], capsys)[1]  # still active


@pytest.mark.parametrize("flag", ["--refresh-lock-lease", "--request-head-timeout", "--request-body-timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_serve_refuses_seconds_it_cannot_use_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", str(tmp_path), "--data-dir", str(tmp_path / "data"), flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: '{value}'" in err and "Traceback" not in err
