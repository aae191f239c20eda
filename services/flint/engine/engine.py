"""`Engine`: the synchronous engine core (no Ray, no asyncio).

    engine = Engine.from_config(EngineConfig(...))
    started = engine.add_request(GenerateRequest(...))   # validates; raises InvalidArgument
    while engine.has_work():
        for event in engine.step():                       # Delta / Final events
            ...
    engine.abort(request_id)                              # takes effect at the next step

`add_request` and `abort` may be called from other threads while one thread
steps (the async wrapper does that); they only touch a locked inbox. `load`
may be too: it returns the immutable `LoadInfo` the stepping thread publishes
at the end of each step (one reference swap), plus the inbox's length; it
never reads scheduler or KV state, which only the stepping thread touches.

One step = drain inbox and aborts -> schedule (flint.engine.scheduler: how
many tokens each request computes; preemptions; queue timeouts) -> build the
batch, with draft tokens for speculative requests -> one forward pass over
all scheduled tokens, logits only at the rows that need a token -> apply the
output: sample / verify, detokenize and emit, release finished requests
(their KV moves into the prefix cache). Every end of a request (finished,
aborted, timed out, not started in time) goes through `_finish`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from flint.engine.config import EngineConfig
from flint.engine.fair_share import QueueShares
from flint.engine.kv_cache import PagedKVCache
from flint.engine.metrics import EngineMetrics, observe_all
from flint.engine.output import OutputProcessor
from flint.engine.prepare import RequestBuilder
from flint.engine.request import Request, Status
from flint.engine.runner import LocalRunner, StepBatch
from flint.engine.sampler_step import TokenChooser
from flint.engine.scheduler import Scheduler
from flint.engine.speculative import NgramIndex
from flint.engine.types import Event, Failed, FinishReason, GenerateRequest, LoadInfo, SamplingParams, Started
from flint.errors import ResourceExhausted

log = logging.getLogger(__name__)

SEQUENCE_131K = 131_072


class Engine:
    def __init__(self, config: EngineConfig, runner, tokenizer, *, model_name: str, prompt_fn=None,
                 metrics: EngineMetrics | None = None):
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.model_name = model_name
        mc = runner.config
        self.max_context_tokens = config.max_context_tokens or mc.max_position_embeddings
        self.kv = PagedKVCache(num_layers=mc.num_layers, num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim,
                               dtype=config.torch_dtype, budget_bytes=config.kv_budget_bytes(),
                               block_size=config.block_size, prefix_cache=config.prefix_cache)
        runner.init_kv(self.kv.capacity_tokens)
        self.scheduler = Scheduler(config, self.kv)
        self.metrics = metrics or EngineMetrics(model=model_name)
        self.output = OutputProcessor(tokenizer)
        self.chooser = TokenChooser()
        if prompt_fn is None:
            from flint.engine.fim import build_prompt

            prompt_fn = functools.partial(build_prompt, tokenizer, layout=config.fim_layout,
                                          suffix_window_tokens=config.fim_suffix_window_tokens)
        self.builder = RequestBuilder(config, tokenizer, prompt_fn, model_name=model_name,
                                      max_context_tokens=self.max_context_tokens,
                                      kv_capacity_tokens=self.kv.capacity_tokens)
        self._lock = threading.Lock()
        self._inbox: list[Request] = []
        self._aborts: set[str] = set()
        self._known: set[str] = set()            # ids added and not yet finished
        self._queue = QueueShares(config.max_waiting + config.max_batch_size)   # the same, per tenant
        self._requests: dict[str, Request] = {}  # step-thread view of live requests
        # Tests and benchmarks set a dict here to keep each finished request's output token ids.
        self.recorded_outputs: dict[str, list[int]] | None = None
        self._load = self._measure_load()   # replaced whole by the stepping thread at the end of each step
        log.info("%s", self.kv_report())

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: EngineConfig, *, metrics_registry=None) -> "Engine":
        from flint.engine.demo import ensure_demo_checkpoint
        from flint.engine.loader import load_model
        from flint.engine.tokenizer import Tokenizer

        torch.set_num_threads(config.threads())
        log.info("engine runs with %d torch thread(s)%s", torch.get_num_threads(),
                 "" if config.num_threads else " (num_threads=0: the cores given)")
        path = Path(config.model).expanduser() if config.model else ensure_demo_checkpoint()
        model = load_model(path, dtype=config.torch_dtype, device=config.device,
                           quantization=config.quantization, quant_group_size=config.quant_group_size)
        tokenizer = Tokenizer.from_dir(path)
        name = config.model_name or path.name
        runner = LocalRunner(model)
        engine = cls(config, runner, tokenizer, model_name=name,
                     metrics=EngineMetrics(metrics_registry, model=name))
        if config.compile:
            try:
                from flint.engine import compiled
            except ImportError as e:   # a torch without opaque custom-op objects / nested compile regions
                log.warning("compile=true needs a newer torch than %s (%s); running eager", torch.__version__, e)
            else:
                compiled.enable(engine)
        return engine

    def kv_report(self) -> str:
        """One line for the start-up log: KV size and how many 131,072-token sequences fit."""
        kv = self.kv
        return (f"KV cache: {kv.num_blocks} blocks x {kv.block_size} tokens = {kv.capacity_tokens} tokens "
                f"({kv.bytes_total / 2**20:.1f} MiB, {kv.bytes_per_token} bytes/token); "
                f"{self.sequences_131k} sequence(s) of {SEQUENCE_131K:,} tokens fit")

    @property
    def sequences_131k(self) -> int:
        """How many 131,072-token sequences the KV budget holds at once."""
        return self.kv.sequences_that_fit(SEQUENCE_131K)

    # -- thread-safe entry points ------------------------------------------------------------------
    def prepare(self, req: GenerateRequest) -> Request:
        """Validate and tokenize (any thread); raises InvalidArgument / ResourceExhausted."""
        return self.builder.build(req)

    def add(self, request: Request) -> Started:
        with self._lock:
            if request.request_id in self._known:
                from flint.errors import InvalidArgument

                raise InvalidArgument(f"request_id {request.request_id!r} is already running on this engine")
            self._queue.take(request.tenant)     # ResourceExhausted when full or past a fair share
            self._known.add(request.request_id)
            self._inbox.append(request)
        return Started(request.request_id, request.prompt_len)

    def add_request(self, req: GenerateRequest) -> Started:
        return self.add(self.prepare(req))

    def add_tokens(self, request_id: str, ids, max_tokens: int, *, speculate: bool = False,
                   namespace: str = "", sampling: SamplingParams | None = None) -> Request:
        """A request straight from token ids with no end tokens: benchmarks and compile warm-up."""
        now_wall, now = time.time(), time.perf_counter()
        req = Request(request_id=request_id, prompt_ids=np.asarray(ids, dtype=np.int64),
                      sampling=sampling or SamplingParams(max_tokens=max_tokens), max_tokens=max_tokens,
                      namespace=f"{self.model_name}\x00{namespace}", interactive=True, speculate=speculate,
                      arrival_s=now_wall, arrival_mono=now,
                      lookahead=self.config.spec_draft_tokens if speculate else 0)
        self.add(req)
        return req

    def below_fair_share(self, tenant: str) -> bool:
        """`tenant` holds fewer requests here than the average active tenant (flint.admission)."""
        with self._lock:
            return self._queue.below_share(tenant)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            if request_id not in self._known:
                return False
            self._aborts.add(request_id)
            return True

    def has_work(self) -> bool:
        with self._lock:
            pending = bool(self._inbox or self._aborts)
        return pending or self.scheduler.has_work()

    def load(self) -> LoadInfo:
        """The load as of the end of the last step (any thread), with requests added since counted as waiting."""
        snapshot = self._load        # one read of an immutable object: its fields belong to one moment
        with self._lock:
            queued = len(self._inbox)
        return dataclasses.replace(snapshot, waiting=snapshot.waiting + queued) if queued else snapshot

    def _measure_load(self) -> LoadInfo:
        """Stepping thread only: the scheduler's and the KV cache's state now."""
        return LoadInfo(running=len(self.scheduler.running), waiting=self.scheduler.num_waiting,
                        kv_used_fraction=self.kv.active_fraction(self.scheduler.running),
                        max_context_tokens=self.max_context_tokens)

    # -- the step ---------------------------------------------------------------------------------
    def step(self) -> list[Event]:
        """One step; then publish the load it leaves (`load()` reads that snapshot from any thread)."""
        try:
            return self._step()
        finally:
            self._load = self._measure_load()

    def _step(self) -> list[Event]:
        """schedule -> build the batch -> run -> apply the output (each a small function)."""
        t0 = time.perf_counter()
        events: list[Event] = []
        self._drain_inbox(t0, events)
        plan = self.scheduler.schedule(t0)
        for req in plan.preempted:
            self.metrics.preemptions.inc()
            self.runner.release(req.request_id)       # its slot map changes when it is re-admitted
        for req in plan.timed_out:
            self.metrics.queue_timeouts.inc()
            events.append(self._finish(req, None, t0, error=self._queue_timeout_error(req)))
        if not plan.scheduled:
            return events
        batch, work, prefill_tokens = self._build_batch(plan.scheduled, t0)
        logits = self.runner.execute(batch)                                  # [N, V] float32
        decode_tokens = self._emit(logits, work, events)
        now = time.perf_counter()
        self.metrics.record_step(now - t0, prefill_tokens, decode_tokens)
        self.metrics.kv_usage.set(self.kv.used_fraction())
        self.metrics.running.set(len(self.scheduler.running))
        self.metrics.waiting.set(self.scheduler.num_waiting)
        return events

    def _build_batch(self, scheduled, t0: float):
        """Pack the scheduled tokens; `work` lists the requests that sample this step, in row order."""
        ids, seqs, rows, work = [], [], [], []
        row = prefill_tokens = 0
        for s in scheduled:
            req = s.req
            if not req.scheduled_at:
                req.scheduled_at = t0
                self.metrics.queue.observe(t0 - req.arrival_mono)
                if req.num_cached_prompt:
                    self.metrics.cache_hit.inc(req.num_cached_prompt)
                if self.kv.radix is not None:
                    self.metrics.cache_query.inc(req.prompt_len - 1)
            if req.slots_grew:                         # the runner learns the longer slot map afresh
                self.runner.release(req.request_id)
                req.slots_grew = False
            start = req.num_computed
            if s.is_decode:
                draft = self._draft(req)
                n = 1 + len(draft)
                if draft:
                    req.tokens[req.num_tokens : req.num_tokens + len(draft)] = draft
                rows.extend(range(row, row + n))
                work.append((req, n, draft))
            else:
                n = s.num_tokens
                prefill_tokens += n
                if start + n == req.num_tokens:
                    rows.append(row + n - 1)
                    work.append((req, 1, None))
            ids.append(req.tokens[start : start + n])
            seqs.append((req.request_id, req.slot_map, start, n))
            req.num_computed = start + n
            row += n
        # One numpy concatenation and one array of rows per step, not a tensor per request.
        batch = StepBatch(input_ids=torch.from_numpy(np.concatenate(ids) if len(ids) > 1 else ids[0]), seqs=seqs,
                          logit_rows=torch.from_numpy(np.array(rows, dtype=np.int64)))
        return batch, work, prefill_tokens

    def _emit(self, logits: torch.Tensor, work, events: list[Event]) -> int:
        """Apply the output: choose tokens for every request that got logits; emit deltas and finals."""
        now = time.perf_counter()
        chosen = self.chooser.choose(logits, work)
        produced = 0
        gaps = []    # each request's inter-token gap: a step's are usually one repeated value, recorded at once
        for (req, n, draft), tokens in zip(work, chosen):
            if not req.first_token_at:                           # the prompt's last chunk: first token
                req.prefill_done_at = now
                req.first_token_at = now
                self.metrics.ttft.observe(now - req.arrival_mono)
                self.output.start(req)
                if req.speculate:
                    req.ngram = NgramIndex(self.config.spec_ngram_min, self.config.spec_ngram_max,
                                           self.config.spec_draft_tokens)
                    # The prompt's tail only: indexing a 128K-token prompt in Python costs ~100 ms per request.
                    req.ngram.extend(req.prompt_ids[-self.config.spec_prompt_window_tokens :].tolist())
            else:
                if draft:
                    accepted = len(tokens) - 1
                    req.draft_tokens += len(draft)
                    req.accepted_draft_tokens += accepted
                    self.metrics.spec_draft.inc(len(draft))
                    self.metrics.spec_accepted.inc(accepted)
                    req.num_computed -= len(draft) - accepted      # rejected drafts' KV is garbage
                if req.last_token_at:
                    gaps.append((now - req.last_token_at) / len(tokens))
            req.last_token_at = now
            before = req.num_tokens
            delta, reason = self.output.accept(req, tokens)
            produced += req.num_tokens - before
            if req.ngram is not None:
                req.ngram.extend(req.tokens[before : req.num_tokens].tolist())
            if delta is not None:
                events.append(delta)
            if reason is not None:
                events.append(self._finish(req, reason, now))
        if gaps:
            observe_all(self.metrics.itl, gaps)
        return produced

    def _queue_timeout_error(self, req: Request) -> ResourceExhausted:
        timeout_ms = self.scheduler.queue_timeout_s(req) * 1e3
        return ResourceExhausted(
            f"request {req.request_id!r} could not start within {timeout_ms:.0f} ms: this replica's KV cache and "
            f"batch are busy with {len(self.scheduler.running)} running request(s); retry after the delay, "
            f"on another replica, or with a shorter prompt or lower max_tokens",
            retry_after_ms=max(100, int(timeout_ms) // 4))

    def _draft(self, req: Request) -> list[int]:
        if req.ngram is None:
            return []
        room = req.max_tokens - req.num_output - 1   # never draft past the last allowed token
        return req.ngram.propose(limit=room) if room > 0 else []

    def _drain_inbox(self, now: float, events: list[Event]) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, set()
        for req in inbox:
            if req.sampling.max_time_ms:
                req.deadline = req.arrival_mono + req.sampling.max_time_ms / 1e3
            self._requests[req.request_id] = req
            self.scheduler.add(req)
        for request_id in aborts:
            req = self._requests.get(request_id)
            if req is not None and not req.finished:
                self.metrics.aborts.inc()
                events.append(self._finish(req, FinishReason.INTERRUPTED, now))
        for req in [r for r in self._requests.values() if r.deadline and now >= r.deadline]:
            self.metrics.aborts.inc()
            events.append(self._finish(req, FinishReason.TIME_LIMIT, now))

    def _finish(self, req: Request, reason: FinishReason | None, now: float, *, error: Exception | None = None):
        """The one place a request ends (done, aborted, timed out, rejected): KV, runner, bookkeeping."""
        if reason in (FinishReason.INTERRUPTED, FinishReason.TIME_LIMIT) and req.detok is not None:
            req.detok = None                      # held text is dropped: the stream ends at the abort
        self.scheduler.remove(req)
        self.kv.release(req)
        self.runner.release(req.request_id)
        req.status = Status.FINISHED
        req.finish_reason = reason
        self._requests.pop(req.request_id, None)
        if self.recorded_outputs is not None:
            self.recorded_outputs[req.request_id] = req.output_ids()
        with self._lock:
            if req.request_id in self._known:
                self._known.discard(req.request_id)
                self._queue.release(req.tenant)
        if error is not None:
            return Failed(req.request_id, error)
        return self.output.final(req, reason, now)

    # -- tests and benchmarks ---------------------------------------------------------------------
    def run_until_done(self, max_steps: int = 1_000_000) -> list[Event]:
        events: list[Event] = []
        for _ in range(max_steps):
            if not self.has_work():
                break
            events.extend(self.step())
        return events

    def no_leaks(self) -> bool:
        """With nothing running: every KV block is free once the prefix cache is cleared."""
        return not self.scheduler.has_work() and self.kv.all_free_after_clearing()
