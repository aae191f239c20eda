"""Metric definitions on synthetic timelines whose answers are known by hand."""

import pytest

from flint.load.record import RequestRecord
from flint.load.slo import SloConfig
from flint.load.summary import partial_of, summarize


def rec(deltas, *, sent=100.0, intended=None, end=None, **kw) -> RequestRecord:
    return RequestRecord(id="r", job=0, step=0, label="t", t_intended_ms=sent if intended is None else intended,
                         t_sent_ms=sent, t_end_ms=end if end is not None else (deltas[-1][0] + 1 if deltas else sent),
                         deltas=[list(d) for d in deltas], **kw)


def test_coalesced_delta_gap_is_split_over_its_tokens():
    # first token at 150 (1 token), then a 3-token delta 30 ms later, then 1 token 10 ms later.
    r = rec([(150, 1, 1), (180, 2, 3), (190, 3, 1)], sent=100, intended=90, end=195)
    assert r.ttft_ms == 50 and r.ttft_intended_ms == 60
    assert r.itl_ms == [10, 10, 10, 10]
    assert r.delta_gaps_ms == [30, 10]
    assert r.tokens == 5
    assert r.tpot_ms == pytest.approx((190 - 150) / 4)
    assert r.e2e_ms == 95
    assert r.max_gap_ms == 30 and r.stalls(threshold_ms=20) == 1


def test_tokens_coalesced_into_the_first_delta_get_no_itl_sample():
    r = rec([(120, 1, 4), (140, 2, 2)])
    assert r.ttft_ms == 20
    assert r.itl_ms == [10, 10]          # only the second delta's two tokens
    assert sum(r.itl_ms) == 140 - 120
    assert r.tpot_ms == pytest.approx(20 / 5)


def test_zero_token_deltas_do_not_count_as_first_token_or_gaps():
    r = rec([(110, 1, 0), (130, 2, 1), (150, 3, 0), (170, 4, 2)])
    assert r.ttft_ms == 30
    assert r.delta_gaps_ms == [40]
    assert r.itl_ms == [20, 20]
    assert r.seq_errors == 0


def test_interrupt_to_stop_and_tokens_after_interrupt():
    r = rec([(130, 1, 1), (140, 2, 1), (150, 3, 2), (155, 4, 1)], end=160, t_interrupt_ms=145.0,
            t_interrupt_ack_ms=152.0, ack_last_seq=3, interrupt_mode="interrupt", finish_reason="interrupted")
    assert r.interrupt_to_stop_ms == 15
    assert r.tokens_after_interrupt == 3
    assert r.deltas_after_ack == 1       # seq 4 arrived after an ack that promised last_seq 3
    assert not r.superseded


def test_interrupted_before_first_token_is_superseded_not_judged():
    superseded = rec([], end=140, t_interrupt_ms=130.0, finish_reason="interrupted")
    late = rec([(150, 1, 1)], end=151, t_interrupt_ms=130.0, finish_reason="interrupted")
    assert superseded.superseded and late.superseded
    assert superseded.ttft_ms is None and superseded.itl_ms == [] and superseded.tpot_ms is None


def test_seq_gaps_and_duplicates_are_counted():
    assert rec([(110, 1, 1), (120, 3, 1), (130, 3, 1)]).seq_errors == 2


def test_summary_counts_errors_as_misses_and_by_status_code():
    slo = SloConfig(preset="custom", ttft_ms=100, tpot_ms=50, percentile=50, max_error_rate=0.5)
    good = rec([(150, 1, 1), (160, 2, 1)], sent=100)                       # ttft 50, tpot 10
    slow = rec([(400, 1, 1), (410, 2, 1)], sent=100)                       # ttft 300: a miss
    err1 = rec([], sent=100, end=120, error_code="RESOURCE_EXHAUSTED", finish_reason="error")
    err2 = rec([], sent=100, end=130, error_code="UNAVAILABLE", finish_reason="error")
    superseded = rec([], sent=100, end=110, t_interrupt_ms=105.0, finish_reason="interrupted")
    s = summarize(partial_of([good, slow, err1, err2, superseded], slo, stall_ms=100), slo=slo, duration_s=1.0,
                  lag_budget_ms=20, generators=[])
    assert s["requests"] == 5 and s["errors"] == 2 and s["superseded"] == 1
    assert s["errors_by_code"] == {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1}
    assert s["judged"] == 4 and s["good"] == 1 and s["good_fraction"] == 0.25
    assert s["error_rate"] == 0.5
    assert s["slo"]["pass"] is True          # p50 TTFT within 1% of 50 ms <= 100, errors 50% <= 50%
    assert s["metrics"]["ttft_ms"]["count"] == 2


def test_summary_flags_a_generator_that_fell_behind():
    late = [rec([(400 + i, 1, 1)], sent=300 + i, intended=100 + i) for i in range(3)]   # 200 ms late
    s = summarize(partial_of(late, SloConfig(), 100), slo=SloConfig(), duration_s=1.0, lag_budget_ms=20,
                  generators=[{"index": 0, "cpu_util": 0.95, "loop_lag_ms": {"p99": 1.0}}])
    assert s["fell_behind"]
    assert any("schedule lag" in r for r in s["fell_behind_reasons"])
    assert any("95%" in r for r in s["fell_behind_reasons"])
