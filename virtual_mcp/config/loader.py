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


# Bounds on what one configuration file may ask of the loader: a configuration is small and shallow, a hostile or
# broken file (a generated YAML bomb, a runaway nesting) is refused before it costs memory or a crash.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 200_000  # values after expanding aliases: `&a [...]` used many times counts each time


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML says keys are unique; PyYAML would keep
    the last one silently, so a second `authorized_subjects` would replace the first unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                )
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first})", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _measure(value: Any) -> tuple[int, int]:
    """(values after expanding aliases, depth) of a loaded document; shared values are measured once."""
    sizes: dict[int, tuple[int, int]] = {}

    def walk(node: Any, level: int) -> tuple[int, int]:
        if level > MAX_DEPTH:
            return 1, level
        known = sizes.get(id(node))
        if known is not None:
            return known
        children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
        count, depth = 1, 0
        for child in children:
            c, d = walk(child, level + 1)
            count, depth = count + c, max(depth, d)
        result = (count, depth + 1)
        if isinstance(node, dict | list):
            sizes[id(node)] = result
        return result

    return walk(value, 0)


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
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        issues.append(ConfigIssue(path.name, "", "", f"cannot read file: {exc.strerror or exc.__class__.__name__}"))
        return None
    if len(data) > MAX_FILE_BYTES:
        issues.append(ConfigIssue(path.name, "", "", f"file is larger than {MAX_FILE_BYTES} bytes"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        issues.append(
            ConfigIssue(
                path.name, "", "", f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, offset {exc.start}"
            )
        )
        return None
    return _parse(path.name, text, issues)


def _parse(name: str, text: str, issues: list[ConfigIssue]) -> Document | None:
    if len(text) > MAX_FILE_BYTES:
        issues.append(ConfigIssue(name, "", "", f"file is larger than {MAX_FILE_BYTES} bytes"))
        return None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        issues.append(ConfigIssue(name, "", "", f"YAML nests deeper than {MAX_DEPTH} levels"))
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        issues.append(ConfigIssue(name, "", "", f"YAML syntax error{where}: {problem}"))
        return None
    if not isinstance(raw, Mapping):
        issues.append(ConfigIssue(name, "", "", "expected a mapping at the top level of the file"))
        return None
    count, depth = _measure(raw)
    if depth > MAX_DEPTH:
        issues.append(ConfigIssue(name, "", "", f"YAML nests deeper than {MAX_DEPTH} levels"))
        return None
    if count > MAX_NODES:
        issues.append(ConfigIssue(name, "", "", f"document expands to more than {MAX_NODES} values (YAML aliases?)"))
        return None
    kind = raw.get("type")
    if kind is None:
        issues.append(ConfigIssue(name, "", "type", f"required field is missing; expected one of {_KNOWN_TYPES}"))
        return None
    if kind not in _KNOWN_TYPES:
        issues.append(ConfigIssue(name, "", "type", f"unknown document type {kind!r}; expected one of {_KNOWN_TYPES}"))
        return None
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        for err in exc.errors():
            entry, field = _locate(raw, err["loc"])
            if err.get("type") == "union_tag_invalid":  # the discriminator itself is the field in error
                field = f"{field}.type" if field else "type"
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
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown type {ctx.get('tag')!r}; expected one of: {ctx.get('expected_tags')}"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return "must be letters and digits joined by '-' or a single '_' (no '__', no leading or trailing '_'/'-')"
    msg = str(err.get("msg", "invalid value"))
    # pydantic prefixes custom validator messages with "Value error, "; the rest is ours.
    return msg.removeprefix("Value error, ")
