"""Northwind's backing MCP servers, small but realistic, written with fastmcp.

- tracker: an issue tracker with repositories, issues, a resource per repo, a triage prompt, and a destructive
  `delete_repo` that a platform team would never hand to an agent.
- analytics: business metrics with structured results and a long report that reports progress.
- errors: an error tracker (Sentry-like) that logs what it does.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

# A 1x1 PNG, so the image content type travels end to end.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


class Issue(BaseModel):
    id: int
    repo: str
    title: str
    state: str = "open"


class Metric(BaseModel):
    name: str
    value: float
    unit: str


def build_tracker() -> FastMCP:
    mcp: FastMCP = FastMCP("northwind-tracker", instructions="Northwind's issue tracker.")
    repos: dict[str, list[Issue]] = {
        "cargo-api": [Issue(id=1, repo="cargo-api", title="Timeout on /shipments")],
        "fleet-ui": [Issue(id=2, repo="fleet-ui", title="Map tiles flicker")],
    }

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def list_repos() -> list[str]:
        """List repositories."""
        return sorted(repos)

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def list_issues(repo: str, state: str = "open") -> list[Issue]:
        """List issues of a repository."""
        return [i for i in repos.get(repo, []) if i.state == state]

    @mcp.tool
    def create_issue(repo: str, title: Annotated[str, Field(min_length=3)]) -> Issue:
        """Open a new issue."""
        if repo not in repos:
            raise ValueError(f"no repository {repo!r}")
        issue = Issue(id=sum(len(v) for v in repos.values()) + 1, repo=repo, title=title)
        repos[repo].append(issue)
        return issue

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=True))
    def delete_repo(repo: str) -> str:
        """Delete a repository and all its issues. Irreversible."""
        if repos.pop(repo, None) is None:
            raise ValueError(f"no repository {repo!r}")
        return f"deleted {repo}"

    @mcp.resource("tracker://repos/{repo}/readme")
    def readme(repo: str) -> str:
        """The README of a repository."""
        return f"# {repo}\n\nOwned by Northwind platform engineering."

    @mcp.prompt
    def triage(repo: str) -> str:
        """Ask the model to triage the open issues of a repository."""
        return f"Triage the open issues of {repo}: group them by severity and propose owners."

    return mcp


def build_analytics() -> FastMCP:
    mcp: FastMCP = FastMCP("northwind-analytics", instructions="Northwind's business metrics.")

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def query_metric(name: Annotated[str, Field(description="e.g. on_time_rate, shipments")]) -> Metric:
        """Current value of a business metric."""
        known = {"on_time_rate": (0.962, "ratio"), "shipments": (18234.0, "count")}
        if name not in known:
            raise ValueError(f"unknown metric {name!r}")
        value, unit = known[name]
        return Metric(name=name, value=value, unit=unit)

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    async def run_report(quarters: int, ctx: Context) -> dict[str, Any]:
        """Build a quarterly report, reporting progress per quarter."""
        rows = []
        for q in range(1, quarters + 1):
            await ctx.report_progress(q, quarters, f"quarter {q} of {quarters}")
            rows.append({"quarter": q, "shipments": 4000 + 250 * q})
        return {"rows": rows}

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def sparkline() -> Any:
        """A tiny chart, as an image."""
        from fastmcp.utilities.types import Image

        return Image(data=PIXEL_PNG, format="png")

    return mcp


def build_errors() -> FastMCP:
    mcp: FastMCP = FastMCP("northwind-errors", instructions="Northwind's error tracker.")
    issues = {"E-100": "NullPointerException in DispatchService", "E-101": "Redis timeout in quote cache"}
    resolved: set[str] = set()

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    async def list_issues(ctx: Context) -> dict[str, str]:
        """Unresolved error groups."""
        await ctx.info(f"listing {len(issues) - len(resolved)} unresolved issues")
        return {k: v for k, v in issues.items() if k not in resolved}

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def get_issue(issue_id: str) -> str:
        """Details of one error group."""
        if issue_id not in issues:
            raise ValueError(f"no issue {issue_id!r}")
        return f"{issue_id}: {issues[issue_id]} (seen 42 times)"

    @mcp.tool
    async def resolve_issue(issue_id: str, ctx: Context) -> str:
        """Mark an error group resolved."""
        if issue_id not in issues:
            raise ValueError(f"no issue {issue_id!r}")
        resolved.add(issue_id)
        await ctx.warning(f"{issue_id} resolved")
        return f"{issue_id} resolved"

    return mcp


BACKENDS = {"tracker": build_tracker, "analytics": build_analytics, "errors": build_errors}
