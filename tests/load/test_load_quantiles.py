"""One quantile definition for report and compare; the vectorised bootstrap; percentiles need enough samples."""

import random

import numpy as np
import pytest

from flint.load.compare import FIGURES, columns, compare
from flint.load.histogram import LogHistogram
from flint.load.quantile import exact, min_samples, rank, reliable, row_quantiles
from flint.load.record import RequestRecord
from flint.load.slo import SloConfig
from flint.load.summary import partial_of, summarize


def records(n: int, seed: int, scale: float = 1.0) -> list[RequestRecord]:
    rng, out = random.Random(seed), []
    for i in range(n):
        t = i * 7.0
        first = t + rng.lognormvariate(3.5, 0.9) * scale      # a long tail, where definitions differ most
        deltas = [[first + k * rng.uniform(4, 12), k + 1, 1] for k in range(rng.randint(1, 12))]
        err = rng.random() < 0.03
        out.append(RequestRecord(id=f"r{i}", job=i, step=0, label="x", t_intended_ms=t - rng.uniform(0, 3),
                                 t_sent_ms=t, t_end_ms=deltas[-1][0] + 1, deltas=[] if err else deltas,
                                 error_code="UNAVAILABLE" if err else "", finish_reason="error" if err else "length"))
    return out


def test_nearest_rank_is_an_observed_value_and_matches_numpy_inverted_cdf():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    for q in (0.0, 0.1, 0.29, 0.5, 0.9, 0.99, 1.0):
        assert exact(values, q) == np.quantile(values, q, method="inverted_cdf")
    assert rank(0.29, 100) == 29 and rank(0.99, 100) == 99 and rank(0.0, 5) == 1 and exact([], 0.5) is None


def test_report_and_compare_give_the_same_p99_on_the_same_run():
    # The issue: the report said TTFT p99 672.6 ms and compare 580.0 ms on one run (two definitions). A short
    # run with a long tail shows it: interpolating between the two largest samples is far from either.
    for n in (80, 3000):
        _same_figures_as_the_report(records(n, 3))


def _same_figures_as_the_report(recs):
    slo = SloConfig()
    summary = summarize(partial_of(recs, slo, 100), slo=slo, duration_s=21.0, lag_budget_ms=20, generators=[])
    result = compare(recs, recs, slo, resamples=20)["figures"]
    for figure, metric, pct in (("ttft_p99_ms", "ttft_intended_ms", "p99"), ("ttft_p50_ms", "ttft_intended_ms", "p50"),
                                ("tpot_p99_ms", "tpot_ms", "p99"), ("e2e_p50_ms", "e2e_ms", "p50")):
        assert summary["metrics"][metric][pct] == pytest.approx(result[figure]["a"], rel=0.006), figure
    assert result["good_fraction"]["a"] == pytest.approx(summary["good_fraction"], abs=1e-4)


def test_histogram_quantile_is_the_bucket_of_the_nearest_rank_sample():
    rng = random.Random(5)
    values = [rng.lognormvariate(4, 1.2) for _ in range(997)]
    h = LogHistogram()
    h.record_many(values)
    for q in (0.5, 0.9, 0.99, 0.999):
        assert h.quantile(q) == pytest.approx(exact(values, q), rel=0.006)


def test_row_quantiles_of_the_bootstrap_equal_the_per_row_definition_and_ignore_missing_values():
    rng = np.random.default_rng(2)
    matrix = rng.lognormal(3, 1, (40, 57))
    matrix[rng.random((40, 57)) < 0.2] = np.nan
    matrix[7] = np.nan                                          # a resample with no value at all
    got = row_quantiles(matrix, (0.5, 0.99))
    for i, row in enumerate(matrix):
        kept = row[~np.isnan(row)].tolist()
        for q in (0.5, 0.99):
            assert (np.isnan(got[q][i]) and not kept) or got[q][i] == exact(kept, q)


def test_bootstrap_finds_a_real_shift_and_not_a_null_one():
    slo = SloConfig()
    a, b, same = records(2000, 1), records(2000, 2, scale=1.3), records(2000, 3)
    shifted = compare(a, b, slo, resamples=300)["figures"]["ttft_p50_ms"]
    assert shifted["significant"] and shifted["ci_low"] > 0
    null = compare(a, same, slo, resamples=300)["figures"]["ttft_p50_ms"]
    assert null["ci_low"] <= 0 <= null["ci_high"]


def test_bootstrap_reports_progress_in_batches_up_to_the_total():
    seen = []
    compare(records(5000, 1), records(5000, 2), SloConfig(), resamples=1000, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) > 1 and seen[-1] == (1000, 1000) and all(t == 1000 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_columns_mark_superseded_requests_as_not_judged():
    r = records(3, 1)
    r[0].t_interrupt_ms, r[0].deltas = r[0].t_sent_ms + 1, []          # interrupted before its first token
    cols = columns(r, SloConfig())
    assert np.isnan(cols["good"][0]) and set(FIGURES) and not np.isnan(cols["good"][1])


def test_a_percentile_needs_five_samples_at_or_above_it():
    assert [min_samples(q) for q in (0.5, 0.9, 0.99, 0.999)] == [10, 50, 500, 5000]
    assert reliable(0.99, 500) and not reliable(0.99, 499) and reliable(1.0, 1)
