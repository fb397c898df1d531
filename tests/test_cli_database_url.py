"""Every management command that touches state works on the database `serve` uses when it is named by URL
(`--database-url`, or VIRTUAL_MCP_DATABASE_URL): a real PostgreSQL server, the master key in the data directory."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.services import Postgres
from tests.test_cli import run
from tests.vault.test_store_engines import fresh_postgres


def test_tokens_secrets_revocation_and_audit_on_postgres(
    tmp_path: Path, postgres: Postgres, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = anyio.run(fresh_postgres, postgres)
    state = ["--data-dir", str(tmp_path), "--database-url", url]
    code, out, _ = run(["token", "create", "--user", "alice@northwind.example", *state], capsys)
    token = out.strip()
    assert code == 0 and token.startswith("vmcp_")
    assert "user:alice@northwind.example" in run(["token", "list", *state], capsys)[1]
    assert not (tmp_path / "gateway.db").exists()  # nothing went to the data directory's SQLite file
    assert run(["secrets", "set", "t:g:k", *state], capsys, stdin="s3cret-0123456789")[0] == 0
    assert "t:g:k" in run(["secrets", "list", *state], capsys)[1]
    code, _, err = run(["revoke", "--user", "alice@northwind.example", *state], capsys)
    assert code == 0, err
    assert token.split("_")[1] not in run(["token", "list", *state], capsys)[1]
    code, trail, _ = run(["audit", "--user", "alice@northwind.example", *state], capsys)
    assert code == 0 and "revoke" in trail
    assert run(["keys", "rotate", *state], capsys)[0] == 0
    assert "t:g:k" in run(["secrets", "list", *state], capsys)[1]
    # The environment names it as well as the flag does.
    monkeypatch.setenv("VIRTUAL_MCP_DATABASE_URL", url)
    assert run(["secrets", "list", "--data-dir", str(tmp_path)], capsys)[1].count("t:g:k") == 1


def test_a_database_url_of_another_kind_is_refused_precisely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["token", "list", "--data-dir", str(tmp_path), "--database-url", "mysql://u:pw@h/db"], capsys)
    assert code == 2 and "unsupported database URL scheme 'mysql'" in err and "pw" not in err
