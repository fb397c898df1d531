"""Hostile and broken configuration files: each is refused with an error that names the file, the entry and the
field, and says what is wrong; nothing crashes, hangs or is silently changed.

Loaded as `serve` and `check` load them (load_config_dir + build_registry), from real files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from virtual_mcp.config.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_config_dir
from virtual_mcp.errors import ConfigError
from virtual_mcp.registry import build_registry

HEAD = "name: g\ntype: provider-account/mcp-server-group\nintegrations:\n"
ONE = (
    "  - name: s\n    type: integration/mcp-server/remote\n    url: http://127.0.0.1:1/mcp\n"
    "    authorized_subjects: [team:t]\n"
)
GROUP = HEAD + ONE


def laughs(levels: int) -> str:
    """A YAML bomb: each level an anchor holding nine aliases of the level below."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntype: identities\nteams: *l{levels - 1}\n"


def with_auth(auth: str) -> str:
    return GROUP + f"    auth_data: {auth}\n"


CASES: list[tuple[str, str | bytes, str]] = [
    # The file itself
    ("yaml syntax", HEAD + "  - name: [unclosed\n", "YAML syntax error at line 5, column 1"),
    ("tab indentation", HEAD + "\t- name: s\n", "found character '\\t' that cannot start any token"),
    ("empty file", "", "expected a mapping at the top level of the file"),
    ("a list", "- 1\n- 2\n", "expected a mapping at the top level of the file"),
    ("a scalar", "hello\n", "expected a mapping at the top level of the file"),
    ("no type", "name: g\n", "type: required field is missing"),
    ("unknown type", "type: nope\n", "type: unknown document type 'nope'"),
    ("duplicate key", GROUP + "    url: http://127.0.0.1:2/mcp\n", "duplicate key 'url' (first given at line 6)"),
    ("duplicate top key", GROUP + "name: h\n", "duplicate key 'name' (first given at line 1)"),
    ("mapping as key", "? [a, b]\n: 1\ntype: identities\n", "a mapping key must be a scalar"),
    ("yaml bomb", laughs(8), f"document expands to more than {MAX_NODES} values"),
    ("deep flow nesting", "type: identities\nteams: " + "[" * 5000 + "]" * 5000 + "\n", f"deeper than {MAX_DEPTH}"),
    ("deep block nesting", "type: identities\nx:\n" + "".join(" " * i + "- \n" for i in range(1, 60)), "deeper than"),
    ("python object tag", "type: !!python/object/apply:os.system [id]\n", "could not determine a constructor"),
    ("python name tag", "type: !!python/name:os.system\n", "could not determine a constructor"),
    ("not utf-8", b"type: identities\nteams: [\xff\xfe]\n", "not UTF-8: byte 0xff at line 2, offset 25"),
    ("latin-1 name", "type: identities\nteams: [{name: caf\xe9}]\n".encode("latin-1"), "not UTF-8: byte 0xe9"),
    ("too large", "type: identities\n#" + "x" * MAX_FILE_BYTES + "\n", f"larger than {MAX_FILE_BYTES} bytes"),
    ("second gateway document", "type: gateway\n", "a second gateway document (first in a.yaml)"),
    # Group and server names
    ("group with __", HEAD.replace("name: g", "name: a__b") + ONE, "name: must be letters and digits"),
    ("group with slash", HEAD.replace("name: g", "name: a/b") + ONE, "name: must be letters and digits"),
    ("group with space", HEAD.replace("name: g", "name: 'a b'") + ONE, "name: must be letters and digits"),
    ("group trailing _", HEAD.replace("name: g", "name: a_") + ONE, "name: must be letters and digits"),
    ("server with __", HEAD + ONE.replace("name: s", "name: s__t"), "integration 's__t': name: must be"),
    ("server unicode", HEAD + ONE.replace("name: s", "name: sérvér"), "name: must be letters and digits"),
    ("server twice", HEAD + ONE + ONE, "integration 's': name: duplicate server name in group 'g'"),
    ("unknown integration key", GROUP + "    colour: red\n", "integration 's': colour: unknown key"),
    ("unknown group key", GROUP + "owner: me\n", "g.yaml: owner: unknown key"),
    ("unknown integration type", HEAD + ONE.replace("/remote", "/magic"), "integration 's': type: unknown type"),
    ("transport stdio", GROUP + "    transport: stdio\n", "transport stdio needs a command"),
    ("transport unknown", GROUP + "    transport: carrier-pigeon\n", "transport: Input should be 'streamable-http'"),
    # URLs
    ("url file scheme", GROUP.replace("http://127.0.0.1:1/mcp", "file:///etc/passwd"), "url: URL scheme should be"),
    ("url javascript", GROUP.replace("http://127.0.0.1:1/mcp", "javascript:alert(1)"), "url: URL scheme should be"),
    ("url credentials", GROUP.replace("http://", "http://user:pw@"), "url: must not carry credentials"),
    ("url CR LF", GROUP.replace("http://127.0.0.1:1/mcp", '"http://127.0.0.1:1/m\\r\\nX: y"'), "control character"),
    ("url tab", GROUP.replace("http://127.0.0.1:1/mcp", '"http://127.0.0.1:1/m\\tcp"'), "control character"),
    ("url not a url", GROUP.replace("http://127.0.0.1:1/mcp", "not a url"), "integration 's': url:"),
    ("url missing", HEAD + ONE.replace("    url: http://127.0.0.1:1/mcp\n", ""), "url is required (or set transport"),
    # Subjects
    ("subject unknown kind", GROUP.replace("[team:t]", "[group:t]"), "authorized_subjects[0]: String should match"),
    ("subject empty name", GROUP.replace("[team:t]", "['team:']"), "authorized_subjects[0]: String should match"),
    ("subject wildcard", GROUP.replace("[team:t]", "['*']"), "authorized_subjects[0]: String should match"),
    ("subject with space", GROUP.replace("[team:t]", "['team:a b']"), "authorized_subjects[0]: String should match"),
    ("subjects not a list", GROUP.replace("[team:t]", "team:t"), "authorized_subjects: Input should be a valid list"),
    # Outbound credentials
    ("literal bearer", with_auth("{type: header, headers: {Authorization: Bearer abc123}}"), "never hold it literally"),
    ("literal api key", with_auth("{type: header, headers: {X-Api-Key: abc123}}"), "never hold it literally"),
    ("header value CR LF", with_auth('{type: header, headers: {"X-A": "a\\r\\nb"}}'), "value may not contain CR"),
    ("header name space", with_auth('{type: header, headers: {"X A": "v"}}'), "'X A' is not a valid HTTP header"),
    ("header name colon", with_auth('{type: header, headers: {"X:A": "v"}}'), "is not a valid HTTP header name"),
    ("bad secret ref", with_auth("{type: header, headers: {Authorization: 'Bearer tfy-secret://x'}}"), "malformed"),
    ("auth type unknown", with_auth("{type: magic}"), "auth_data.type: unknown type 'magic'; expected one of"),
    (
        "oauth2 no token_url",
        with_auth("{type: oauth2, grant_type: client_credentials, client_id: a, client_secret: b}"),
        "auth_data.token_url: required field is missing",
    ),
    ("forward Host", GROUP + "    forwardable_headers: [Host]\n", "'Host' is managed by the gateway"),
    ("forward Content-Length", GROUP + "    forwardable_headers: [Content-Length]\n", "managed by the gateway"),
    ("audit flag not boolean", GROUP + "    audit: {arguments: maybe}\n", "audit.arguments: Input should be a valid"),
    ("audit redact not list", GROUP + "    audit: {arguments: true, redact: 5}\n", "audit.redact: Input should be"),
    # Virtual servers
    (
        "virtual unknown source",
        HEAD + "  - name: v\n    type: integration/mcp-server/virtual\n    servers: [{server: g/nope}]\n",
        "integration 'v': servers[0].server: unknown server 'g/nope'",
    ),
    # Identities and the gateway document
    ("member not an e-mail", "type: identities\nteams:\n  - name: t\n    members: ['no']\n", "members[0]: String"),
    ("team name with space", "type: identities\nteams:\n  - name: 'a b'\n    members: []\n", "team 'a b': name"),
    ("jwt without keys", "type: gateway\ninbound: {jwt: {issuer: https://i, audience: https://a}}\n", "exactly one"),
    (
        "jwt alg none",
        "type: gateway\ninbound:\n  jwt: {issuer: https://i, audience: https://a, jwks_url: https://i/k,\n"
        "    algorithms: [none]}\n",
        "inbound.jwt.algorithms[0]: Input should be 'RS256'",
    ),
    ("public_url not a url", "type: gateway\ninbound: {public_url: 'not a url'}\n", "inbound.public_url: Input should"),
    ("limits negative", "type: gateway\nlimits: {max_sessions: -1}\n", "limits.max_sessions: Input should be greater"),
    ("limits unknown", "type: gateway\nlimits: {sessions: 1}\n", "limits.sessions: unknown key"),
]


@pytest.mark.parametrize(("text", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_broken_configuration_is_refused_precisely(tmp_path: Path, text: str | bytes, problem: str) -> None:
    if "a second gateway document" in problem:
        (tmp_path / "a.yaml").write_text("type: gateway\n")
    (tmp_path / "g.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as refused:
        build_registry(load_config_dir(tmp_path))
    issues = [str(issue) for issue in refused.value.issues]
    assert any(i.startswith("g.yaml") and problem in i for i in issues), issues


def test_a_byte_order_mark_is_read_as_editors_write_it(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("\ufeff" + GROUP)
    assert len(build_registry(load_config_dir(tmp_path)).remotes) == 1
