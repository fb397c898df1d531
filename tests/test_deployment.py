"""The deployment files (deploy/, docs/deployment.md) say what this version of the gateway understands: every
`virtual-mcp` command line in them parses with its CLI, they name the environment variables it reads, the
configuration they ship loads, the probes ask routes it serves, and the load balancer knows every replica.

(Docker, systemd and a Kubernetes cluster cannot run here; what the files ask of the gateway is checked instead.)
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from virtual_mcp.cli import _parser
from virtual_mcp.config.loader import load_config_dir
from virtual_mcp.fleet.connection import REDIS_URL_ENV
from virtual_mcp.registry import build_registry
from virtual_mcp.vault.engines import DATABASE_URL_ENV
from virtual_mcp.vault.keys import ENV_VAR as MASTER_KEY_ENV

DEPLOY = REPO / "deploy"
ENV_NAMES = {DATABASE_URL_ENV, REDIS_URL_ENV, MASTER_KEY_ENV}


def parses(argv: list[str]) -> Any:
    try:
        return _parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"virtual-mcp {shlex.join(argv)} does not parse") from exc


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def kubernetes() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]


def of_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for d in kubernetes() if d["kind"] == kind]
    return doc


def command_lines() -> list[tuple[str, list[str]]]:
    """Every virtual-mcp command line in the deployment files: (where, argv)."""
    found: list[tuple[str, list[str]]] = []
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("virtual-mcp") or "build" in service:
            found.append((f"compose {name}", [str(a) for a in service["command"]]))
    pod = of_kind("Deployment")["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        found.append((f"kubernetes {container['name']}", container["args"]))
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    found.append(("Dockerfile CMD", yaml.safe_load(cmd.group(1))))
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text().replace("\\\n", " ")
        [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
        argv = shlex.split(line.removeprefix("ExecStart="))
        assert argv[0].endswith("/virtual-mcp")
        found.append((unit.name, [a.replace("%i", "8081") for a in argv[1:]]))
    return found


@pytest.mark.parametrize(("where", "argv"), command_lines(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_line_parses(where: str, argv: list[str]) -> None:
    args = parses(argv)
    if args.command == "serve":
        assert args.host == "0.0.0.0", where  # reachable by the load balancer
        assert args.port in (8080, 8081), where  # the container port, or the systemd instance's (%i)


def test_they_name_the_environment_the_gateway_reads() -> None:
    for where, service in compose()["services"].items():
        if service.get("image", "").startswith("virtual-mcp"):
            assert set(service["environment"]) == ENV_NAMES, where
    assert set(of_kind("Secret")["stringData"]) == ENV_NAMES
    env_file = (DEPLOY / "systemd" / "env.example").read_text()
    assert {line.split("=", 1)[0] for line in env_file.splitlines() if "=" in line and line[0] != "#"} == ENV_NAMES


def test_the_kubernetes_configuration_loads(tmp_path: Path) -> None:
    for name, text in of_kind("ConfigMap")["data"].items():
        (tmp_path / name).write_text(text)
    registry = build_registry(load_config_dir(tmp_path))
    assert str(registry.inbound.public_url).startswith("https://")


def test_the_probes_ask_routes_the_gateway_serves() -> None:
    from virtual_mcp.gateway.routes.health import health_routes

    served = {route.path for route in health_routes(lambda: True, 0, None)}
    [gateway] = of_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert {gateway["readinessProbe"]["httpGet"]["path"], gateway["livenessProbe"]["httpGet"]["path"]} <= served
    assert "/readyz" in str(compose()["x-gateway"]["healthcheck"]["test"])


def test_the_load_balancer_knows_every_replica() -> None:
    replicas = {name for name, s in compose()["services"].items() if "serve" in s.get("command", [])}
    upstream = set(re.findall(r"server (\S+):8080", (DEPLOY / "nginx.conf").read_text()))
    assert replicas == upstream and len(replicas) == 2


def test_the_guide_stands_alone() -> None:
    guide = (REPO / "docs" / "deployment.md").read_text()
    for path in re.findall(r"`(deploy/[^`\s]+)`", guide):
        assert (REPO / path).exists(), path
    for text in [guide, *(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())]:
        assert "../shared" not in text
    assert "docs/deployment.md" in (REPO / "README.md").read_text()
