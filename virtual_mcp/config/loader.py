"""Reads `servers.d/*.yaml` into validated models; every problem is reported with its file, entry and field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from virtual_mcp.config.models import NAME_PATTERN, ConfigFile, GatewayFile, IdentitiesFile, ServerGroupFile
from virtual_mcp.errors import ConfigError, ConfigIssue

T = TypeVar("T")
Document = ServerGroupFile | IdentitiesFile | GatewayFile
_ADAPTER: TypeAdapter[Document] = TypeAdapter(ConfigFile)
_KNOWN_TYPES = ("provider-account/mcp-server-group", "identities", "gateway")
# Union tags that pydantic inserts into error locations; they say nothing the user wrote.
_TAGS = frozenset(
    {
        *_KNOWN_TYPES,
        "integration/mcp-server/remote",
        "integration/mcp-server/virtual",
        "oauth2",
        "header",
        "passthrough",
    }
)


@dataclass(frozen=True, slots=True)
class Located(Generic[T]):
    """A parsed document and the file it came from."""

    file: str
    doc: T


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    groups: tuple[Located[ServerGroupFile], ...]
    identities: tuple[Located[IdentitiesFile], ...]
    gateway: Located[GatewayFile] | None = None


def load_config_dir(directory: Path) -> LoadedConfig:
    """Load every `*.yaml`/`*.yml` in `directory`. Raises ConfigError listing all problems found."""
    if not directory.is_dir():
        raise ConfigError([ConfigIssue(str(directory), "", "", "configuration directory does not exist")])
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    issues: list[ConfigIssue] = []
    groups: list[Located[ServerGroupFile]] = []
    identities: list[Located[IdentitiesFile]] = []
    gateway: Located[GatewayFile] | None = None
    for path in files:
        doc = _load_one(path, issues)
        if isinstance(doc, ServerGroupFile):
            groups.append(Located(path.name, doc))
        elif isinstance(doc, IdentitiesFile):
            identities.append(Located(path.name, doc))
        elif isinstance(doc, GatewayFile):
            if gateway is not None:
                issues.append(
                    ConfigIssue(path.name, "", "type", f"a second gateway document (first in {gateway.file})")
                )
            gateway = Located(path.name, doc)
    if issues:
        raise ConfigError(issues)
    return LoadedConfig(tuple(groups), tuple(identities), gateway)


def parse_config_text(name: str, text: str) -> Document:
    """Parse one document given as text (used by tests and `check`). Raises ConfigError."""
    issues: list[ConfigIssue] = []
    doc = _parse(name, text, issues)
    if issues or doc is None:
        raise ConfigError(issues)
    return doc


def _load_one(path: Path, issues: list[ConfigIssue]) -> Document | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(ConfigIssue(path.name, "", "", f"cannot read file: {exc.__class__.__name__}"))
        return None
    return _parse(path.name, text, issues)


def _parse(name: str, text: str, issues: list[ConfigIssue]) -> Document | None:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        issues.append(ConfigIssue(name, "", "", f"YAML syntax error{where}: {problem}"))
        return None
    if not isinstance(raw, Mapping):
        issues.append(ConfigIssue(name, "", "", "expected a mapping at the top level of the file"))
        return None
    kind = raw.get("type")
    if kind not in _KNOWN_TYPES:
        issues.append(ConfigIssue(name, "", "type", f"unknown document type {kind!r}; expected one of {_KNOWN_TYPES}"))
        return None
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        for err in exc.errors():
            entry, field = _locate(raw, err["loc"])
            issues.append(ConfigIssue(name, entry, field, _message(err)))
        return None


def _locate(raw: Mapping[str, Any], loc: Sequence[int | str]) -> tuple[str, str]:
    """Turn a pydantic error location into (entry, field), naming list entries by their `name`."""
    parts = [p for p in loc if not (isinstance(p, str) and p in _TAGS)]
    entry = ""
    node: Any = raw
    fields: list[str] = []
    for i, part in enumerate(parts):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            item = node[part]
            label = item.get("name") if isinstance(item, Mapping) else None
            container = parts[i - 1] if i else ""
            if not entry and container in ("integrations", "teams", "virtual_accounts", "collaborators"):
                singular = {"integrations": "integration", "teams": "team", "virtual_accounts": "virtual account"}
                kind = singular.get(str(container), str(container).rstrip("s"))
                entry = f"{kind} {label!r}" if label else f"{kind} #{part + 1}"
                fields = []
            else:
                fields.append(f"[{part}]")
            node = item
            continue
        fields.append(str(part))
        node = node.get(part) if isinstance(node, Mapping) else None
    return entry, ".".join(fields).replace(".[", "[")


def _message(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return "must be letters and digits joined by '-' or a single '_' (no '__', no leading or trailing '_'/'-')"
    msg = str(err.get("msg", "invalid value"))
    # pydantic prefixes custom validator messages with "Value error, "; the rest is ours.
    return msg.removeprefix("Value error, ")
