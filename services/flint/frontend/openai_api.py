"""OpenAI's completions API <-> flint: request bodies to flint.v1 requests, front-end events to responses.

Only translation lives here. The request itself runs exactly as a gRPC one does: the HTTP door hands the
flint.v1 message to `FlintServicer.start_request` (validation, routing, admission, Redis records, journal)
and renders the `RequestOwner`'s events (flint.frontend.events) as OpenAI JSON or SSE chunks.

/v1/completions: `prompt` is the text before the cursor, `suffix` the text after it; the engine lays them
out with the model family's FIM template (flint.engine.fim). /v1/chat/completions carries an edit: the last
user message is the instruction, with the code to rewrite in a fenced block (```...```).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from flint.engine.types import FinishReason
from flint.errors import FlintError, InvalidArgument
from flint.frontend import events as ev
from flint.v1 import flint_pb2 as pb

# OpenAI fields flint does not implement: accepted only at their no-op value.
_UNSUPPORTED = {"logprobs": (None, 0, False), "echo": (None, False), "best_of": (None, 1), "logit_bias": (None, {}),
                "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "tools": (None, []),
                "top_logprobs": (None, 0), "response_format": (None, {"type": "text"})}
_FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
           FinishReason.INTERRUPTED: "stop", FinishReason.TIME_LIMIT: "length"}
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.S)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": _ERROR_TYPE.get(status, "server_error"), "param": param,
                      "code": code}}


def error_of(exc: FlintError) -> tuple[int, dict]:
    """HTTP status and OpenAI error body of a flint error (the gRPC status name goes in `code`)."""
    from flint.grpc_status import as_flint_error, status_code

    exc = as_flint_error(exc)  # the client's view: no addresses or credentials, its own request ids
    name = status_code(exc).name
    status = _HTTP_STATUS.get(name, 500)
    return status, error_body(status, exc.message, code=name.lower())


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "a boolean",
                              list: "an array", dict: "an object"}[k] for k in kinds)
        raise InvalidArgument(f"`{name}` must be {wanted}, got {json.dumps(value)[:60]}")
    return value


def _common(body: dict) -> tuple[pb.Sampling, str, bool, bool]:
    """Sampling, model, stream and include_usage shared by both endpoints; refuses what flint lacks."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    n = _get(body, "n", (int,), 1)
    if n != 1:
        raise InvalidArgument(f"`n` must be 1 (one completion per request), got {n}")
    for name, allowed in _UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            raise InvalidArgument(f"`{name}` is not supported by flint; leave it out")
    sampling = pb.Sampling()
    for name, kinds in (("temperature", (int, float)), ("top_p", (int, float))):
        value = _get(body, name, kinds)
        if value is not None:
            setattr(sampling, name, float(value))
    max_tokens = _get(body, "max_tokens", (int,))
    if max_tokens is None:
        max_tokens = _get(body, "max_completion_tokens", (int,))
    if max_tokens is not None:
        if max_tokens < 1:
            raise InvalidArgument(f"`max_tokens` must be >= 1, got {max_tokens}")
        sampling.max_tokens = max_tokens
    seed = _get(body, "seed", (int,))
    if seed is not None:
        if seed < 0:
            raise InvalidArgument(f"`seed` must be >= 0, got {seed}")
        sampling.seed = seed
    stop = _get(body, "stop", (str, list))
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(s, str) for s in stops):
            raise InvalidArgument("`stop` must be a string or an array of strings")
        sampling.stop.extend(stops)
    stream = _get(body, "stream", (bool,), False)
    options = _get(body, "stream_options", (dict,), {})
    if options and not stream:
        raise InvalidArgument("`stream_options` is only allowed with `stream: true`")
    include_usage = bool(_get(options, "include_usage", (bool,), False))
    return sampling, _get(body, "model", (str,), ""), stream, include_usage


def completion_request(body: dict) -> tuple[pb.CompleteRequest, bool, bool]:
    """(flint.v1 CompleteRequest, stream, include_usage) from a /v1/completions body."""
    sampling, model, stream, include_usage = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidArgument("`prompt` must be a string (one prompt per request; token-id prompts are not "
                              "supported)")
    suffix = _get(body, "suffix", (str,), "")
    return pb.CompleteRequest(prefix=prompt, suffix=suffix, sampling=sampling, model=model), stream, include_usage


def chat_edit_request(body: dict) -> tuple[pb.EditRequest, bool, bool]:
    """(flint.v1 EditRequest, stream, include_usage) from a /v1/chat/completions body.

    The last user message holds the instruction and the code to rewrite in a fenced block; system
    messages are ignored (flint's edit template has its own).
    """
    sampling, model, stream, include_usage = _common(body)
    messages = _get(body, "messages", (list,), [])
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise InvalidArgument("`messages` must end with a user message whose content is a string: the edit "
                              "instruction and the code to rewrite in a ``` fenced block")
    content = users[-1]["content"]
    fence = _FENCE.search(content)
    if fence is None:
        raise InvalidArgument("the user message has no ``` fenced code block: put the code to rewrite in one, "
                              "and the instruction around it")
    instruction = (content[:fence.start()] + content[fence.end():]).strip()
    if not instruction:
        raise InvalidArgument("the user message has code but no instruction: say what to change")
    request = pb.EditRequest(code=fence.group(1), instruction=instruction, sampling=sampling, model=model)
    return request, stream, include_usage


class Renderer:
    """One request's events as OpenAI objects: `chunk(event)` for SSE, `response(events)` for JSON."""

    def __init__(self, *, chat: bool, model: str, include_usage: bool):
        self.chat, self.model, self.include_usage = chat, model, include_usage
        self.created = int(time.time())
        self.id = ""
        self._role_sent = False

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def _choice(self, text: str, finish_reason: str | None) -> dict:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    def _chunk_choice(self, text: str, finish_reason: str | None) -> dict:
        if not self.chat:
            return self._choice(text, finish_reason)
        delta: dict = {"content": text} if text else {}
        if not self._role_sent:
            delta, self._role_sent = {"role": "assistant", **delta}, True
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _object(self, choices: list, usage: dict | None = None, *, chunk: bool) -> dict:
        obj = {"id": self.id, "object": self.object + (".chunk" if chunk and self.chat else ""),
               "created": self.created, "model": self.model, "choices": choices}
        if usage is not None or (chunk and self.include_usage):
            obj["usage"] = usage
        return obj

    def accepted(self, event: ev.Accepted) -> None:
        from flint.frontend.validate import public_request_id  # the client never sees the tenant scoping

        self.id = ("chatcmpl-" if self.chat else "cmpl-") + public_request_id(event.request_id)

    def chunks(self, event: ev.Event) -> list[dict]:
        """The SSE chunks an event becomes (none for Accepted)."""
        if isinstance(event, ev.Accepted):
            self.accepted(event)
            return []
        if isinstance(event, ev.Delta):
            return [self._object([self._chunk_choice(event.text, None)], chunk=True)] if event.text else []
        if isinstance(event, ev.Final):
            out = [self._object([self._chunk_choice("", _FINISH.get(event.finish_reason, "stop"))], chunk=True)]
            if self.include_usage:   # OpenAI: one last chunk with empty choices and the usage
                out.append(self._object([], usage(event), chunk=True))
            return out
        return []

    def response(self, events: list[ev.Event]) -> dict:
        """The non-streaming response of a finished request."""
        text, final = "", None
        for event in events:
            if isinstance(event, ev.Accepted):
                self.accepted(event)
            elif isinstance(event, ev.Delta):
                text += event.text
            elif isinstance(event, ev.Final):
                final = event
        assert final is not None
        return self._object([self._choice(text, _FINISH.get(final.finish_reason, "stop"))], usage(final),
                            chunk=False)


def usage(final: ev.Final) -> dict:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": final.cached_prompt_tokens}}
