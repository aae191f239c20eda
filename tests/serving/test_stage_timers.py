"""The front-end's stage timers (flint_frontend_stage_seconds and the Redis/Ray call histograms)."""

import pytest

from flint.observability.metrics import metrics


def count(stage: str) -> float:
    return metrics().registry.get_sample_value("flint_frontend_stage_seconds_count", {"stage": stage}) or 0.0


def total_s(stage: str) -> float:
    return metrics().registry.get_sample_value("flint_frontend_stage_seconds_sum", {"stage": stage}) or 0.0


def test_a_timed_stage_is_observed_once_per_block_also_when_the_block_raises():
    stats = metrics()
    before = count("test-stage")
    with stats.time_stage("test-stage"):
        pass
    with pytest.raises(ValueError):
        with stats.time_stage("test-stage"):
            raise ValueError("the stage failed")
    assert count("test-stage") == before + 2


def test_timers_of_one_stage_open_at_once_each_observe_their_own_time():
    # Two requests' stages overlap (tasks interleave): each timer keeps its own start.
    import time

    stats = metrics()
    before = total_s("overlap")
    outer = stats.time_stage("overlap")
    with outer:
        time.sleep(0.05)
        with stats.time_stage("overlap"):
            pass
    assert 0.05 <= total_s("overlap") - before < 1.0   # the inner timer did not restart the outer one
