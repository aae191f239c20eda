"""`AsyncEngine`: the engine core stepped in its own thread, streamed to asyncio.

The step loop runs in a dedicated thread (PyTorch's kernels and flint's own
release the GIL, so the event loop keeps serving gRPC while a step computes:
tests/engine/test_kernels_release_gil.py). Events of one step are handed to
each request's asyncio queue with ONE `call_soon_threadsafe` per event loop
per step, not one per token.

    engine = AsyncEngine.from_config(EngineConfig(...))
    await engine.start()
    async for event in engine.generate(request):   # Started, Delta..., Final
        ...
    await engine.stop()

Closing or cancelling the `generate` iterator before its Final aborts the
request at the next engine step, which frees its KV blocks.

`health()` says whether the engine can serve: "" while it can, else why not
(the step thread failed or ended, or the runner's own check failed, e.g. a
shard worker died). A replica polls it and stops serving when it is not "".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from typing import AsyncIterator

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.types import Event, Failed, Final, GenerateRequest, LoadInfo
from flint.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.model_name: str = engine.model_name
        self.max_context_tokens: int = engine.max_context_tokens
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._streams_lock = threading.Lock()
        # Held for each step: a check from another thread (`no_leaks`) never sees, or changes, a half-made step.
        self._step_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.prepare_runner = None  # async (tenant, fn, request) -> prepared request; None = the default pool

    @classmethod
    def from_config(cls, config: EngineConfig, *, metrics_registry=None) -> "AsyncEngine":
        """Load model and tokenizer and allocate the KV cache (blocking: call off the event loop)."""
        return cls(Engine.from_config(config, metrics_registry=metrics_registry))

    @property
    def metrics(self):
        return self.engine.metrics

    def kv_report(self) -> str:
        """KV size and how many 131,072-token sequences fit (print it at start)."""
        return self.engine.kv_report()

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="flint-engine-step", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(thread.join)
        self._fail_all(Unavailable(f"engine for {self.model_name} stopped; retry on another replica"))

    def load(self) -> LoadInfo:
        return self.engine.load()

    def health(self) -> str:
        """"" while this engine can serve; else why it cannot (cheap: no step is waited for)."""
        if self._error is not None:
            return f"the engine step thread failed: {self._error!r}"
        thread = self._thread
        if thread is None:
            return "the engine is not running"
        if not thread.is_alive():
            return "the engine step thread ended"
        check = getattr(self.engine.runner, "check", None)   # DistributedRunner: are the shard workers alive
        if check is not None:
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - reported as the reason
                return f"the engine's runner check failed: {exc}"
        return ""

    def no_leaks(self) -> bool:
        """`Engine.no_leaks` between two steps (tests' leak check while the step thread runs)."""
        with self._step_lock:
            return self.engine.no_leaks()

    async def abort(self, request_id: str) -> bool:
        found = self.engine.abort(request_id)
        self._wake.set()
        return found

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        """Started, Delta..., Final, one at a time (see `generate_batches`)."""
        async with contextlib.aclosing(self.generate_batches(req)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def generate_batches(self, req: GenerateRequest) -> AsyncIterator[list[Event]]:
        """The same events in lists: each list holds what the step thread queued for this request since the
        previous one was taken (one event while the reader keeps up; more when it falls behind)."""
        if self._thread is None or self._error is not None:
            raise Unavailable(f"engine for {self.model_name} is not running" +
                              (f": {self._error!r}" if self._error else ""))
        loop = asyncio.get_running_loop()
        # Validation and tokenization off the loop: a 131K-token prompt takes a while to encode. A replica
        # sets `prepare_runner` (flint.replica.prepare_pool) to bound that work and share it between tenants.
        if self.prepare_runner is None:
            request = await asyncio.to_thread(self.engine.prepare, req)
        else:
            request = await self.prepare_runner(req.cache_namespace, self.engine.prepare, req)
        queue: asyncio.Queue = asyncio.Queue()
        with self._streams_lock:
            if req.request_id in self._streams:
                raise InvalidArgument(f"request_id {req.request_id!r} is already streaming on this engine")
            self._streams[req.request_id] = (loop, queue)
        finished = False
        try:
            started = self.engine.add(request)
            self._wake.set()
            yield [started]
            while True:
                batch, error = [], None
                for event in _drain(await queue.get(), queue):
                    if isinstance(event, BaseException):
                        error = event
                    elif isinstance(event, Failed):
                        finished, error = True, event.error
                    else:
                        finished = isinstance(event, Final)
                        batch.append(event)
                    if finished or error is not None:
                        break
                if batch:
                    yield batch
                if error is not None:
                    raise error
                if finished:
                    return
        finally:
            with self._streams_lock:
                self._streams.pop(req.request_id, None)
            if not finished:
                self.engine.abort(req.request_id)
                self._wake.set()

    # -- step thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        engine = self.engine
        fault_at, steps = engine.config.fault_step_error_at, 0
        try:
            while not self._stopping.is_set():
                if not engine.has_work():
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                steps += 1
                if steps == fault_at:
                    raise RuntimeError(f"fault injected at step {steps} (engine config fault_step_error_at)")
                with self._step_lock:
                    events = engine.step()
                if events:
                    self._dispatch(events)
        except BaseException as exc:  # surface to every stream instead of hanging them
            log.exception("engine step loop failed")
            self._error = exc
            self._fail_all(Unavailable(f"engine step failed: {exc!r}"))

    def _dispatch(self, events: list[Event]) -> None:
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = defaultdict(list)
        with self._streams_lock:
            for ev in events:
                target = self._streams.get(ev.request_id)
                if target is not None:
                    per_loop[target[0]].append((target[1], ev))
        for loop, items in per_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:   # that event loop is closed: its streams are gone
                pass

    def _fail_all(self, exc: BaseException) -> None:
        with self._streams_lock:
            targets = list(self._streams.values())
        for loop, queue in targets:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            except RuntimeError:
                pass


def _drain(first, queue: asyncio.Queue) -> list:
    """`first` and whatever else `queue` holds now."""
    items = [first]
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)
