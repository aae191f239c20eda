"""Both target adapters against mock servers on loopback: streaming, interrupts, redirects, errors."""

import pytest

from flint.errors import InvalidArgument, Unavailable
from flint.load.config import RunConfig, TargetConfig
from flint.load.mock_openai import start_openai_mock
from flint.load.mock_server import MockConfig, start_mock_server
from flint.load.runner import Generator

SLOW = MockConfig(tokens_per_s=200, ttft_ms=5, coalesce=1)


def cfg(address: str, protocol: str, scenario: str, params: dict, rate: float = 20.0) -> RunConfig:
    return RunConfig(scenario=scenario, seed=3, params={"prompt_tokens": [64, 128], **params},
                     arrival={"kind": "constant", "rate_per_s": rate}, bounds={"duration_s": 1.0, "drain_s": 5.0},
                     target={"protocol": protocol, "address": address})


@pytest.fixture
async def flint_mock():
    server, port = await start_mock_server(SLOW)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


@pytest.fixture
async def openai_mock():
    runner, port = await start_openai_mock(SLOW)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("ack_after_final", [False, True])
async def test_flint_interrupt_after_k_tokens_is_acknowledged_and_nothing_follows_the_ack(ack_after_final):
    server, port = await start_mock_server(MockConfig(tokens_per_s=200, ttft_ms=5, ack_after_final=ack_after_final))
    try:
        result = await Generator(cfg(f"127.0.0.1:{port}", "flint", "interrupt",
                                     {"by_time_fraction": 0.0, "after_tokens": [3, 6]})).run()
    finally:
        await server.stop(0.5)
    assert result.records
    for r in result.records:
        assert r.ok and r.finish_reason == "interrupted" and r.interrupt_mode == "interrupt"
        assert r.tokens >= r.tokens_after_interrupt and r.tokens < r.max_tokens
        assert r.ack_last_seq is not None and r.deltas_after_ack == 0
        assert r.interrupt_to_stop_ms is not None and r.interrupt_to_stop_ms >= 0


async def test_flint_redirect_stops_the_first_request_and_streams_the_second(flint_mock):
    result = await Generator(cfg(flint_mock, "flint", "redirect", {"max_tokens": [100, 100],
                                                                    "redirect_after_ms": [50, 80]}, rate=10)).run()
    firsts = [r for r in result.records if r.step == 0]
    seconds = [r for r in result.records if r.step == 1]
    assert firsts and len(firsts) == len(seconds)
    assert all(r.finish_reason == "interrupted" and r.interrupt_mode == "redirect" for r in firsts)
    assert all(r.ok and r.finish_reason == "length" and r.tokens == 100 for r in seconds)


async def test_openai_adapter_streams_sse_chunks_as_one_token_each(openai_mock):
    result = await Generator(cfg(openai_mock, "openai", "short-fim", {"max_tokens": [8, 12]})).run()
    assert len(result.records) == 20
    for r in result.records:
        assert r.ok and r.finish_reason == "length"
        assert r.tokens == r.max_tokens == r.completion_tokens
        assert [d[1] for d in r.deltas] == list(range(1, r.tokens + 1))
        assert r.ttft_ms > 0 and r.tpot_ms > 0


async def test_openai_interrupt_closes_the_stream(openai_mock):
    result = await Generator(cfg(openai_mock, "openai", "interrupt", {"by_time_fraction": 0.0,
                                                                      "after_tokens": [2, 4]})).run()
    for r in result.records:
        assert r.ok and r.finish_reason == "interrupted" and r.interrupt_mode == "close"
        assert 2 <= r.tokens <= 4 + 1
        assert r.tokens_after_interrupt == 0


async def test_openai_http_errors_are_recorded_by_status(openai_mock):
    result = await Generator(cfg(openai_mock, "openai", "short-fim", {"max_tokens": [0, 0]}, rate=5)).run()
    assert result.records and all(r.error_code == "HTTP_400" for r in result.records)


async def test_unreachable_flint_target_fails_clearly():
    config = cfg("127.0.0.1:9", "flint", "short-fim", {})
    config = RunConfig(**{**config.__dict__, "target": TargetConfig(address="127.0.0.1:9", connect_timeout_s=0.5)})
    with pytest.raises(Unavailable, match="is the server running"):
        await Generator(config).run()


@pytest.mark.parametrize("address", ["10.0.0.5:50051", "example.com:443", "http://192.168.1.2:8000", "8.8.8.8:1"])
def test_targets_off_this_machine_are_refused_without_the_ownership_flag(address):
    with pytest.raises(InvalidArgument, match="i-own-the-target"):
        TargetConfig(address=address)


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "localhost:1", "[::1]:50051", "http://127.0.0.1:8000"])
def test_loopback_targets_are_accepted(address):
    assert TargetConfig(address=address).address == address


async def test_openai_redirect_closes_the_first_stream_and_sends_the_second(openai_mock):
    result = await Generator(cfg(openai_mock, "openai", "redirect", {"max_tokens": [100, 100],
                                                                      "redirect_after_ms": [50, 80]}, rate=10)).run()
    firsts = [r for r in result.records if r.step == 0]
    seconds = [r for r in result.records if r.step == 1]
    assert firsts and len(firsts) == len(seconds)
    assert all(r.finish_reason == "interrupted" and r.interrupt_mode == "redirect" and r.tokens < 100 for r in firsts)
    assert all(r.ok and r.tokens == 100 for r in seconds)
