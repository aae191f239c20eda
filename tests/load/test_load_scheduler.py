"""The generator keeps its schedule against the mock token server, and measures from intended times."""

import asyncio
import time

import pytest

from flint.load.arrival import ArrivalConfig, open_schedule, share
from flint.load.config import RunConfig
from flint.load.mock_server import MockConfig, MockProcess, start_mock_server
from flint.load.orchestrate import run
from flint.load.runner import Generator


@pytest.fixture
async def mock_address():
    server, port = await start_mock_server(MockConfig(tokens_per_s=2000, ttft_ms=2, coalesce=2))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


def config(address: str, **kw) -> RunConfig:
    base = dict(scenario="short-fim", seed=5, params={"prompt_tokens": [64, 128], "max_tokens": [4, 16]},
                arrival={"kind": "poisson", "rate_per_s": 40.0}, bounds={"duration_s": 3.0, "drain_s": 5.0},
                target={"address": address})
    base.update(kw)
    return RunConfig(**base)


def test_open_schedules_have_the_intended_rate_and_shares_are_disjoint():
    for kind in ("poisson", "gamma", "constant"):
        sched = open_schedule(ArrivalConfig(kind=kind, rate_per_s=50.0, cv=2.0), seed=1, duration_s=200.0,
                              job_span_ms=lambda i: 0.0)
        assert abs(len(sched) / 200.0 - 50.0) < 50.0 * 0.08, kind
        if kind == "gamma":
            import statistics

            gaps = [b[0] - a[0] for a, b in zip(sched, sched[1:])]
            assert abs(statistics.pstdev(gaps) / statistics.mean(gaps) - 2.0) < 0.3     # as bursty as asked
        shares = [share(sched, k, 3) for k in range(3)]
        assert sorted(x for s in shares for x in s) == sorted(sched)
        assert len({x[1] for s in shares for x in s}) == len(sched)


def test_users_arrival_keeps_each_user_busy_one_job_at_a_time():
    arrival = ArrivalConfig(kind="users", users=3, think_time_ms=(100.0, 100.0))
    sched = open_schedule(arrival, seed=2, duration_s=10.0, job_span_ms=lambda i: 400.0)
    for user in range(3):
        starts = [t for t, i in sched if i % 3 == user]
        assert all(b - a == pytest.approx(500.0) for a, b in zip(starts, starts[1:]))


async def test_open_loop_sends_every_scheduled_request_at_the_intended_rate(mock_address):
    cfg = config(mock_address)
    result = await Generator(cfg).run()
    scheduled = open_schedule(cfg.arrival, cfg.seed, cfg.bounds.duration_s, lambda i: 0.0)
    assert result.scheduled_jobs == len(scheduled) == len(result.records)
    assert all(r.ok and r.t_sent_ms is not None for r in result.records)
    sent_rate = len(result.records) / cfg.bounds.duration_s
    assert abs(sent_rate - 40.0) < 40.0 * 0.35          # a Poisson draw of ~120 arrivals
    # Sends follow the intended times: the order is kept and each send is after its intended time.
    assert all(r.t_sent_ms >= r.t_intended_ms - 1.0 for r in result.records)
    assert sum(r.tokens for r in result.records) == sum(r.max_tokens for r in result.records)


async def test_latency_from_intended_time_includes_the_time_the_generator_sent_late(mock_address):
    cfg = config(mock_address, arrival={"kind": "constant", "rate_per_s": 50.0}, bounds={"duration_s": 2.0})
    gen = Generator(cfg)
    loop = asyncio.get_running_loop()
    # Freeze the generator's event loop for 400 ms at t = 0.8 s: requests due meanwhile go out late.
    loop.call_later(1.1, time.sleep, 0.4)
    result = await gen.run()
    late = [r for r in result.records if r.schedule_lag_ms > 200]
    assert late, "the frozen loop must have delayed some sends"
    for r in result.records:
        assert r.ttft_intended_ms == pytest.approx(r.ttft_ms + r.schedule_lag_ms)
    assert all(r.ttft_intended_ms > r.ttft_ms + 200 for r in late)     # the late send counts against the server


async def test_closed_loop_never_has_more_jobs_in_flight_than_its_concurrency(mock_address):
    cfg = config(mock_address, arrival={"kind": "closed", "concurrency": 3, "think_time_ms": [0, 5]},
                 bounds={"duration_s": 1.5})
    result = await Generator(cfg).run()
    events = sorted([(r.t_sent_ms, 1) for r in result.records] + [(r.t_end_ms, -1) for r in result.records])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert len(result.records) > 3 and peak <= 3


def test_two_generator_processes_split_one_schedule_and_merge():
    with MockProcess(MockConfig(tokens_per_s=2000, ttft_ms=2)) as mock:
        cfg = config(mock.address, generators=2, bounds={"duration_s": 2.0, "drain_s": 5.0})
        result = run(cfg, quiet=True)
    scheduled = open_schedule(cfg.arrival, cfg.seed, cfg.bounds.duration_s, lambda i: 0.0)
    s = result.report["summary"]
    assert s["requests"] == len(scheduled) == len(result.records)
    assert {r.generator for r in result.records} == {0, 1}
    assert len({r.job for r in result.records}) == len(scheduled)
    assert [g["index"] for g in result.report["generators"]] == [0, 1]
    assert all(g["cpu_s"] > 0 and g["loop_lag_ms"]["count"] > 0 for g in result.report["generators"])
    assert s["metrics"]["ttft_ms"]["count"] == s["ok"]


def test_shares_run_as_separate_commands_merge_into_one_run(tmp_path):
    import subprocess
    import sys

    from flint.load.orchestrate import merge_dirs

    with MockProcess(MockConfig(tokens_per_s=2000, ttft_ms=2)) as mock:
        start_at = time.time() + 4.0
        procs = [subprocess.Popen([sys.executable, "-m", "flint.cli", "load", "run", "--scenario", "short-fim",
                                   "--seed", "5", "--param", "prompt_tokens=[64,128]", "--param", "max_tokens=[4,8]",
                                   "--rate", "20", "--duration-s", "2", "--generators", "2", "--generator-index",
                                   str(k), "--start-at", str(start_at), "--address", mock.address,
                                   "--out", str(tmp_path / f"share-{k}")], stdout=subprocess.DEVNULL)
                 for k in range(2)]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    result = merge_dirs([tmp_path / "share-0", tmp_path / "share-1"])
    scheduled = open_schedule(ArrivalConfig(rate_per_s=20), 5, 2.0, lambda i: 0.0)
    assert len(result.records) == len(scheduled) == result.report["summary"]["requests"]
    assert {r.generator for r in result.records} == {0, 1} and result.report["summary"]["errors"] == 0


async def test_progress_counts_each_request_when_it_ends_not_when_its_keystroke_session_closes(mock_address):
    # A keystroke job sends several requests over seconds on one session; the progress line showed "done 0"
    # until whole sessions closed.
    cfg = config(mock_address, scenario="keystroke", params={}, arrival={"kind": "constant", "rate_per_s": 2.0},
                 bounds={"duration_s": 2.0, "drain_s": 5.0})
    gen = Generator(cfg)
    task = asyncio.create_task(gen.run())
    early_done = 0
    while not task.done():
        ended = sum(1 for r in gen.records if r.t_end_ms is not None)
        assert gen.counters.done == ended
        if gen.records and any(r.t_end_ms is None for r in gen.records):
            early_done = max(early_done, gen.counters.done)     # counted while its session is still open
        await asyncio.sleep(0.02)
    result = await task
    assert early_done > 0 and gen.counters.done == len(result.records)
