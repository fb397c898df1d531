"""Readable names: a server's `tool_prefix`, per-tool `rename` and `description`, the name budget of the gateway
document, and what `check` says about names it would shorten."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastmcp import Client
from mcp.shared.exceptions import MCPError

from tests.backends import build_lab
from tests.lab_config import group, remote, write_identities
from tests.support import LOCAL_USER, gateway, serve
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.errors import ConfigError
from virtual_mcp.registry import build_registry

TEAM = "platform-engineering"  # LOCAL_USER's team in tests.support's local-mode gateway
SUBJECTS = [f"team:{TEAM}"]


def write_lab(config: Path, backend: str, naming: dict[str, int] | None = None) -> Path:
    tracker = remote(
        "tracker",
        backend,
        SUBJECTS,
        tool_prefix="trk",
        tool_overrides={"echo": {"rename": "say", "description": "Says it back."}, "add": {"description": "Sums."}},
    )
    support = {
        "name": "support",
        "type": "integration/mcp-server/virtual",
        "tool_prefix": "help",
        "authorized_subjects": SUBJECTS,
        "servers": [{"server": "northwind/tracker", "tools": ["echo", "add"]}],
    }
    config.mkdir(parents=True, exist_ok=True)
    (config / "northwind.yaml").write_text(group("northwind", tracker, remote("plain", backend, SUBJECTS), support))
    if naming is not None:
        (config / "gateway.yaml").write_text(yaml.safe_dump({"type": "gateway", "naming": naming}))
    write_identities(config, {TEAM: [LOCAL_USER]})
    return config


async def tools_at(url: str, mode: str = "legacy") -> dict[str, dict[str, object]]:
    async with Client(url, mode=mode) as client:
        return {t.name: t.model_dump(by_alias=True) for t in await client.list_tools()}


async def test_aliases_renames_and_descriptions_on_every_endpoint(tmp_path: Path) -> None:
    async with (
        serve(build_lab().http_app(path="/mcp")) as backend,
        gateway(write_lab(tmp_path / "servers.d", backend.url)) as gw,
    ):
        for mode in ("legacy", "2026-07-28"):
            everything = await tools_at(f"{gw.url}/mcp", mode)
            # The alias stands for `northwind__tracker`, the rename for `echo`; others keep their names.
            assert {"trk__say", "trk__add", "help__trk__say", "help__trk__add"} <= everything.keys()
            assert "northwind__plain__echo" in everything
            assert not [n for n in everything if n.startswith("northwind__tracker") or n.endswith("trk__echo")]
            say = everything["trk__say"]
            assert say["description"] == "Says it back."
            assert say["_meta"]["virtual-mcp/source"] == {"server": "northwind/tracker", "tool": "echo"}
            assert everything["help__trk__add"]["description"] == "Sums."
            own = await tools_at(f"{gw.url}/mcp-server/northwind/tracker/server", mode)
            assert "say" in own and "echo" not in own and own["say"]["description"] == "Says it back."
            assert set(await tools_at(f"{gw.url}/mcp-server/northwind/support/server", mode)) == {
                "trk__say",
                "trk__add",
            }
        calls = [
            (f"{gw.url}/mcp", "trk__say"),
            (f"{gw.url}/mcp", "help__trk__say"),
            (f"{gw.url}/mcp-server/northwind/tracker/server", "say"),
            (f"{gw.url}/mcp-server/northwind/support/server", "trk__say"),
        ]
        for url, name in calls:
            async with Client(url) as client:
                assert (await client.call_tool(name, {"text": name})).data == name
        # A renamed tool's own name is no longer one of its names, on any endpoint.
        for url, name in [
            (f"{gw.url}/mcp", "trk__echo"),
            (f"{gw.url}/mcp", "northwind__tracker__echo"),
            (f"{gw.url}/mcp-server/northwind/tracker/server", "echo"),
            (f"{gw.url}/mcp-server/northwind/support/server", "trk__echo"),
        ]:
            async with Client(url) as client:
                with pytest.raises(MCPError, match="Unknown tool"):
                    await client.call_tool_mcp(name, {"text": "x"})


async def test_the_budget_comes_from_the_gateway_document(tmp_path: Path) -> None:
    async with serve(build_lab().http_app(path="/mcp")) as backend:
        config = write_lab(tmp_path / "servers.d", backend.url, {"max_length": 40, "reserved_for_client_prefix": 16})
        async with gateway(config) as gw:
            names = await tools_at(f"{gw.url}/mcp")
    assert all(len(name) <= 24 for name in names)  # 40 - 16
    assert {"trk__say", "northwind__plain__echo"} <= names.keys()  # short enough: untouched
    assert "northwind__plain__embedded" not in names  # 26 characters: shortened with a hash
    assert any(re.fullmatch(r"northwind_[0-9a-f]{12}", name) for name in names)  # the last resort: a hash


def registry_of(tmp_path: Path, group_text: str, gateway_text: str | None = None) -> object:
    config = tmp_path / "servers.d"
    config.mkdir(parents=True, exist_ok=True)
    (config / "g.yaml").write_text(group_text)
    if gateway_text is not None:
        (config / "gateway.yaml").write_text(gateway_text)
    return build_registry(load_config_dir(config))


def config_issues(tmp_path: Path, group_text: str, gateway_text: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        registry_of(tmp_path, group_text, gateway_text)
    return "\n".join(str(issue) for issue in info.value.issues)


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        # An alias stands where `group__server` would: it may not be a group's name, nor another server's alias.
        ([remote("a", "http://h", tool_prefix="g")], "tool_prefix: 'g' is also a group's name"),
        (
            [remote("a", "http://h", tool_prefix="x"), remote("b", "http://h", tool_prefix="x")],
            "tool_prefix: 'x' is also g/a's",
        ),
        ([remote("a", "http://h", tool_prefix="has__sep")], "tool_prefix"),
        ([remote("a", "http://h", tool_prefix="x" * 25)], "tool_prefix"),
        ([remote("a", "http://h", tool_overrides={"t": {"rename": "a b"}})], "rename"),
        ([remote("a", "http://h", tool_overrides={"t": {"nickname": "x"}})], "nickname"),
        # Two tools under one name: a rename onto another renamed tool, or onto a listed tool's own name.
        (
            [remote("a", "http://h", tool_overrides={"t": {"rename": "x"}, "u": {"rename": "x"}})],
            "tool_overrides.u: 't' is also shown as 'x'",
        ),
        (
            [remote("a", "http://h", tool_overrides={"t": {"description": "d"}, "u": {"rename": "t"}})],
            "tool_overrides.u: 't' is also shown as 't'",
        ),
    ],
)
def test_bad_naming_configuration_is_refused_precisely(
    tmp_path: Path, servers: list[dict[str, object]], expected: str
) -> None:
    assert expected in config_issues(tmp_path, group("g", *servers))


def test_a_budget_with_no_room_left_is_refused(tmp_path: Path) -> None:
    doc = "type: gateway\nnaming: {max_length: 40, reserved_for_client_prefix: 20}\n"
    assert "it must be at least 24" in config_issues(tmp_path, group("g", remote("a", "http://h")), doc)


def test_check_warns_about_every_name_it_can_tell_would_be_shortened(tmp_path: Path) -> None:
    long_tool = "list_every_open_issue_with_its_comments"
    servers = [
        remote("tracker-with-a-long-name", "http://h", tool_overrides={long_tool: {"description": "d"}}),
        remote("short", "http://h", tool_prefix="s", tool_overrides={long_tool: {"description": "d"}}),
        {
            "name": "a-virtual-server-with-a-long-name",
            "type": "integration/mcp-server/virtual",
            "servers": [{"server": "grp/short", "tools": ["ok"]}],
        },
    ]
    registry = registry_of(tmp_path, group("grp", *servers))
    warnings = "\n".join(registry.warnings)  # type: ignore[attr-defined]
    assert (
        f"grp/tracker-with-a-long-name's tool '{long_tool}' would be shown as 'grp__tracker-with-a-long-name__"
        in warnings
    )
    assert f"grp/short's tool '{long_tool}'" not in warnings  # `s__` leaves room for it
    assert "grp__a-virtual-server-with-a-long-name__s" not in warnings or "leaving" in warnings
    assert all("'ok'" not in line for line in registry.warnings)  # type: ignore[attr-defined]
