"""The OpenAI-compatible HTTP door, driven by the official `openai` client against real worker processes.

Two front-end worker processes share one gRPC port and one HTTP port (SO_REUSEPORT) and one metrics
directory, as `flint serve` runs them, in front of the real engine replica and Valkey.
"""

import asyncio
import json
import subprocess
import sys
from dataclasses import asdict

import aiohttp
import openai
import pytest
from support.services import stop_worker_process
from test_disconnect_and_health import cancelled_total, engine_running, wait_until

from flint.config import FrontendConfig
from flint.security.keystore import add_key_to_file, revoke_in_file

SEEDED = dict(temperature=1.0, seed=7)    # the demo checkpoint's greedy FIM output is special tokens (no text)


def start_worker(redis_url, tmp_path, name, port=0, http_port=0, **overrides):
    config = FrontendConfig(redis_url=redis_url, worker_id=name, port=port, http_port=http_port, reuse_port=True,
                            **overrides)
    env = {**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(config))],
                            stdout=subprocess.PIPE, text=True, env=env)
    ready = json.loads(proc.stdout.readline() or "{}")
    if ready.get("event") != "listening":
        stop_worker_process(proc)
        raise RuntimeError(f"worker did not start: {ready}")
    return proc, ready


@pytest.fixture(scope="module")
def http_workers(valkey_url, engine_replica, tmp_path_factory):
    metrics_dir = tmp_path_factory.mktemp("metrics")
    procs = []
    try:
        proc, ready = start_worker(valkey_url, metrics_dir, "http-a")
        procs.append(proc)
        proc, _ = start_worker(valkey_url, metrics_dir, "http-b", port=ready["port"], http_port=ready["http_port"])
        procs.append(proc)
        yield f"http://127.0.0.1:{ready['http_port']}"
    finally:
        for proc in procs:
            stop_worker_process(proc)


@pytest.fixture
def client(http_workers):
    return openai.OpenAI(base_url=http_workers + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completion_with_suffix_and_its_stream_give_the_same_text(client):
    args = dict(model="", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", max_tokens=12,
                **SEEDED)
    whole = client.completions.create(**args)
    choice = whole.choices[0]
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-") and whole.model
    assert choice.finish_reason in ("stop", "length") and choice.text
    assert 0 < whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_strings_and_max_tokens_are_applied(client):
    out = client.completions.create(model="", prompt="x = ", max_tokens=3, **SEEDED)
    assert out.usage.completion_tokens <= 3 and out.choices[0].finish_reason == "length"
    text = client.completions.create(model="", prompt="x = ", max_tokens=40, **SEEDED).choices[0].text
    stop = text[5:7]
    if stop.strip():
        stopped = client.completions.create(model="", prompt="x = ", max_tokens=40, stop=[stop], **SEEDED)
        assert stop not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("args, error, words", [
    (dict(n=2), openai.BadRequestError, "`n` must be 1"),
    (dict(temperature=5.0), openai.BadRequestError, "temperature must be in [0, 2]"),
    (dict(max_tokens=0), openai.BadRequestError, "`max_tokens` must be >= 1"),
    (dict(logprobs=3), openai.BadRequestError, "`logprobs` is not supported"),
    (dict(model="no-such-model"), openai.NotFoundError, "is not served here"),
])
def test_bad_requests_get_openai_errors_with_matching_status(client, args, error, words):
    with pytest.raises(error) as err:
        client.completions.create(**{"model": "", "prompt": "x", "max_tokens": 4, **args})
    body = err.value.body
    assert words in body["message"] and body["type"] and "code" in body


def test_models_lists_the_served_model(client, engine_replica):
    models = client.models.list().data
    assert len(models) == 1 and models[0].object == "model" and models[0].id


def test_chat_completions_run_an_edit(client):
    messages = [{"role": "user", "content": "rename x to total\n```python\nx = 1\ny = x + 2\n```"}]
    whole = client.chat.completions.create(model="", messages=messages, max_tokens=16, **SEEDED)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content and whole.usage.completion_tokens <= 16
    chunks = list(client.chat.completions.create(model="", messages=messages, max_tokens=16, stream=True, **SEEDED))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="fenced code block"):
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "hello"}], max_tokens=4)


async def test_client_disconnect_mid_stream_cancels_the_request(http_workers, engine_replica, valkey_url):
    cancelled_before = await cancelled_total(valkey_url, engine_replica.address)
    body = {"model": "", "messages": [{"role": "user", "content": "rename x\n```\nx = 1\n```"}], "max_tokens": 900,
            "stream": True, "temperature": 1.0, "seed": 1}
    async with aiohttp.ClientSession() as http:
        response = await http.post(http_workers + "/v1/chat/completions", json=body)
        assert response.status == 200
        await response.content.readline()          # the first chunk arrived: it is streaming
        assert await engine_running(engine_replica.address) >= 1
        response.close()                            # the client goes away mid-stream

    async def slot_freed():
        return (await cancelled_total(valkey_url, engine_replica.address) > cancelled_before
                and await engine_running(engine_replica.address) == 0)

    assert await wait_until(slot_freed)


async def test_health_and_one_scrape_covering_both_workers(http_workers, client):
    async with aiohttp.ClientSession() as http:
        async with http.get(http_workers + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"

        async def successes() -> float:
            async with http.get(http_workers + "/metrics") as r:
                text = await r.text()
            assert "_created" not in text
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("flint_request_success_total{"))

        before = await successes()
        for _ in range(6):   # a new connection each: the kernel spreads them over both workers
            async with aiohttp.ClientSession() as fresh:
                async with fresh.post(http_workers + "/v1/completions",
                                      json={"prompt": "a", "max_tokens": 2, **SEEDED}) as r:
                    assert r.status == 200
        for _ in range(4):   # whichever worker answers the scrape reports both workers' requests
            assert await successes() == before + 6
        async with http.get(http_workers + "/metrics") as r:
            text = await r.text()
    for name in ("flint_e2e_request_latency_seconds_bucket", "flint_time_to_first_token_seconds_bucket",
                 "flint_inter_token_latency_seconds_bucket", "flint_prompt_tokens_total",
                 "flint_generation_tokens_total"):
        assert any(line.startswith(name + "{") and 'model_name="' in line for line in text.splitlines()), name
    assert 'finished_reason="length"' in text


async def test_bearer_api_keys_are_the_flint_keys(valkey_url, engine_replica, tmp_path):
    keys = tmp_path / "keys.json"
    key = add_key_to_file(keys, "team-a")
    proc, ready = start_worker(valkey_url, tmp_path, "http-auth",
                               security={"api_keys_file": str(keys), "key_recheck_s": 0.05})
    try:
        base = f"http://127.0.0.1:{ready['http_port']}/v1"
        good = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
        out = await good.completions.create(model="", prompt="a", max_tokens=2, **SEEDED)
        assert out.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError) as err:
            await openai.AsyncOpenAI(base_url=base, api_key="flk_wrong", max_retries=0).completions.create(
                model="", prompt="a", max_tokens=2)
        assert "not valid" in err.value.body["message"]
        async with aiohttp.ClientSession() as http:
            async with http.get(base[:-3] + "/health") as r:   # probes need no key
                assert r.status == 200
            # a key revoked while its stream runs ends that stream, as on gRPC
            body = {"prompt": "a", "max_tokens": 900, "stream": True, **SEEDED}
            async with http.post(base + "/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200
                await r.content.readline()
                revoke_in_file(keys, key=key)
                with pytest.raises(aiohttp.ClientPayloadError):   # the server cuts the stream short
                    await r.content.read()
    finally:
        stop_worker_process(proc)
