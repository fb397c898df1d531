"""npm packages the tests run (the OAuth authorization server, the MCP reference server), each in a folder of the
tests with its package.json and package-lock.json, and Node 22 itself from the `node` npm package: a machine needs
only some Node.js with npm (20 is enough) and the npm registry. `NodePackage.ensure_installed()` runs `npm ci` the
first time and whenever the package files change, under a lock safe for several processes (xdist workers)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

NODE_MAJOR = 22
_installed: dict[Path, Path] = {}


@dataclass(frozen=True)
class NodePackage:
    directory: Path
    purpose: str  # for error messages: "the OAuth test server"

    def ensure_installed(self) -> Path:
        """Install the folder's npm dependencies if they are missing or stale; returns the Node 22 binary.

        Idempotent and cheap once installed (a stamp in node_modules records what was installed).
        """
        found = _installed.get(self.directory)
        if found is not None:
            return found
        with self._install_lock():
            stamp = self.directory / "node_modules" / ".virtual-mcp-installed"
            digest = self._install_digest()
            node = self._find_node()
            if node is None or not stamp.exists() or stamp.read_text() != digest:
                self._npm_install()
                node = self._find_node()
                if node is None:
                    looked = ", ".join(str(path) for path in self._node_candidates())
                    raise RuntimeError(f"npm installed the `node` package but no Node binary is in: {looked}")
                stamp.write_text(digest)
        version = subprocess.run(  # noqa: S603
            [str(node), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        if not version.startswith(f"v{NODE_MAJOR}."):
            raise RuntimeError(f"{node} is Node {version}, {self.purpose} needs Node {NODE_MAJOR}")
        _installed[self.directory] = node
        return node

    def _install_digest(self) -> str:
        """What node_modules was installed from: a change to package.json or the lock means installing again."""
        digest = hashlib.sha256()
        for name in ("package.json", "package-lock.json"):
            path = self.directory / name
            digest.update(path.read_bytes() if path.exists() else b"-")
        return digest.hexdigest()

    @contextlib.contextmanager
    def _install_lock(self) -> Iterator[None]:
        """An exclusive lock across processes (parallel pytest runs, xdist workers) around the install."""
        with (self.directory / ".install.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _node_candidates(self) -> list[Path]:
        modules = self.directory / "node_modules"
        # The `node` package's preinstall hard-links the binary of node-<platform>-<arch> to node/bin/node.
        return [
            modules / "node" / "bin" / "node",
            modules / ".bin" / "node",
            *sorted((modules / "node" / "node_modules").glob("node-*/bin/node")),
        ]

    def _find_node(self) -> Path | None:
        for candidate in self._node_candidates():
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        return None

    def _npm_install(self) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm is not on PATH: {self.purpose} needs Node.js (20 or later) with npm")
        verb = "ci" if (self.directory / "package-lock.json").exists() else "install"
        command = [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"]
        done = subprocess.run(command, cwd=self.directory, capture_output=True, text=True, timeout=900)  # noqa: S603
        if done.returncode != 0:
            where = self.directory
            raise RuntimeError(f"`npm {verb}` in {where} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


async def stop_process_group(process: Process, deadline: float) -> None:
    """SIGTERM to the process's group (it was started with `start_new_session`), SIGKILL if it is still there after
    `deadline` seconds; reaps it."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with anyio.move_on_after(deadline) as waited:
                await process.wait()
            if waited.cancelled_caught:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await process.aclose()
