"""`EngineConfig`: every knob of one engine replica, validated on construction.

Built from a dict (CLI flags, a config file, `ServeConfig.engine`) with
`EngineConfig.from_dict`; unknown keys are errors that list the allowed ones.
Defaults are the ones measured to work on a 2-core CPU (see DESIGN.md and
loadtests/results/engine.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping

from flint.errors import InvalidArgument

DTYPES = ("float32", "bfloat16", "float16")
SPECULATION_MODES = ("off", "edit", "all")
FIM_LAYOUTS = ("auto", "spm", "psm")   # flint.engine.fim.LAYOUTS (kept here: config imports nothing heavy)
QUANTIZATION_MODES = ("none", "int8", "int4")   # flint.engine.quant.MODES (not imported: keeps torch out)
QUANT_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class EngineConfig:
    model: str = ""                      # HF checkpoint directory; "" = the demo checkpoint
    model_name: str = ""                 # name reported to clients; "" = the directory name
    dtype: str = "float32"
    device: str = "cpu"
    # Weight-only quantization at load: none | int8 (per output channel) | int4 (group-wise); every Linear and
    # the embedding / lm_head (flint.engine.quant).
    quantization: str = "none"
    quant_group_size: int = 128          # int4 columns per scale/min: 32 | 64 | 128 (README, quantization)
    # torch intra-op threads (process-wide); 0 = the cores this engine is given: the replica actor's Ray
    # num_cpus when Ray hosts it, else the process's CPU affinity (`cores_given`). Measured reason: README.
    num_threads: int = 0
    kv_cache_bytes: int = 1 << 30        # KV budget (k and v, all layers)
    # > 0 (CUDA): the engine may use this share of the GPU's memory; KV gets what is left of it once the
    # weights are loaded (kv_cache_bytes is then ignored), so one config fits 24 GB and 80 GB cards alike
    kv_cache_memory_fraction: float = 0.0
    block_size: int = 16                 # tokens per KV block
    max_batch_size: int = 32             # running requests per step
    prefill_tokens_per_step: int = 2048  # token budget of one step (decode tokens count too)
    max_context_tokens: int = 0          # 0 = the model's max_position_embeddings
    prefix_cache: bool = True
    speculation: str = "edit"            # prompt-lookup drafting: off | edit | all
    spec_draft_tokens: int = 8           # draft tokens verified per step
    spec_ngram_max: int = 4              # longest n-gram looked up in the history
    spec_ngram_min: int = 2
    spec_prompt_window_tokens: int = 8192   # drafts come from the prompt's last this-many tokens (and the output)
    # torch.compile the decode step, compiled at start (engine/compiled.py); false = eager. Off by default:
    # ~1.0x of eager on the 2-core CPU (loadtests/results/engine.md); CUDA graphs on GPU come with it.
    compile: bool = False
    # decode batches are padded up to the next of these sizes (one static-shape graph each); larger run eager
    compile_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    max_tokens_complete: int = 256       # default max_tokens per request kind
    max_tokens_edit: int = 1024
    max_waiting: int = 1024              # queue bound; more is ResourceExhausted
    # FIM prompt layout (engine/fim.py): auto = suffix first (spm) for families trained with it (starcoder,
    # codellama), prefix-suffix-middle (psm) with a bounded suffix window for the others (qwen, deepseek).
    fim_layout: str = "auto"
    # psm only: suffix tokens kept after the cursor, which a keystroke re-prefills; 0 = the whole suffix
    fim_suffix_window_tokens: int = 64
    # Scheduling (flint.engine.scheduler; measured reasons in loadtests/results/scheduler.md):
    prefill_chunk_tokens: int = 512      # most prompt tokens one request computes in a step
    contended_chunk_tokens: int = 0      # long prefills' chunk in a step carrying a keystroke (0 = pause)
    interactive_chunk_tokens: int = 32   # long prefills' chunk while interactive requests arrive or stream
    interactive_window_ms: int = 1000    # "arrive": an interactive request arrived this recently
    kv_growth_tokens: int = 256          # decode KV is allocated this many positions at a time
    starvation_steps: int = 64           # waiting / paused this many steps: goes first, never skipped
    queue_timeout_interactive_ms: int = 2000   # not started by then: RESOURCE_EXHAUSTED with a retry delay
    queue_timeout_bulk_ms: int = 30000
    # Fault tests only: the step thread raises at this step (counted from 1), as a kernel or model bug would;
    # the replica must then report NOT_SERVING and exit (tests/reliability/test_replica_health.py). 0 = never.
    fault_step_error_at: int = 0

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check(isinstance(self.device, str) and bool(self.device), "device must name a torch device, e.g. 'cpu'")
        _check(self.quantization in QUANTIZATION_MODES,
               f"quantization must be one of {', '.join(QUANTIZATION_MODES)}, got {self.quantization!r}")
        _check(self.quant_group_size in QUANT_GROUP_SIZES,
               f"quant_group_size must be one of {', '.join(map(str, QUANT_GROUP_SIZES))}, got {self.quant_group_size!r}")
        _int_at_least("num_threads", self.num_threads, 0)
        _int_at_least("kv_cache_bytes", self.kv_cache_bytes, 1 << 16)
        _check(isinstance(self.kv_cache_memory_fraction, (int, float)) and 0 <= self.kv_cache_memory_fraction < 1
               and (not self.kv_cache_memory_fraction or self.device.startswith("cuda")),
               f"kv_cache_memory_fraction must be in [0, 1) and needs a cuda device (0 = use kv_cache_bytes), got "
               f"{self.kv_cache_memory_fraction!r} on {self.device!r}")
        _int_at_least("block_size", self.block_size, 1)
        _int_at_least("max_batch_size", self.max_batch_size, 1)
        _int_at_least("prefill_tokens_per_step", self.prefill_tokens_per_step, 16)
        _int_at_least("max_context_tokens", self.max_context_tokens, 0)
        _check(isinstance(self.prefix_cache, bool), f"prefix_cache must be true or false, got {self.prefix_cache!r}")
        _check(self.speculation in SPECULATION_MODES,
               f"speculation must be one of {', '.join(SPECULATION_MODES)}, got {self.speculation!r}")
        _int_at_least("spec_draft_tokens", self.spec_draft_tokens, 1)
        _int_at_least("spec_ngram_min", self.spec_ngram_min, 1)
        _int_at_least("spec_ngram_max", self.spec_ngram_max, self.spec_ngram_min)
        _int_at_least("spec_prompt_window_tokens", self.spec_prompt_window_tokens, 1)
        _check(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        sizes = tuple(self.compile_batch_sizes)
        _check(bool(sizes) and all(isinstance(b, int) and b >= 1 for b in sizes),
               f"compile_batch_sizes must be positive integers, got {self.compile_batch_sizes!r}")
        object.__setattr__(self, "compile_batch_sizes", tuple(sorted(set(sizes))))
        _int_at_least("max_tokens_complete", self.max_tokens_complete, 1)
        _int_at_least("max_tokens_edit", self.max_tokens_edit, 1)
        _int_at_least("max_waiting", self.max_waiting, 1)
        _check(self.fim_layout in FIM_LAYOUTS,
               f"fim_layout must be one of {', '.join(FIM_LAYOUTS)}, got {self.fim_layout!r}")
        _int_at_least("fim_suffix_window_tokens", self.fim_suffix_window_tokens, 0)
        _int_at_least("prefill_chunk_tokens", self.prefill_chunk_tokens, 1)
        _int_at_least("contended_chunk_tokens", self.contended_chunk_tokens, 0)
        _check(self.contended_chunk_tokens <= self.prefill_chunk_tokens,
               f"contended_chunk_tokens ({self.contended_chunk_tokens}) must be <= prefill_chunk_tokens "
               f"({self.prefill_chunk_tokens})")
        _int_at_least("interactive_chunk_tokens", self.interactive_chunk_tokens, 1)
        _check(self.interactive_chunk_tokens <= self.prefill_chunk_tokens,
               f"interactive_chunk_tokens ({self.interactive_chunk_tokens}) must be <= prefill_chunk_tokens "
               f"({self.prefill_chunk_tokens})")
        _int_at_least("interactive_window_ms", self.interactive_window_ms, 0)
        _int_at_least("kv_growth_tokens", self.kv_growth_tokens, 1)
        _int_at_least("starvation_steps", self.starvation_steps, 1)
        _int_at_least("queue_timeout_interactive_ms", self.queue_timeout_interactive_ms, 1)
        _int_at_least("queue_timeout_bulk_ms", self.queue_timeout_bulk_ms, 1)
        _int_at_least("fault_step_error_at", self.fault_step_error_at, 0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, **overrides: Any) -> "EngineConfig":
        """Build from a mapping (dashes read as underscores); unknown keys are errors."""
        values = {str(k).replace("-", "_"): v for k, v in dict(data or {}).items()}
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InvalidArgument(
                f"engine config: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(names))}"
            )
        if "compile_batch_sizes" in values and isinstance(values["compile_batch_sizes"], list):
            values["compile_batch_sizes"] = tuple(values["compile_batch_sizes"])
        from flint.config import check_types

        check_types(cls, values, where="engine config")     # a wrong type names its key and the type wanted
        return cls(**values)

    def kv_budget_bytes(self) -> int:
        """The KV budget: kv_cache_bytes, or with kv_cache_memory_fraction what that share of the GPU leaves
        after the memory in use now (call it once the weights are on the device)."""
        if not self.kv_cache_memory_fraction:
            return self.kv_cache_bytes
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        budget = int(self.kv_cache_memory_fraction * total) - (total - free)
        _check(budget >= 1 << 26, f"kv_cache_memory_fraction={self.kv_cache_memory_fraction} of {total / 2**30:.1f} "
               f"GiB leaves {budget / 2**30:.2f} GiB for KV after the weights ({(total - free) / 2**30:.1f} GiB "
               "in use): raise it, or use a GPU with more memory")
        return budget

    def threads(self) -> int:
        """The torch thread count this config runs with: `num_threads`, or for 0 the cores given."""
        return self.num_threads or cores_given()

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def cores_given() -> int:
    """How many CPUs this process may run on (its affinity mask; `os.cpu_count()` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgument(f"engine config: {message}")


def _int_at_least(name: str, value: Any, low: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
           f"{name} must be an integer >= {low}, got {value!r}")
