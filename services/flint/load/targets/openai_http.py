"""OpenAI-compatible streaming `/v1/completions` over HTTP (vLLM, SGLang, llama.cpp server).

Each request is one POST with `stream: true`; every SSE `data:` chunk with
text is a delta. These servers do not say how many tokens a chunk holds, so
each chunk counts as one token (they send one token per chunk); when the
last chunk carries `usage`, completion_tokens comes from it. An interrupt is
closing the stream: the request ends at that moment by definition, so
interrupt-to-stop is ~0 and tokens after it cannot be observed (the server
may keep computing; compare server-side metrics for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp

from flint.engine.fim import TEMPLATE_NAMES, TEMPLATES
from flint.load.targets.base import Clock, RequestState, Session, Target
from flint.load.workload import RequestSpec


FIM_TEMPLATES = ("auto", "suffix", *TEMPLATE_NAMES)


def fim_family(template: str, model: str) -> str:
    """The FIM template to use: as configured, or for "auto" the family the model's name says, else "suffix"."""
    if template != "auto":
        return template
    name = model.lower()
    for key, family in (("qwen", "qwen"), ("starcoder", "starcoder"), ("deepseek", "deepseek"),
                        ("codellama", "codellama"), ("code-llama", "codellama")):
        if key in name:
            return family
    return "suffix"


def fim_prompt(family: str, prefix: str, suffix: str) -> str:
    """prefix and suffix in the family's FIM layout as text (the engine's token strings, flint.engine.fim).

    vLLM, SGLang and llama.cpp parse special-token text in a completion prompt, so the same prompt works on
    all three; vLLM refuses the `suffix` field, which is why "suffix" is only chosen for servers that take it
    (flint's own /v1/completions).
    """
    t = next(t for t in TEMPLATES if t.name == family)
    if not t.prefix:
        return prefix
    if t.prefix.startswith("\u2581"):      # CodeLlama's SentencePiece tokens: "<PRE> P <SUF>S <MID>" as text
        return f"{t.prefix[1:]} {prefix} {t.suffix[1:]}{suffix} {t.middle[1:]}"
    return f"{t.prefix}{prefix}{t.suffix}{suffix}{t.middle}"


def request_body(spec: RequestSpec, model: str, fim_template: str) -> dict:
    context = "".join(f"# file: {path}\n{content}\n" for path, content in spec.context)
    if spec.kind == "edit":
        prompt = (f"{context}{spec.prefix}\n# Rewrite the code below: {spec.instruction}\n{spec.code}\n"
                  f"# Rewritten:\n")
        suffix = ""
    else:
        prompt, suffix = context + spec.prefix, spec.suffix
    body = {"model": model, "max_tokens": spec.max_tokens, "temperature": spec.temperature, "seed": spec.seed,
            "stream": True, "stream_options": {"include_usage": True}}
    family = fim_family(fim_template, model)
    if family == "suffix" or not suffix:
        body["prompt"] = prompt
        if suffix:
            body["suffix"] = suffix
    else:
        body["prompt"] = fim_prompt(family, prompt, suffix)
    return body


class OpenAITarget(Target):
    def __init__(self, config, clock: Clock):
        self.config, self.clock = config, clock
        self.info: dict = {"protocol": "openai", "address": config.address, "model": config.model}
        self.url = config.address.rstrip("/") + "/v1/completions"
        if "://" not in self.url:
            self.url = "http://" + self.url

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s, connect=self.config.connect_timeout_s)
        self.http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        served, owner = await self._served_model()
        self.model = self.config.model or served
        self.info["model"] = self.model
        # flint's own door takes `suffix` and lays out FIM itself (it never parses template tokens in user text)
        template = "suffix" if owner == "flint" and self.config.fim_template == "auto" else self.config.fim_template
        self.fim_template = template
        self.info["fim_template"] = fim_family(template, self.model)

    async def _served_model(self) -> tuple[str, str]:
        """(id, owned_by) of the first model of GET /v1/models (vLLM and SGLang reject a request without the
        served name); ("", "") when the server does not say."""
        with contextlib.suppress(aiohttp.ClientError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            async with self.http.get(self.url.rsplit("/v1/", 1)[0] + "/v1/models") as response:
                if response.status == 200:
                    model = (await response.json(content_type=None))["data"][0]
                    return model["id"], model.get("owned_by", "")
        return "", ""

    async def open_session(self, job_index: int) -> "OpenAISession":
        return OpenAISession(self)

    async def close(self) -> None:
        if getattr(self, "http", None) is not None:
            await self.http.close()


class OpenAISession(Session):
    def __init__(self, target: OpenAITarget):
        self.target, self.clock = target, target.clock
        self.tasks: dict[str, tuple[RequestState, asyncio.Task]] = {}

    async def send(self, state: RequestState, redirect_of: RequestState | None = None) -> None:
        if redirect_of is not None:
            await self.interrupt(redirect_of)
            redirect_of.record.interrupt_mode = "redirect"
        body = request_body(state.spec, self.target.model, self.target.fim_template)
        state.record.t_sent_ms = self.clock()
        self.tasks[state.record.id] = (state, asyncio.create_task(self._stream(state, body)))

    async def interrupt(self, state: RequestState) -> None:
        entry = self.tasks.get(state.record.id)
        if entry is None or state.done.is_set():
            return
        state.mark_interrupt("close")
        entry[1].cancel()
        with contextlib.suppress(BaseException):
            await entry[1]

    async def _stream(self, state: RequestState, body: dict) -> None:
        seq = 0
        try:
            async with self.target.http.post(self.target.url, json=body) as response:
                if response.status != 200:
                    text = (await response.text())[:300]
                    state.finish("error", error_code=f"HTTP_{response.status}", error_message=text)
                    return
                state.accepted()
                reason = "closed"
                async for raw in response.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        state.record.prompt_tokens = chunk["usage"].get("prompt_tokens")
                        state.record.completion_tokens = chunk["usage"].get("completion_tokens")
                    for choice in chunk.get("choices") or ():
                        if choice.get("text"):
                            seq += 1
                            state.delta(seq, 1)
                            # let a self-interrupt this delta triggered close the stream before the next
                            # buffered chunk is read (buffered chunks would otherwise all count)
                            await asyncio.sleep(0)
                        reason = choice.get("finish_reason") or reason
                state.finish(reason)
        except asyncio.CancelledError:
            state.finish("interrupted" if state.record.t_interrupt_ms is not None else "closed",
                         error_code="" if state.record.t_interrupt_ms is not None else "ABANDONED")
            raise
        except asyncio.TimeoutError:
            state.finish("error", error_code="TIMEOUT", error_message="no end of stream within request_timeout_s")
        except (aiohttp.ClientError, json.JSONDecodeError, OSError) as exc:
            state.finish("error", error_code=type(exc).__name__, error_message=str(exc))

    async def close(self) -> None:
        for state, task in list(self.tasks.values()):
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.tasks.clear()
