"""An immutable snapshot of the configuration: groups, servers, virtual servers, endpoints, identities. No I/O.

Everything the request path needs to decide is precomputed here once per load: which endpoint serves which
backends under which name prefix, and which subjects may use each of them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from virtual_mcp.config.loader import LoadedConfig
from virtual_mcp.config.models import (
    AuditPayloads,
    AuthData,
    InboundSettings,
    MetricsSettings,
    NamingSettings,
    RemoteServer,
    ToolOverride,
    VirtualServer,
)
from virtual_mcp.config.settings import Limits
from virtual_mcp.errors import ConfigError, ConfigIssue
from virtual_mcp.identity import fold
from virtual_mcp.naming import SEPARATOR, namespaced, shortened
from virtual_mcp.types import ServerRef

AGGREGATE_PATH = "/mcp"
ENDPOINT_PATH = re.compile(r"/mcp-server/[^/]+/[^/]+/server")


def server_path(ref: ServerRef) -> str:
    return f"/mcp-server/{ref.group}/{ref.name}/server"


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    ref: ServerRef
    url: str
    description: str | None
    auth: AuthData | None
    authorized_subjects: frozenset[str]
    forwardable_headers: frozenset[str]  # lower-case
    audit: AuditPayloads | None = None
    # `upstream_session: shared`: the configured credential's backend session serves every caller.
    shared_session: bool = False
    tool_prefix: str | None = None  # its alias in namespaced tool names
    tool_overrides: Mapping[str, ToolOverride] = field(default_factory=dict)  # by the backend's own tool name
    stdio: StdioCommand | None = None  # transport stdio: the process to run (`url` is then empty)
    sse: bool = False  # transport sse (HTTP+SSE, 2024-11-05): `url` is its event stream

    @property
    def alias(self) -> str:
        """What stands for this server inside a virtual server's tool names."""
        return self.tool_prefix or self.ref.name


@dataclass(frozen=True, slots=True)
class StdioCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str]  # values may hold secret references, resolved at start-up
    cwd: str | None
    token_env: str | None = None  # where the access token goes (auth_data oauth2): each caller's, or the server's


@dataclass(frozen=True, slots=True)
class VirtualEntry:
    ref: ServerRef
    description: str | None
    authorized_subjects: frozenset[str]
    sources: tuple[tuple[ServerRef, frozenset[str] | None], ...]
    tool_prefix: str | None = None  # its alias in namespaced tool names on /mcp
    offers: Mapping[ServerRef, Offers] = field(default_factory=dict)  # per source: its prompts and resources offered


class EndpointKind(StrEnum):
    REMOTE = "remote"
    VIRTUAL = "virtual"
    AGGREGATE = "aggregate"


@dataclass(frozen=True, slots=True)
class Member:
    """One backend as seen through one endpoint.

    `prefix` is prepended to its tool names (empty on a single remote server's own endpoint), `tools` limits
    which of its tools are visible (None = all), and `gate` is the configured server whose
    `authorized_subjects` decide access through this member (the remote itself, or the virtual server).
    """

    source: ServerRef
    prefix: tuple[str, ...]
    tools: frozenset[str] | None
    gate: ServerRef
    # A virtual server's curation of the source's prompts and resources (None: a remote server's own, all of them).
    offers: Offers | None = None


@dataclass(frozen=True, slots=True)
class Offers:
    """Which prompts (by name) and resources and templates (by URI or URI template) of a source a virtual server
    offers: shell-style patterns, none unless listed."""

    prompts: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def prompt(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.prompts)

    def resource(self, uri: str) -> bool:
        return any(fnmatch.fnmatchcase(uri, pattern) for pattern in self.resources)

    @property
    def anything(self) -> bool:
        return bool(self.prompts or self.resources)


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    kind: EndpointKind
    ref: ServerRef | None
    title: str
    description: str | None
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Registry:
    remotes: Mapping[ServerRef, RemoteEntry]
    virtuals: Mapping[ServerRef, VirtualEntry]
    endpoints: Mapping[str, Endpoint]
    gates: Mapping[ServerRef, frozenset[str]]
    team_members: Mapping[str, frozenset[str]]  # user e-mail -> teams declared for them
    virtual_accounts: frozenset[str]
    collaborators: Mapping[str, tuple[tuple[str, str], ...]]  # group -> (subject, role_id)
    warnings: tuple[str, ...] = field(default=())
    inbound: InboundSettings = field(default_factory=InboundSettings)
    limits: Limits = field(default_factory=Limits)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    naming: NamingSettings = field(default_factory=NamingSettings)

    def gates_of(self, source: ServerRef) -> tuple[ServerRef, ...]:
        """The configured servers whose subjects may reach `source`: itself and each virtual server including it."""
        virtual = tuple(ref for ref, v in self.virtuals.items() if any(src == source for src, _ in v.sources))
        return (source, *virtual) if source in self.remotes else virtual

    def teams_of(self, user: str) -> frozenset[str]:
        """The teams the configuration declares for `user` (members are in canonical form; so is the lookup)."""
        return self.team_members.get(fold(user), frozenset())


def build_registry(config: LoadedConfig) -> Registry:
    """Validate cross-references and build the snapshot. Raises ConfigError listing every problem."""
    issues: list[ConfigIssue] = []
    warnings: list[str] = []
    remotes: dict[ServerRef, RemoteEntry] = {}
    virtual_models: dict[ServerRef, tuple[str, VirtualServer]] = {}
    group_files: dict[str, str] = {}
    collaborators: dict[str, tuple[tuple[str, str], ...]] = {}

    for located in config.groups:
        group = located.doc
        if group.name in group_files:
            issues.append(
                ConfigIssue(
                    located.file,
                    f"group {group.name!r}",
                    "name",
                    f"duplicate group (also in {group_files[group.name]})",
                )
            )
            continue
        group_files[group.name] = located.file
        collaborators[group.name] = tuple((c.subject, c.role_id) for c in group.collaborators)
        seen: set[str] = set()
        for integration in group.integrations:
            entry = f"integration {integration.name!r}"
            if integration.name in seen:
                issues.append(
                    ConfigIssue(located.file, entry, "name", f"duplicate server name in group {group.name!r}")
                )
                continue
            seen.add(integration.name)
            ref = ServerRef(group.name, integration.name)
            if isinstance(integration, RemoteServer):
                remotes[ref] = _remote_entry(ref, integration)
                _check_renames(located.file, entry, integration, issues)
                _check_command(located.file, entry, integration, issues)
            else:
                virtual_models[ref] = (located.file, integration)

    virtuals: dict[ServerRef, VirtualEntry] = {}
    for ref, (file, model) in virtual_models.items():
        entry = f"integration {model.name!r}"
        sources: list[tuple[ServerRef, frozenset[str] | None]] = []
        offers: dict[ServerRef, Offers] = {}
        names: dict[str, ServerRef] = {}
        for i, src in enumerate(model.servers):
            where = f"servers[{i}].server"
            try:
                src_ref = ServerRef.parse(src.server)
            except ValueError as exc:
                issues.append(ConfigIssue(file, entry, where, str(exc)))
                continue
            if src_ref in virtual_models:
                issues.append(
                    ConfigIssue(file, entry, where, f"{src.server!r} is a virtual server; sources must be remote")
                )
                continue
            if src_ref not in remotes:
                issues.append(ConfigIssue(file, entry, where, f"unknown server {src.server!r} (no such group/server)"))
                continue
            alias = remotes[src_ref].alias
            if alias in names:
                issues.append(
                    ConfigIssue(
                        file,
                        entry,
                        where,
                        f"{src.server!r} and {names[alias].key!r} would share the tool prefix {alias!r}__; a virtual "
                        "server may include one server of each name (or give one a tool_prefix)",
                    )
                )
                continue
            names[alias] = src_ref
            tools = src.tools
            if tools is not None and len(set(tools)) != len(tools):
                issues.append(ConfigIssue(file, entry, f"servers[{i}].tools", "lists a tool more than once"))
            sources.append((src_ref, frozenset(tools) if tools is not None else None))
            offers[src_ref] = Offers(tuple(src.prompts), tuple(src.resources))
        subjects = frozenset(model.authorized_subjects)
        virtuals[ref] = VirtualEntry(
            ref, model.description, subjects, tuple(sources), model.tool_prefix, MappingProxyType(offers)
        )
    _check_tool_prefixes(config, group_files, issues)

    team_members, virtual_accounts, known_teams = _identities(config, issues)
    _check_subjects(config, known_teams, virtual_accounts, bool(config.identities), warnings)

    if issues:
        raise ConfigError(issues)

    gates: dict[ServerRef, frozenset[str]] = {r: e.authorized_subjects for r, e in remotes.items()}
    gates.update({r: e.authorized_subjects for r, e in virtuals.items()})
    endpoints = _endpoints(remotes, virtuals)
    naming = config.gateway.doc.naming if config.gateway else NamingSettings()
    warnings.extend(_name_warnings(endpoints, remotes, naming.budget))
    return Registry(
        remotes=MappingProxyType(remotes),
        virtuals=MappingProxyType(virtuals),
        endpoints=MappingProxyType(endpoints),
        gates=MappingProxyType(gates),
        team_members=MappingProxyType(team_members),
        virtual_accounts=virtual_accounts,
        collaborators=MappingProxyType(collaborators),
        warnings=tuple(warnings),
        inbound=config.gateway.doc.inbound if config.gateway else InboundSettings(),
        limits=config.gateway.doc.limits if config.gateway else Limits(),
        metrics=config.gateway.doc.metrics if config.gateway else MetricsSettings(),
        naming=naming,
    )


_ROOM = 24  # characters a tool's own name should have under a prefix before check says the prefix is too long


def _name_warnings(
    endpoints: Mapping[str, Endpoint], remotes: Mapping[ServerRef, RemoteEntry], budget: int
) -> list[str]:
    """What `check` can tell without asking a backend: each tool name the configuration mentions (a virtual
    server's `tools`, a `tool_overrides` entry) that would be shortened with a hash, and each prefix that leaves a
    tool's own name less than _ROOM characters."""
    warnings: list[str] = []
    for path, endpoint in endpoints.items():
        for member in endpoint.members:
            if not member.prefix:
                continue
            remote = remotes[member.source]
            room = budget - len(SEPARATOR.join(member.prefix)) - len(SEPARATOR)
            if room < _ROOM:
                warnings.append(
                    f"{path}: the names of {member.source.key}'s tools start with {SEPARATOR.join(member.prefix)!r}, "
                    f"leaving {room} characters of the {budget}-character budget; longer names are shortened with a "
                    "hash (set a tool_prefix)"
                )
            mentioned = member.tools if member.tools is not None else remote.tool_overrides.keys()
            for original in sorted(mentioned):
                override = remote.tool_overrides.get(original)
                shown = override.rename if override is not None and override.rename else original
                if shortened(member.prefix, shown, budget):
                    warnings.append(
                        f"{path}: {member.source.key}'s tool {shown!r} would be shown as "
                        f"{namespaced(member.prefix, shown, budget)!r} (set a tool_prefix or a rename)"
                    )
    return warnings


def _check_command(file: str, entry: str, model: RemoteServer, issues: list[ConfigIssue]) -> None:
    """A stdio server's command must be there to run: `check` and `serve` say so, not its first caller. (The one
    look at the machine in building the registry: where the command is, on PATH or at its path.)"""
    command = model.command
    if command is None:
        return
    base = Path(model.cwd) if model.cwd else Path.cwd()
    if model.cwd is not None and not base.is_dir():
        issues.append(ConfigIssue(file, entry, "cwd", f"{model.cwd!r} is not a directory"))
    if "/" in command:
        path = base / command
        if not (path.is_file() and os.access(path, os.X_OK)):
            issues.append(ConfigIssue(file, entry, "command", f"{command!r} is not an executable file"))
    elif shutil.which(command) is None:
        issues.append(ConfigIssue(file, entry, "command", f"{command!r} is not found on PATH"))


def _check_renames(file: str, entry: str, model: RemoteServer, issues: list[ConfigIssue]) -> None:
    """Two of a server's tools may not be shown under one name, nor a tool under another's own name."""
    shown: dict[str, str] = {}
    for original, override in model.tool_overrides.items():
        name = override.rename or original
        other = shown.get(name)
        if other is not None:
            issues.append(
                ConfigIssue(file, entry, f"tool_overrides.{original}", f"{other!r} is also shown as {name!r}")
            )
        shown[name] = original


def _check_tool_prefixes(config: LoadedConfig, groups: Mapping[str, str], issues: list[ConfigIssue]) -> None:
    """On /mcp an alias stands where `group__server` would: it must name one server and no group, or two servers'
    tools could share a name."""
    taken: dict[str, str] = {}
    for located in config.groups:
        for integration in located.doc.integrations:
            alias = integration.tool_prefix
            if alias is None:
                continue
            entry = f"integration {integration.name!r}"
            key = f"{located.doc.name}/{integration.name}"
            if alias in groups:
                issues.append(ConfigIssue(located.file, entry, "tool_prefix", f"{alias!r} is also a group's name"))
            elif alias in taken:
                issues.append(ConfigIssue(located.file, entry, "tool_prefix", f"{alias!r} is also {taken[alias]}'s"))
            else:
                taken[alias] = key


def _remote_entry(ref: ServerRef, model: RemoteServer) -> RemoteEntry:
    return RemoteEntry(
        ref=ref,
        url=str(model.url) if model.url is not None else "",
        description=model.description,
        auth=model.auth_data,
        authorized_subjects=frozenset(model.authorized_subjects),
        forwardable_headers=frozenset(h.lower() for h in model.forwardable_headers),
        audit=model.audit,
        shared_session=model.upstream_session == "shared",
        tool_prefix=model.tool_prefix,
        tool_overrides=MappingProxyType(dict(model.tool_overrides)),
        stdio=StdioCommand((model.command, *model.args), MappingProxyType(dict(model.env)), model.cwd, model.token_env)
        if model.command is not None
        else None,
        sse=model.transport == "sse",
    )


def _identities(
    config: LoadedConfig, issues: list[ConfigIssue]
) -> tuple[dict[str, frozenset[str]], frozenset[str], set[str]]:
    members: dict[str, set[str]] = defaultdict(set)
    teams: dict[str, str] = {}
    accounts: dict[str, str] = {}
    for located in config.identities:
        for team in located.doc.teams:
            if team.name in teams:
                issues.append(
                    ConfigIssue(
                        located.file, f"team {team.name!r}", "name", f"duplicate team (also in {teams[team.name]})"
                    )
                )
                continue
            teams[team.name] = located.file
            for member in team.members:
                members[member].add(team.name)  # canonical already (config/models.py)
        for account in located.doc.virtual_accounts:
            if account.name in accounts:
                issues.append(
                    ConfigIssue(
                        located.file,
                        f"virtual account {account.name!r}",
                        "name",
                        f"duplicate (also in {accounts[account.name]})",
                    )
                )
                continue
            accounts[account.name] = located.file
    return {u: frozenset(t) for u, t in members.items()}, frozenset(accounts), set(teams)


def _check_subjects(
    config: LoadedConfig, teams: set[str], accounts: frozenset[str], declared: bool, warnings: list[str]
) -> None:
    """Subjects naming undeclared teams or accounts are warnings: teams may also come from an IdP's JWT claim."""
    if not declared:
        return
    for located in config.groups:
        for integration in located.doc.integrations:
            for subject in integration.authorized_subjects:
                kind, _, name = subject.partition(":")
                if (kind == "team" and name not in teams) or (kind == "virtualaccount" and name not in accounts):
                    warnings.append(
                        f"{located.file}: integration {integration.name!r}: authorized_subjects: "
                        f"{subject!r} is not declared in any identities file"
                    )


def _endpoints(
    remotes: Mapping[ServerRef, RemoteEntry], virtuals: Mapping[ServerRef, VirtualEntry]
) -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    aggregate: list[Member] = []
    for ref, remote in sorted(remotes.items()):
        endpoints[server_path(ref)] = Endpoint(
            server_path(ref), EndpointKind.REMOTE, ref, ref.key, remote.description, (Member(ref, (), None, ref),)
        )
        aggregate.append(Member(ref, (remote.tool_prefix,) if remote.tool_prefix else (ref.group, ref.name), None, ref))
    for ref, virtual in sorted(virtuals.items()):
        members = tuple(
            Member(src, (remotes[src].alias,), tools, ref, virtual.offers.get(src, Offers()))
            for src, tools in virtual.sources
        )
        endpoints[server_path(ref)] = Endpoint(
            server_path(ref), EndpointKind.VIRTUAL, ref, ref.key, virtual.description, members
        )
        outer = (virtual.tool_prefix,) if virtual.tool_prefix else (ref.group, ref.name)
        aggregate.extend(Member(m.source, (*outer, *m.prefix), m.tools, ref, m.offers) for m in members)
    endpoints[AGGREGATE_PATH] = Endpoint(
        AGGREGATE_PATH, EndpointKind.AGGREGATE, None, "virtual-mcp", "Every tool the caller may use.", tuple(aggregate)
    )
    return endpoints
