"""A tiny OpenAI-compatible streaming `/v1/completions` server (SSE), for calibrating the HTTP adapter.

Same knobs as the flint mock (MockConfig): first chunk after `ttft_ms`, then
`tokens_per_s`, one token per SSE chunk as vLLM and llama.cpp send them, a
`usage` chunk and `data: [DONE]` at the end. A client that closes the stream
stops its generator.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from flint.load.mock_server import MockConfig


def build_app(config: MockConfig) -> web.Application:
    limit = asyncio.Semaphore(config.max_streams) if config.max_streams else None

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            max_tokens = int(body.get("max_tokens", config.default_max_tokens))
        except (json.JSONDecodeError, TypeError, ValueError):
            return web.json_response({"error": {"message": "body must be JSON with an integer max_tokens"}},
                                     status=400)
        if max_tokens < 1 or not body.get("stream"):
            return web.json_response({"error": {"message": "max_tokens must be >= 1 and stream true"}}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        prompt_tokens = int(len(body.get("prompt", "") + body.get("suffix", "")) / config.chars_per_token)
        if limit is not None:
            await limit.acquire()
        try:
            await asyncio.sleep(config.ttft_ms / 1000.0)
            t_first = time.perf_counter()
            for i in range(max_tokens):
                delay = t_first + i / config.tokens_per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                last = i == max_tokens - 1
                chunk = {"id": "cmpl-mock", "object": "text_completion", "model": config.model,
                         "choices": [{"index": 0, "text": "tok ", "finish_reason": "length" if last else None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            usage = {"id": "cmpl-mock", "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                                  "completion_tokens": max_tokens}}
            await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            if limit is not None:
                limit.release()
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


async def start_openai_mock(config: MockConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """A running server and its port; stop it with `await runner.cleanup()`."""
    runner = web.AppRunner(build_app(config))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]
