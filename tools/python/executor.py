"""The `python` namespace: each session gets its own sandboxed kernel, started at its first
call and kept (with its variables) until the session closes, dies or is evicted."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from oss_serve.common.logging import get_logger
from oss_serve.tools.base import ToolCall, ToolOutput
from oss_serve.tools.output_cap import cap_text
from oss_serve.tools.python.kernel_process import CellResult, KernelProcess
from oss_serve.tools.python.sandbox import (
    KernelLaunch,
    SandboxLimits,
    SandboxUnavailable,
    find_bwrap,
    probe_bwrap,
    sandboxed_launch,
    unsandboxed_launch,
)

log = get_logger(__name__)

NO_OUTPUT = (
    "[WARN] No output available. Use print() to output anything to stdout to receive the output"
)


@dataclass
class _Session:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    kernel: KernelProcess | None = None


class PythonExecutor:
    """Runs `python` calls; one kernel per session, at most `max_sessions` at once (the
    least recently used one is closed to make room)."""

    namespace = "python"

    def __init__(
        self,
        limits: SandboxLimits,
        *,
        output_max_bytes: int,
        max_sessions: int,
        bwrap: str | None,
    ) -> None:
        self._limits = limits
        self._output_max_bytes = output_max_bytes
        self._max_sessions = max_sessions
        self._bwrap = bwrap
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    @classmethod
    def create(
        cls,
        limits: SandboxLimits,
        *,
        output_max_bytes: int,
        max_sessions: int,
        allow_unsandboxed: bool,
    ) -> PythonExecutor:
        """An executor that uses bubblewrap, or refuses to exist without it unless
        `allow_unsandboxed` (then it warns: rlimits only, host files and network open)."""
        bwrap = find_bwrap()
        problem = "bwrap (bubblewrap) is not installed" if bwrap is None else None
        if bwrap is not None:
            failure = probe_bwrap(bwrap, limits)
            if failure is not None:
                problem = f"bwrap cannot create a sandbox here: {failure}"
        if problem is None:
            return cls(
                limits, output_max_bytes=output_max_bytes, max_sessions=max_sessions, bwrap=bwrap
            )
        if not allow_unsandboxed:
            raise SandboxUnavailable(
                f"the python tool needs a sandbox and {problem}; install bubblewrap (apt-get "
                "install bubblewrap) in a container that allows user namespaces, or pass "
                "--allow-unsandboxed-python to run python with resource limits only"
            )
        log.warning(
            "python tool runs WITHOUT a sandbox: resource limits only, the host's files "
            "and network are reachable from model-written code",
            reason=problem,
        )
        return cls(limits, output_max_bytes=output_max_bytes, max_sessions=max_sessions, bwrap=None)

    @property
    def sandboxed(self) -> bool:
        return self._bwrap is not None

    def _launch(self) -> KernelLaunch:
        if self._bwrap is not None:
            return sandboxed_launch(self._bwrap, self._limits)
        return unsandboxed_launch(self._limits)

    async def call(self, call: ToolCall) -> ToolOutput:
        session = await self._session(call.session)
        async with session.lock:
            restarted = session.kernel is not None and not session.kernel.alive
            if session.kernel is None or not session.kernel.alive:
                try:
                    session.kernel = await KernelProcess.start(self._launch())
                except OSError as error:
                    return self._output(call, f"[ERROR] python could not start: {error}", True)
            result = await session.kernel.run(
                call.arguments,
                timeout_s=self._limits.cell_timeout_s,
                keep_bytes=self._output_max_bytes,
            )
            if not result.finished:
                session.kernel = None  # killed; its end is reported below, once
        text = cap_text(result.output, self._output_max_bytes, total_bytes=result.output_bytes)
        notes = []
        if restarted:
            notes.append("[NOTE] the python session had ended; this cell ran in a new one")
        if not result.finished:
            notes.append(self._ended_message(result))
        if not text.strip() and not notes:
            text = NO_OUTPUT
        full = "\n".join(part for part in (text.rstrip("\n"), *notes) if part)
        return self._output(call, cap_text(full, self._output_max_bytes), not result.finished)

    def _ended_message(self, result: CellResult) -> str:
        if result.timed_out:
            cause = f"the cell ran past its {self._limits.cell_timeout_s:g} s limit and was killed"
        else:
            cause = f"the python process exited during the cell (status {result.exit_code})"
        return f"[ERROR] {cause}; the session was reset and its variables are lost"

    def _output(self, call: ToolCall, text: str, error: bool) -> ToolOutput:
        details = {"code": call.arguments, "outputs": [{"type": "logs", "logs": text}]}
        return ToolOutput(author=call.recipient, text=text, error=error, details=details)

    async def _session(self, name: str) -> _Session:
        session = self._sessions.get(name)
        if session is not None:
            self._sessions.move_to_end(name)
            return session
        while len(self._sessions) >= self._max_sessions:
            oldest = next(iter(self._sessions))
            log.info("python session evicted to make room", max_sessions=self._max_sessions)
            await self.close_session(oldest)
        session = self._sessions[name] = _Session()
        return session

    async def close_session(self, session: str) -> None:
        held = self._sessions.pop(session, None)
        if held is not None and held.kernel is not None:
            await held.kernel.kill()

    async def aclose(self) -> None:
        for name in list(self._sessions):
            await self.close_session(name)
