"""Scenarios are named, seeded, versioned and deterministic; traces replay what was recorded."""

from pathlib import Path

import pytest

from flint.errors import InvalidArgument
from flint.load.config import load_run_config
from flint.load.runner import build_schedule
from flint.load.scenarios import SCENARIOS, make_scenario
from flint.load.trace import record_schedule, write_trace

SCENARIO_FILES = sorted((Path(__file__).parents[2] / "loadtests" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("name", [*SCENARIOS, "mix"])
def test_same_seed_same_jobs_other_seed_other_jobs(name):
    params = {"context_tokens": [256, 512]} if name == "repo-context" else {}
    a, b, c = (make_scenario(name, seed, params) for seed in (1, 1, 2))
    assert a.job(5) == b.job(5)
    assert a.job(5) != c.job(5)
    described = a.describe()
    assert described["name"] == name and described["version"] >= 1 and described["seed"] == 1


def test_unknown_parameters_are_errors_that_list_the_allowed_ones():
    with pytest.raises(InvalidArgument, match="debounce_ms"):
        make_scenario("keystroke", 0, {"debounse_ms": 50})
    with pytest.raises(InvalidArgument, match="keystroke"):
        make_scenario("typing", 0)


def test_keystroke_requests_extend_the_previous_prompt_and_redirect_it():
    scenario = make_scenario("keystroke", 3, {"debounce_ms": 100, "lines": [2, 2]})
    job = scenario.job(0)
    steps = job.steps
    assert len(steps) > 5
    for prev, cur in zip(steps, steps[1:]):
        assert cur.spec.prefix.startswith(prev.spec.prefix) and len(cur.spec.prefix) > len(prev.spec.prefix)
        assert cur.spec.suffix == prev.spec.suffix
        assert cur.offset_ms - prev.offset_ms > 100          # the debounce fired in between
        assert cur.spec.on_overlap == "redirect"
    assert steps[0].spec.on_overlap == "none" and steps[0].offset_ms == 0


def test_prompt_sizes_follow_the_chars_per_token_assumption():
    small = make_scenario("short-fim", 1, {"prompt_tokens": [1000, 1000], "chars_per_token": 3.0}).job(0)
    large = make_scenario("short-fim", 1, {"prompt_tokens": [1000, 1000], "chars_per_token": 5.0}).job(0)
    assert small.steps[0].spec.prompt_chars == pytest.approx(3000, rel=0.02)
    assert large.steps[0].spec.prompt_chars == pytest.approx(5000, rel=0.02)


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_committed_scenario_files_load(path):
    config = load_run_config(str(path), {})
    assert make_scenario(config.scenario, config.seed, config.params).job(0).steps


def test_a_recorded_trace_replays_the_same_requests_at_the_same_times(tmp_path):
    config = load_run_config(None, {"scenario": "redirect", "seed": 9, "arrival": {"kind": "poisson", "rate_per_s": 5},
                                    "bounds": {"duration_s": 4}})
    scenario = make_scenario(config.scenario, config.seed, config.params)
    schedule = build_schedule(config, scenario)
    entries = record_schedule(scenario, schedule)
    write_trace(tmp_path / "t.jsonl", entries, scenario.describe())
    replay = make_scenario("replay", 0, {"trace": str(tmp_path / "t.jsonl")})
    replay_config = load_run_config(None, {"scenario": "replay", "params": {"trace": str(tmp_path / "t.jsonl")},
                                           "bounds": {"duration_s": 4}})
    replayed = record_schedule(replay, build_schedule(replay_config, replay))
    key = lambda e: (round(e[0], 3), e[2], e[3].prefix)   # noqa: E731
    assert [(round(t, 3), s, spec) for t, _, s, spec in sorted(replayed, key=key)] == \
        [(round(t, 3), s, spec) for t, _, s, spec in sorted(entries, key=key)]
    assert replay.describe()["trace_source"]["name"] == "redirect"
