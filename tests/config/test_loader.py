from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from virtual_mcp.cli import main
from virtual_mcp.config.loader import load_config_dir, parse_config_text
from virtual_mcp.config.models import HeaderAuthData, OAuth2AuthData, PassthroughAuthData
from virtual_mcp.errors import ConfigError
from virtual_mcp.registry import EndpointKind, build_registry
from virtual_mcp.types import ServerRef

REPO = Path(__file__).resolve().parents[2]

GROUP_HEAD = "name: g\ntype: provider-account/mcp-server-group\nintegrations:\n"


def remote(name: str, **extra: str) -> str:
    lines = [f"  - name: {name}", "    type: integration/mcp-server/remote", "    url: http://127.0.0.1:1/mcp"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def virtual(name: str, servers: str) -> str:
    return f"  - name: {name}\n    type: integration/mcp-server/virtual\n    servers: {servers}\n"


def issues_of(text: str, name: str = "g.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(name, textwrap.dedent(text))
    return [str(i) for i in info.value.issues]


def registry_issues(tmp_path: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        build_registry(load_config_dir(tmp_path))
    return [str(i) for i in info.value.issues]


def test_design_doc_example_loads_unchanged() -> None:
    registry = build_registry(load_config_dir(REPO / "servers.d"))
    github = registry.remotes[ServerRef("backend-group", "github")]
    assert isinstance(github.auth, OAuth2AuthData) and github.auth.grant_type == "authorization_code"
    assert github.auth.code_challenge_methods_supported == ["S256"]
    analytics = registry.remotes[ServerRef("backend-group", "internal-analytics")]
    assert isinstance(analytics.auth, OAuth2AuthData) and analytics.auth.grant_type == "client_credentials"
    sentry = registry.remotes[ServerRef("backend-group", "sentry")]
    assert isinstance(sentry.auth, HeaderAuthData) and sentry.forwardable_headers == {"authorization"}
    logistics = registry.remotes[ServerRef("backend-group", "logistics-api")]
    assert isinstance(logistics.auth, PassthroughAuthData)
    restricted = registry.virtuals[ServerRef("backend-group", "restricted-sentry")]
    assert restricted.sources == ((ServerRef("backend-group", "sentry"), frozenset({"list_issues", "get_issue"})),)
    assert registry.teams_of("Alice@Northwind.example") == {"platform-engineering"}
    assert "cargo-copilot-runtime" in registry.virtual_accounts
    kinds = {ep.kind for ep in registry.endpoints.values()}
    assert kinds == {EndpointKind.REMOTE, EndpointKind.VIRTUAL, EndpointKind.AGGREGATE}
    assert "/mcp-server/backend-group/restricted-sentry/server" in registry.endpoints


def test_demo_config_loads() -> None:
    registry = build_registry(load_config_dir(REPO / "examples" / "demo.d"))
    assert len(registry.remotes) == 3 and len(registry.virtuals) == 1
    assert registry.warnings == ()


def test_unknown_key_names_file_entry_and_field() -> None:
    assert issues_of(GROUP_HEAD + remote("github", colour="blue")) == [
        "g.yaml: integration 'github': colour: unknown key"
    ]


def test_unknown_top_level_key_and_document_type() -> None:
    assert issues_of(GROUP_HEAD.replace("integrations:\n", "owner: me\n")) == ["g.yaml: owner: unknown key"]
    assert issues_of("type: server-farm\n") == [
        "g.yaml: type: unknown document type 'server-farm'; expected one of "
        "('provider-account/mcp-server-group', 'identities', 'gateway')"
    ]


def test_missing_field_and_bad_url() -> None:
    text = (
        GROUP_HEAD
        + "  - name: a\n    type: integration/mcp-server/remote\n"
        + remote("b").replace("http://127.0.0.1:1/mcp", "not a url")
    )
    found = issues_of(text)
    assert "g.yaml: integration 'a': url is required (or set transport: stdio with a command)" in found
    assert any(i.startswith("g.yaml: integration 'b': url: ") for i in found)


def test_names_that_would_break_namespacing_are_refused() -> None:
    found = issues_of(GROUP_HEAD + remote("a__b") + remote("_x"))
    assert len(found) == 2
    assert all("no '__'" in i for i in found)


def test_literal_secret_is_refused_without_echoing_it() -> None:
    text = GROUP_HEAD + remote("s", auth_data="{type: header, headers: {Authorization: 'Bearer hunter2hunter2'}}")
    [issue] = issues_of(text)
    assert "g.yaml: integration 's': auth_data.headers" in issue
    assert "must reference a secret" in issue
    assert "hunter2" not in issue


def test_oauth_client_secret_must_be_a_reference() -> None:
    auth = (
        "{type: oauth2, grant_type: client_credentials, token_url: 'https://t.example/token', "
        "client_id: app, client_secret: s3cr3t-value}"
    )
    [issue] = issues_of(GROUP_HEAD + remote("o", auth_data=auth))
    assert issue.startswith("g.yaml: integration 'o': auth_data.client_secret: must be a secret reference")
    assert "s3cr3t" not in issue


def test_authorization_code_needs_authorization_url_and_s256() -> None:
    auth = (
        "{type: oauth2, grant_type: authorization_code, token_url: 'https://t.example/token', client_id: app, "
        "client_secret: 'tfy-secret://t:g:k', code_challenge_methods_supported: [plain]}"
    )
    [issue] = issues_of(GROUP_HEAD + remote("o", auth_data=auth))
    assert "authorization_url is required" in issue


def test_yaml_syntax_error_names_line() -> None:
    [issue] = issues_of("name: g\ntype: [unclosed\n")
    assert issue.startswith("g.yaml: YAML syntax error at line ")


def test_non_mapping_document() -> None:
    assert issues_of("- a\n- b\n") == ["g.yaml: expected a mapping at the top level of the file"]


def test_dangling_and_invalid_virtual_references(tmp_path: Path) -> None:
    group = (
        GROUP_HEAD
        + remote("tracker")
        + virtual("v1", "[{server: g/missing}]")
        + virtual("v2", "[{server: g/v1}]")
        + virtual("v3", "[{server: g/tracker, tools: [a, a]}]")
    )
    found = registry_issues(tmp_path, {"g.yaml": group})
    assert "g.yaml: integration 'v1': servers[0].server: unknown server 'g/missing' (no such group/server)" in found
    assert "g.yaml: integration 'v2': servers[0].server: 'g/v1' is a virtual server; sources must be remote" in found
    assert "g.yaml: integration 'v3': servers[0].tools: lists a tool more than once" in found


def test_duplicate_names_across_and_within_files(tmp_path: Path) -> None:
    found = registry_issues(
        tmp_path,
        {
            "a.yaml": GROUP_HEAD + remote("x") + remote("x"),
            "b.yaml": GROUP_HEAD + remote("y"),
            "ids.yaml": "type: identities\nteams: [{name: t}, {name: t}]\n",
        },
    )
    assert "a.yaml: integration 'x': name: duplicate server name in group 'g'" in found
    assert "b.yaml: group 'g': name: duplicate group (also in a.yaml)" in found
    assert "ids.yaml: team 't': name: duplicate team (also in ids.yaml)" in found


def test_virtual_prefix_collision_is_refused_at_load(tmp_path: Path) -> None:
    other = "name: h\ntype: provider-account/mcp-server-group\nintegrations:\n" + remote("tracker")
    text = GROUP_HEAD + remote("tracker") + virtual("v", "[{server: g/tracker}, {server: h/tracker}]")
    [issue] = registry_issues(tmp_path, {"g.yaml": text, "h.yaml": other})
    assert "would share the tool prefix 'tracker'__" in issue


def test_undeclared_team_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(GROUP_HEAD + remote("x", authorized_subjects="[team:ghosts]"))
    (tmp_path / "ids.yaml").write_text("type: identities\nteams: [{name: real}]\n")
    registry = build_registry(load_config_dir(tmp_path))
    assert registry.warnings == (
        "g.yaml: integration 'x': authorized_subjects: 'team:ghosts' is not declared in any identities file",
    )


def test_check_cli_reports_and_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(REPO / "servers.d")]) == 0
    assert "ok: 4 remote server(s), 1 virtual server(s)" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text(GROUP_HEAD + remote("github", colour="blue"))
    assert main(["check", "--config", str(tmp_path)]) == 2
    assert "bad.yaml: integration 'github': colour: unknown key" in capsys.readouterr().err
    assert main(["check", "--config", str(tmp_path / "nope")]) == 2
    assert "configuration directory does not exist" in capsys.readouterr().err


def test_a_provider_without_s256_is_refused() -> None:
    auth = (
        "{type: oauth2, grant_type: authorization_code, authorization_url: 'https://idp.example/authorize', "
        "token_url: 'https://idp.example/token', client_id: app, client_secret: 'tfy-secret://t:g:k', "
        "code_challenge_methods_supported: [plain]}"
    )
    [issue] = issues_of(GROUP_HEAD + remote("o", auth_data=auth))
    assert "code_challenge_methods_supported must include S256 (PKCE plain is refused)" in issue


def test_per_user_oauth_needs_s256_declared_or_an_issuer_to_read_it_from() -> None:
    head = (
        "{type: oauth2, grant_type: authorization_code, authorization_url: 'https://idp.example/authorize', "
        "token_url: 'https://idp.example/token', client_id: app, client_secret: 'tfy-secret://t:g:k'"
    )
    [issue] = issues_of(GROUP_HEAD + remote("o", auth_data=head + "}"))
    assert "auth_data: PKCE S256 support must be established: declare code_challenge_methods_supported" in issue
    assert "give the provider's issuer" in issue
    parse_config_text(
        "g.yaml", textwrap.dedent(GROUP_HEAD + remote("o", auth_data=head + ", issuer: 'https://idp.example'}"))
    )
    [bad] = issues_of(GROUP_HEAD + remote("o", auth_data=head + ", issuer: 'not a url'}"))
    assert "auth_data.issuer:" in bad


def test_upstream_session_is_per_principal_unless_a_server_says_shared(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(GROUP_HEAD + remote("own") + remote("stateless", upstream_session="shared"))
    remotes = build_registry(load_config_dir(tmp_path)).remotes
    assert not remotes[ServerRef("g", "own")].shared_session
    assert remotes[ServerRef("g", "stateless")].shared_session
    assert issues_of(GROUP_HEAD + remote("a", upstream_session="per_user")) == [
        "g.yaml: integration 'a': upstream_session: Input should be 'per_principal' or 'shared'"
    ]


def test_upstream_limits_are_checked_in_the_gateway_document() -> None:
    doc = "type: gateway\nlimits:\n  upstream_sessions_per_principal: 0\n  max_upstream_response_bytes: 10\n"
    assert issues_of(doc, "gw.yaml") == [
        "gw.yaml: limits.upstream_sessions_per_principal: Input should be greater than 0",
        "gw.yaml: limits.max_upstream_response_bytes: Input should be greater than or equal to 1024",
    ]
