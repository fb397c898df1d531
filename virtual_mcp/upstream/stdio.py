"""A backend that is a local process speaking MCP over stdio (`transport: stdio`): one newline-delimited JSON-RPC
message per line on its stdin and stdout, the 2025-11-25 handshake, its stderr a log.

`StdioServer` is the pool's session for such a server, a `backend.BackendSession` as `UpstreamSession` is: like a
backend session, a process is each principal's own (state one user leaves in it is never another's) unless the
server is configured `upstream_session: shared`, plus one for the gateway's own use (its tool list); the pool
bounds how many there are (`limits.max_stdio_processes` in all) and closes idle ones. The configured `env` is the
server's own (static secrets), the same for each process. With `auth_data` (oauth2) the access token is put in the
variable `token_env` names: the server's token (client credentials), or each user's own (authorization code; the
process is then that user's alone, as any per-user credential's session is). A renewed token starts the process
again, when it is next needed and idle: a process reads its environment once.

Supervision: the process is started on first use. When it exits or breaks the protocol, every request in flight
fails at once (`UpstreamUnavailable`), the tool catalog is told its list changed (so its tools leave every list
until it answers again), and the next start waits a backoff that doubles from `_FIRST_BACKOFF` to `_MAX_BACKOFF`
with jitter, reset once a process has lived `_HEALTHY` seconds. A line of its stdout longer than the answer bound,
or one that is not JSON, ends it the same way. Its stderr goes to the log line by line, each line cut at
`_STDERR_LINE` characters and with the secrets of its environment removed; nothing of it is kept in memory.

Requests the server makes of its client (elicitation, sampling, roots) go to the caller whose call is in flight,
answered off the reading task (a person may take minutes); without exactly one such call, they are refused at once,
so the server never waits for an answer that will not come.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from virtual_mcp.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from virtual_mcp.outbound.scrubber import Scrubber
from virtual_mcp.types import ServerRef
from virtual_mcp.upstream import answers
from virtual_mcp.upstream.backend import Relays
from virtual_mcp.upstream.capabilities import NONE, Capabilities
from virtual_mcp.upstream.channel import MessageChannel, Spawn
from virtual_mcp.upstream.entries import EntryChecks
from virtual_mcp.upstream.era import Era, Negotiated
from virtual_mcp.upstream.wire import CLIENT_INFO, LEGACY_VERSION

logger = logging.getLogger(__name__)
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_HEALTHY = 60.0
_STDERR_LINE = 2000
_START_DEADLINE = 10.0  # the handshake of a new process
_STOP_DEADLINE = 3.0
_KEPT_TOKENS = 8  # renewed tokens still removed from what a process says (besides its configuration's secrets)


class StdioServer(MessageChannel):
    def __init__(
        self,
        ref: ServerRef,
        command: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        *,
        spawn: Spawn,
        on_list_changed: Callable[[], None],
        on_negotiated: Callable[[Negotiated], None],
        max_answer_bytes: int,
        entries: EntryChecks | None = None,
        secrets: Iterable[str] = (),
        clock: Callable[[], float] = anyio.current_time,
        listen: bool = True,
        declared: Capabilities = NONE,
    ) -> None:
        super().__init__(ref, entries, declared, spawn=spawn, on_list_changed=on_list_changed)
        self._listen = listen
        self._clock = clock  # for the backoff (a test moves it rather than wait)
        self._command = command
        # A clean environment: the gateway's own (its master key, its tokens) is never handed to a backend.
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        self._cwd = cwd
        self._on_negotiated = on_negotiated
        self._max_line = max_answer_bytes
        self._static_secrets = [s for s in secrets if s]  # its configuration's, and its first token
        self._renewed_tokens: list[str] = []  # tokens it was given since: the last few (an old one may be echoed)
        self._secrets = list(self._static_secrets)
        self._scrubber = Scrubber(self._secrets)
        self._renewed = False  # its credential variables changed since the process started: restart it when idle
        self._lock = anyio.Lock()
        self._process: Process | None = None
        self._ready = False
        self._scope: anyio.CancelScope | None = None
        self._backoff = 0.0
        self._not_before = 0.0
        self._started_at = 0.0
        self._closed = False
        self.capabilities: dict[str, Any] = {}

    # -- the pool's session surface ------------------------------------------------------------------------------

    @property
    def listens(self) -> bool:
        return self._listen  # the server's own process (its tool list, its changes): never closed as idle

    @property
    def healthy(self) -> bool:
        return self._ready

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamUnavailable(self.ref.key, "the gateway is shutting down")

    def use_env(self, env: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        """A renewed token (`token_env`): the process, which read its environment when it started, is started again
        with it before its next request that finds it idle. Until then it keeps the token it has (renewed at 80% of
        its lifetime, so still valid). Both tokens are kept out of what it says."""
        if all(self._env.get(name) == value for name, value in env.items()):
            return
        self._env.update(env)
        self._renewed_tokens = [*self._renewed_tokens, *(s for s in secrets if s)][-_KEPT_TOKENS:]
        self._secrets = [*self._static_secrets, *self._renewed_tokens]
        self._scrubber = Scrubber(self._secrets)
        self._renewed = True

    async def aclose(self) -> None:
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._stop("the gateway is shutting down")

    # -- the process ---------------------------------------------------------------------------------------------

    async def _ready_to_send(self) -> None:
        """(`headers` of a request have no meaning here: a stdio server's credentials are its environment.)"""
        await self._running()

    async def _running(self) -> None:
        async with self._lock:
            # Not while it holds a caller's task: a process started again would not know it.
            if self._process is not None and self._ready and self._renewed and self.in_flight <= 1 and not self.pinned:
                logger.info("stdio server %s: started again with its renewed credential", self.ref)
                await self._stop("its credential was renewed", planned=True)
            if self._process is not None and self._ready:
                return
            self._renewed = False
            now = self._clock()
            if now < self._not_before:
                raise UpstreamUnavailable(
                    self.ref.key, f"its process exited; it is started again in {self._not_before - now:.1f}s"
                )
            await self._start()

    async def _start(self) -> None:
        try:
            process = await anyio.open_process(
                self._command,
                env=self._env,
                cwd=self._cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: stopped with whatever it started
            )
        except OSError as exc:
            self._failed()
            raise UpstreamUnavailable(self.ref.key, f"cannot start {self._command[0]!r}: {exc.strerror}") from None
        self._process = process
        self._started_at = self._clock()
        scope = self._scope = anyio.CancelScope()
        self._spawn(lambda: self._supervise(process, scope))
        try:
            with anyio.fail_after(_START_DEADLINE):
                params = {
                    "protocolVersion": LEGACY_VERSION,
                    "capabilities": dict(self._declared),
                    "clientInfo": CLIENT_INFO,
                }
                result = await self._call("initialize", params, Relays())
                await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except (TimeoutError, UpstreamError) as exc:
            reason = "no answer to initialize" if isinstance(exc, TimeoutError) else getattr(exc, "message", "")
            await self._stop(f"initialize failed: {reason}")
            raise UpstreamUnavailable(self.ref.key, f"its process did not start: {reason}") from None
        version = result.get("protocolVersion")
        capabilities, info = result.get("capabilities"), result.get("serverInfo")
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        info = info if isinstance(info, dict) else {}
        self._ready = True
        self._on_negotiated(Negotiated(Era.LEGACY, str(version or LEGACY_VERSION), self.capabilities, info))
        logger.info("stdio server %s started (pid %d)", self.ref, process.pid)

    async def _supervise(self, process: Process, scope: anyio.CancelScope) -> None:
        """Read its stdout and stderr until it exits (or is stopped); then fail what it left unanswered."""
        reason = "its process was stopped"
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._log_stderr, process)
                try:
                    await self._read(process)
                    reason = f"its process exited with status {await process.wait()}"
                except UpstreamProtocolError as exc:
                    reason = exc.message.removeprefix(f"backend {self.ref.key!r}: ")
                except Exception:  # runs in the gateway's task group: nothing here may end the gateway
                    logger.exception("stdio server %s: reading its output failed", self.ref)
                    reason = "the gateway could not read its output"
                tg.cancel_scope.cancel()
        await self._ended(process, reason)

    async def _read(self, process: Process) -> None:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        while True:
            try:
                raw = await lines.receive_until(b"\n", self._max_line)
            except anyio.IncompleteRead:
                return
            except anyio.DelimiterNotFound:
                raise UpstreamProtocolError(self.ref.key, f"a line of over {self._max_line} bytes") from None
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if not raw.strip():
                continue
            try:
                message = answers.parse(raw, self._scrubber)
            except ValueError:
                raise UpstreamProtocolError(self.ref.key, "wrote a line that is not JSON") from None
            if isinstance(message, dict):
                await self._dispatch(message)

    async def _log_stderr(self, process: Process) -> None:
        try:
            await self._copy_stderr(process)
        except Exception:  # runs in the gateway's task group: nothing here may end the gateway
            logger.exception("stdio server %s: reading its stderr failed", self.ref)

    async def _copy_stderr(self, process: Process) -> None:
        assert process.stderr is not None
        lines = BufferedByteReceiveStream(process.stderr)
        while True:
            try:
                raw = await lines.receive_until(b"\n", 1 << 16)
            except anyio.DelimiterNotFound:
                raw = await lines.receive(1 << 16)  # a huge line: logged cut, the rest read and dropped
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            text = raw.decode("utf-8", errors="replace").rstrip()
            for secret in self._secrets:
                text = text.replace(secret, "[redacted]")
            if text:
                logger.info("stdio server %s: %s", self.ref, text[:_STDERR_LINE])

    async def _ended(self, process: Process, reason: str, planned: bool = False) -> None:
        """Once per process, whoever sees its end first (its reader, a failed start, a stop). A planned stop (a
        restart with a renewed credential) is no failure: no backoff, and its tools stay listed."""
        if self._process is not process:
            return
        self._process = None
        was_ready, self._ready = self._ready, False
        if not planned:
            self._failed()
        self._fail_pending(reason)
        if was_ready and not self._closed and not planned:
            logger.warning("stdio server %s: %s; it is started again when next needed", self.ref, reason)
            self._on_list_changed()  # its tools leave the lists until it answers again
        await _terminate(process)

    def _failed(self) -> None:
        lived = self._clock() - self._started_at
        self._backoff = (
            _FIRST_BACKOFF if lived > _HEALTHY or not self._backoff else min(self._backoff * 2, _MAX_BACKOFF)
        )
        self._not_before = self._clock() + self._backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter

    async def _stop(self, reason: str, planned: bool = False) -> None:
        process = self._process
        if self._scope is not None:
            self._scope.cancel()
        if process is not None:
            await self._ended(process, reason, planned)

    # -- messages ------------------------------------------------------------------------------------------------

    async def _send(self, message: Mapping[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise UpstreamUnavailable(self.ref.key, "its process is not running")
        try:
            await process.stdin.send(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise UpstreamUnavailable(self.ref.key, "its process stopped reading") from None


async def _terminate(process: Process) -> None:
    """SIGTERM to its process group, SIGKILL after a deadline; reaped either way."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with anyio.move_on_after(_STOP_DEADLINE):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await process.aclose()
