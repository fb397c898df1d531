"""Child processes of a benchmark run: each in its own process group, pinned with taskset, always stopped.

`Processes` is a context manager; leaving it (normally, on an exception, on Ctrl-C, or on SIGTERM/SIGHUP turned
into an exception by `exit_on_signals`) sends SIGTERM to every group it started, then SIGKILL to any group still
alive after a grace period, so no server outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType


class ProcessFailed(Exception):
    """A child did not come up (or died); the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin_prefix(core: int | None) -> list[str]:
    """`taskset -c CORE` when pinning is possible, else nothing (the caller records that pinning was off)."""
    if core is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core)]


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int | None = None
    core: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what: str) -> ProcessFailed:
        status = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return ProcessFailed(f"{self.name} {what} ({status}); log {self.log}:\n{self.log_tail()}")


@dataclass
class Processes:
    log_dir: Path
    cwd: Path
    children: list[Child] = field(default_factory=list)
    grace_seconds: float = 5.0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        core: int | None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*pin_prefix(core), *argv],
                cwd=cwd or self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,  # its own process group: stopped as a group, untouched by our Ctrl-C
            )
        child = Child(name, popen, log, port, core)
        self.children.append(child)
        return child

    def wait_listening(self, child: Child, timeout: float = 30.0) -> None:
        """Until `child.port` accepts a connection; fails early if the child exits."""
        assert child.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise child.fail("exited before listening")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", child.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise child.fail(f"was not listening on port {child.port} after {timeout:.0f} s")

    def stop_all(self) -> None:
        live = [c for c in self.children if c.alive()]
        for child in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            # SIGKILL whatever is left of the group, including grandchildren of a leader that already exited.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=2)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C so every `finally` (and `Processes.__exit__`) runs."""


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
