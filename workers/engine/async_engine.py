"""The engine a replica serves: the EngineCore loop in a background thread, asyncio outside.

All EngineCore calls happen on the engine thread; callers enqueue commands (add, abort)
and receive RequestOutput deltas on a per-request asyncio queue. torch releases the GIL
during the forward pass, so the event loop (gRPC, Redis) stays responsive. A bad request
fails only its own iterator; an engine failure fails every open request and marks the
engine dead.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from oss_serve.common.logging import get_logger
from oss_serve.workers.engine.admission import AdmissionCapacity
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.metrics import EngineStats
from oss_serve.workers.engine.outputs import RequestOutput
from oss_serve.workers.engine.sampling_params import RequestOutputKind, SamplingParams
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.runner.executor import Executor

log = get_logger(__name__)

IDLE_WAIT_S = 0.05


class EngineDeadError(RuntimeError):
    """The engine loop stopped (shut down or failed); no request can be served."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException] = field(default_factory=asyncio.Queue)

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        executor: Executor | None = None,
        core: EngineCore | None = None,
        **engine_args: Any,
    ) -> None:
        self.config = config or EngineConfig.from_kwargs(**engine_args)
        self._executor = executor
        self.core: EngineCore | None = core
        self._commands: queue.SimpleQueue[Callable[[EngineCore], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._stats: EngineStats | None = None
        # admission: the engine thread's last capacity snapshot, minus the requests promised
        # since (submitted, not yet in that snapshot); both change under one lock
        self._admission_lock = threading.Lock()
        self._capacity = AdmissionCapacity.none()
        self._promised: dict[str, list[int]] = {}  # request id -> its sequences' token counts
        self._added: list[str] = []  # promised requests the engine thread has taken in

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model (off the event loop) and start the engine thread."""
        if self._thread is not None:
            return
        if self.core is None:
            self.core = await asyncio.to_thread(EngineCore.from_config, self.config, self._executor)
        self._stats = self.core.stats()
        self._refresh_capacity(self.core)
        self._thread = threading.Thread(target=self._run, name="oss-serve-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        """Stop the loop, end open requests with an error, release the model."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self.core is not None:
            self.core.shutdown()
        self._fail_all(EngineDeadError("the engine was shut down"))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._error is None and not self._stopping

    # --- requests -----------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams | None = None,
        *,
        priority: int = 0,
        prompt: str | None = None,
        resume_output_token_ids: Sequence[int] = (),
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream RequestOutput deltas (new tokens, text, logprobs) until the request finishes.

        `resume_output_token_ids`: tokens the request already emitted (a replica died); it
        continues after them exactly as if never interrupted and streams only new tokens.
        Bad input raises InvalidRequestError from the first iteration; closing the iterator
        early aborts the request.
        """
        self._check_alive()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already being served")
        params = (sampling_params or SamplingParams()).clone(output_kind=RequestOutputKind.DELTA)
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        tokens = list(prompt_token_ids)
        resumed = list(resume_output_token_ids)
        with self._admission_lock:
            self._promised[request_id] = [len(tokens) + len(resumed)] * params.n

        def add(core: EngineCore) -> None:
            try:
                core.add_request(
                    request_id, tokens, params, priority=priority, prompt=prompt,
                    resume_output_token_ids=resumed, lora_request=lora_request,
                )  # fmt: skip
            finally:
                self._added.append(request_id)

        self._submit(add, request_id)
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:

                def abort(core: EngineCore) -> None:
                    core.abort_request(request_id)

                self._submit(abort, None)

    async def abort(self, request_id: str) -> None:
        """End a request; its iterator yields a last output with finish_reason "abort"."""

        def abort(core: EngineCore) -> None:
            output = core.abort_request(request_id)
            self._stats = core.stats()
            if output is not None:
                self._deliver([output])

        self._submit(abort, None)

    def _submit(self, command: Callable[[EngineCore], None], request_id: str | None) -> None:
        def guarded(core: EngineCore) -> None:
            try:
                command(core)
            except Exception as exc:  # a bad request fails only its own stream
                stream = self._streams.get(request_id) if request_id else None
                if stream is None:
                    log.warning("engine command failed", error=str(exc))
                else:
                    stream.put(exc)

        self._commands.put(guarded)
        self._wake.set()

    # --- LoRA adapters --------------------------------------------------------------------------
    async def add_lora(self, name: str, path: str) -> LoRARequest:
        """Serve the adapter at `path` as `name`; it is read and checked off the engine thread
        (AdapterError says why not), so serving never pauses for it."""
        core = self._core()
        return await asyncio.to_thread(core.add_lora, name, path)

    async def remove_lora(self, name: str) -> bool:
        """Stop serving `name` (running requests with it finish); False if it was unknown."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def remove(core: EngineCore) -> None:
            removed = core.remove_lora(name)
            self._stats = core.stats()
            loop.call_soon_threadsafe(done.set_result, removed)

        self._submit(remove, None)
        return await done

    def lora_request(self, name: str) -> LoRARequest | None:
        """The adapter served as `name` (None: not an adapter of this engine)."""
        return self._core().lora_request(name)

    def _core(self) -> EngineCore:
        if self.core is None:
            raise EngineDeadError("the engine has not started")
        return self.core

    # --- load reporting -----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        if self._stats is None:
            raise EngineDeadError("the engine has not started")
        return self._stats

    def admission_capacity(self) -> AdmissionCapacity:
        """Back-pressure for the replica's queue pull: what can start now, requests already
        submitted included (a burst is taken in at once, never beyond slots and KV blocks)."""
        if self.core is None or not self.is_running:
            return AdmissionCapacity.none()
        with self._admission_lock:
            promised = [n for counts in self._promised.values() for n in counts]
            return self._capacity.after(promised)

    def can_admit(self, num_prompt_tokens: int) -> bool:
        """Is there room to start this prompt now, on top of everything submitted?"""
        if self.core is None or not self.is_running:
            return False
        if num_prompt_tokens > self.core.max_model_len:
            return True  # let it in to be rejected with a clear error
        return self.admission_capacity().admits([num_prompt_tokens])

    def _refresh_capacity(self, core: EngineCore) -> None:
        with self._admission_lock:
            self._capacity = core.admission_capacity()
            for request_id in self._added:
                self._promised.pop(request_id, None)
            self._added.clear()

    # --- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        core = self.core
        assert core is not None
        try:
            while not self._stopping:
                self._drain_commands(core)
                if core.has_unfinished_requests():
                    outputs = core.step()
                    self._stats = core.stats()  # before delivery: callers see it up to date
                    self._refresh_capacity(core)
                    self._deliver(outputs)
                else:
                    self._stats = core.stats()
                    self._refresh_capacity(core)
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
        except BaseException as exc:
            log.exception("engine loop failed")
            self._error = exc
            self._fail_all(EngineDeadError(f"the engine loop failed: {exc!r}"))

    def _drain_commands(self, core: EngineCore) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command(core)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)

    def _fail_all(self, error: BaseException) -> None:
        for stream in list(self._streams.values()):
            stream.put(error)

    def _check_alive(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"the engine loop failed: {self._error!r}")
        if self._thread is None or self._stopping:
            raise EngineDeadError("the engine is not running (call `await engine.start()`)")
