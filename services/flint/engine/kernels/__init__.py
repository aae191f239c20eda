"""Native CPU kernels of the engine, compiled on first use and cached.

Each kernel is a small C++ file beside this module, built with
`torch.utils.cpp_extension.load` for the machine it runs on (`-march=native`,
so AVX2 / AVX-512 / VNNI are used where the CPU has them). The build goes to
`<flint cache dir>/kernels/<name>-<hash>` where the hash covers the source (its
path and text, and the local headers it includes), the torch version and the CPU's instruction-set flags: a second process, or a
second start, loads the built library in milliseconds, and a machine with a
different CPU builds its own.

A kernel that cannot be built (no C++ compiler) raises `KernelUnavailable`
with the compiler's message; callers fall back to plain PyTorch ops and say so
once in the log.

Building one kernel takes ~30 s of CPU (most of it parsing torch's headers), so
`flint serve` calls `prebuild` before it starts replicas: the missing kernels
build in parallel processes, with a progress line, instead of inside each
replica's start-up.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}

# Every native kernel: extension name -> its C++ sources (beside this module).
KERNELS: dict[str, list[str]] = {
    "skinny_f32": ["skinny_f32.cpp"],
    "flint_quant_linear": ["quant_linear.cpp", "quant_vnni.cpp"],
    "paged_attention": ["paged_attention.cpp"],
}
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math"]


class KernelUnavailable(RuntimeError):
    """The native kernel could not be built or loaded on this machine."""


def cpu_flags() -> frozenset[str]:
    """Instruction-set flags of this CPU (empty where /proc/cpuinfo is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _local_headers(sources: list[Path]) -> list[Path]:
    """The headers beside the sources that they `#include "..."` (part of the cache key)."""
    names = sorted({line.split('"')[1] for src in sources for line in src.read_text().splitlines()
                    if line.startswith('#include "')})
    return [sources[0].parent / name for name in names]


def _build_dir(name: str, sources: list[Path], extra_cflags: list[str]) -> Path:
    import torch

    from flint import env

    digest = hashlib.sha256()
    for src in [*sources, *_local_headers(sources)]:
        # the path too: ninja rebuilds when the same build dir is handed another checkout's source path
        digest.update(str(src).encode())
        digest.update(src.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(platform.machine().encode())
    digest.update(" ".join(sorted(cpu_flags())).encode())
    digest.update(" ".join(extra_cflags).encode())
    path = env.kernel_cache_dir() / f"{name}-{digest.hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(name: str, sources: list[str] | None = None, extra_cflags: list[str] | None = None) -> ModuleType:
    """Build (once per machine and source) and import the extension `name` from `sources`.

    `sources` are file names beside this module (default: `KERNELS[name]`). Raises `KernelUnavailable`.
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            raise KernelUnavailable(_failed[name])
        paths = [_HERE / s for s in (sources or KERNELS[name])]
        cflags = [*_CFLAGS, *(extra_cflags or [])]
        try:
            from torch.utils import cpp_extension

            build = _build_dir(name, paths, cflags)
            # torch's own build lock is a file that a killed build leaves behind, and every later load
            # then waits on it forever; an flock dies with its process, so under it a leftover is stale
            with open(build / "flint-build.lock", "w") as held:
                fcntl.flock(held, fcntl.LOCK_EX)
                (build / "lock").unlink(missing_ok=True)
                module = cpp_extension.load(
                    name=name, sources=[str(p) for p in paths], extra_cflags=cflags,
                    extra_ldflags=["-fopenmp"], build_directory=str(build),
                    verbose=os.environ.get("FLINT_KERNELS_VERBOSE") == "1",
                )
        except Exception as exc:  # compiler missing, build error, ABI mismatch
            message = f"native kernel {name!r} unavailable: {type(exc).__name__}: {exc}"
            _failed[name] = message
            log.warning("%s; falling back to PyTorch ops", message)
            raise KernelUnavailable(message) from exc
        _loaded[name] = module
        return module


def is_built(name: str) -> bool:
    """True when `name`'s library for this source, torch and CPU is already in the cache."""
    return (_build_dir(name, [_HERE / s for s in KERNELS[name]], _CFLAGS) / f"{name}.so").exists()


def prebuild(say: Callable[[str], None] = print, jobs: int = 2) -> dict[str, str]:
    """Build every kernel missing from the cache, `jobs` at a time in child processes.

    Returns {name: error} for kernels that failed to build (they run on PyTorch ops);
    says one line before and one after, nothing when every kernel is cached.
    """
    missing = [name for name in KERNELS if not is_built(name)]
    if not missing:
        return {}
    say(f"Building native kernels ({', '.join(missing)}): first start on this machine only, about a minute...")
    started = time.monotonic()
    errors: dict[str, str] = {}
    pending = list(missing)
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            name = pending.pop(0)
            code = f"from flint.engine import kernels; kernels.load({name!r})"
            running[name] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.returncode != 0 or not is_built(name):
                errors[name] = (stderr.strip().splitlines() or ["build failed"])[-1]
        time.sleep(0.05)
    built = len(missing) - len(errors)
    say(f"  native kernels: {built} built in {time.monotonic() - started:.0f} s"
        + (f"; {len(errors)} unavailable, PyTorch ops used instead: {errors}" if errors else ""))
    return errors
