"""The kernels' thread pool: a job never waits for a worker that is not running, every extension shares one pool,
and a forked child still computes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from flint.engine import kernels


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # id(w) -> (w, its panels)


def _linear_f32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T on the fp32 kernel (a job of the pool over w's panels)."""
    k = kernels.load("skinny_f32")
    if id(w) not in _packed or _packed[id(w)][0] is not w:
        _packed[id(w)] = (w, k.pack_f32(w))
    return k.linear_packed(x, _packed[id(w)][1], w.shape[0], None)


def test_one_pool_for_every_extension():
    kernels.load("skinny_f32")
    pool = kernels._pool
    kernels.load("paged_attention")
    kernels.load("flint_quant_linear")
    assert kernels._pool is pool


def test_a_job_completes_on_the_caller_while_workers_are_held_out(two_threads):
    pa = kernels.load("paged_attention")
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 256, generator=gen), torch.randn(4096, 256, generator=gen)
    torch.set_num_threads(1)
    expected = _linear_f32(x, w)
    torch.set_num_threads(2)
    pa.pool_hold_workers(True)
    try:
        before = pa.pool_worker_chunks()
        for _ in range(20):   # held workers stand for threads the OS is not running: never waited for
            assert torch.equal(_linear_f32(x, w), expected)
        assert pa.pool_worker_chunks() == before
    finally:
        pa.pool_hold_workers(False)
    # let in again, a worker takes chunks of the jobs (it may miss some: it joins whatever is left)
    before = pa.pool_worker_chunks()
    for _ in range(2000):
        assert torch.equal(_linear_f32(x, w), expected)
        if pa.pool_worker_chunks() > before:
            break
    assert pa.pool_worker_chunks() > before


def test_back_to_back_jobs_of_different_kernels_each_get_their_own_result(two_threads):
    """Jobs follow each other with no gap, each with its own body and range: a worker still in one job, or
    arriving late, must never run a chunk of one job with another's body."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(1, 64, 3000), (3, 128, 700), (2, 32, 5000)]        # rows, columns, outputs
    cases = [(torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)) for m, k, n in shapes]
    torch.set_num_threads(1)
    expected = [_linear_f32(x, w) for x, w in cases]
    torch.set_num_threads(2)
    for i in range(3000):
        x, w = cases[i % 3]
        assert torch.equal(_linear_f32(x, w), expected[i % 3]), f"call {i}"


def test_a_forked_child_computes_with_the_pool():
    code = textwrap.dedent("""
        import os, sys, torch
        from flint.engine import kernels
        torch.set_num_threads(2)
        k = kernels.load("skinny_f32")
        x, w = torch.randn(3, 256), k.pack_f32(torch.randn(4096, 256))
        y = k.linear_packed(x, w, 4096, None)            # the pool and its worker exist now
        pid = os.fork()
        if pid == 0:
            ok = all(torch.equal(k.linear_packed(x, w, 4096, None), y) for _ in range(50))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-c", code], timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
