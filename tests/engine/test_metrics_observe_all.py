"""observe_all exports exactly what one observe per value exports."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flint.engine.metrics import _LATENCY_BUCKETS, EngineMetrics, observe_all

# Gaps as a step produces them: runs of one value, bucket bounds exactly, values between, above the last bound.
VALUE = st.one_of(st.sampled_from(_LATENCY_BUCKETS), st.floats(0.0, 40.0), st.sampled_from([0.0031, 1e-9, 31.0]))
RUNS = st.lists(st.tuples(VALUE, st.integers(1, 20)), min_size=1, max_size=6)


def exported(metrics: EngineMetrics) -> dict:
    """The ITL histogram's samples as a scrape reads them (the creation time aside)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() if family.name == "flint_engine_inter_token_latency_seconds"
            for s in family.samples if not s.name.endswith("_created")}


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(RUNS, min_size=1, max_size=4))
def test_buckets_sum_and_count_equal_one_observe_per_value(steps):
    one_by_one, grouped = EngineMetrics(model="m"), EngineMetrics(model="m")
    for runs in steps:
        values = [v for v, n in runs for _ in range(n)]
        for v in values:
            one_by_one.itl.observe(v)
        observe_all(grouped.itl, values)
        assert exported(grouped) == exported(one_by_one)      # the sum too, to the last bit


def test_a_histogram_without_the_internals_gets_one_observe_per_value():
    class Plain:
        def __init__(self):
            self.seen = []

        def observe(self, v):
            self.seen.append(v)

    h = Plain()
    observe_all(h, [0.1, 0.1, 0.2])
    assert h.seen == [0.1, 0.1, 0.2]
