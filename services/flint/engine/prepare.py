"""GenerateRequest -> engine `Request`: validation, prompt template, tokenization.

Runs on the caller's thread (not the step loop), so a 131,072-token prompt's
tokenization never stalls other requests' decode steps. Every rejection is an
`InvalidArgument` whose message says what to change.
"""

from __future__ import annotations

import time

import numpy as np

from flint.engine.config import EngineConfig
from flint.engine.request import Request
from flint.engine.sampling import RequestSampler, validate_sampling
from flint.engine.types import GenerateRequest, RequestKind
from flint.errors import InvalidArgument, ResourceExhausted


class RequestBuilder:
    """Turns `GenerateRequest`s into engine `Request`s for one model."""

    def __init__(self, config: EngineConfig, tokenizer, prompt_fn, *, model_name: str, max_context_tokens: int,
                 kv_capacity_tokens: int):
        self.config = config
        self.tokenizer = tokenizer
        self.prompt_fn = prompt_fn            # GenerateRequest -> flint.engine.fim.Prompt
        self.eos_ids = frozenset(tokenizer.eos_token_ids)
        self.model_name = model_name
        self.max_context_tokens = max_context_tokens
        self.kv_capacity_tokens = kv_capacity_tokens

    def build(self, req: GenerateRequest) -> Request:
        wall, mono = time.time(), time.perf_counter()
        if not isinstance(req.request_id, str) or not req.request_id:
            raise InvalidArgument("request_id must be a non-empty string")
        validate_sampling(req.sampling)
        arrival_s = req.arrival_unix_s if req.arrival_unix_s > 0 else wall
        prompt = self.prompt_fn(req)
        ids = prompt.ids
        limit = self.max_context_tokens
        if len(ids) >= limit:
            raise InvalidArgument(
                f"prompt is {len(ids)} tokens; this model's context limit is {limit} tokens "
                f"(prompt + at least 1 generated token): shorten the prefix, suffix or context files"
            )
        edit = req.kind is RequestKind.EDIT
        room = limit - len(ids)
        if req.sampling.max_tokens > room:   # asked for: refused, never silently reduced
            raise InvalidArgument(
                f"max_tokens is {req.sampling.max_tokens} but this model's context of {limit} tokens leaves "
                f"{room} after the {len(ids)}-token prompt: set max_tokens to at most {room}, or shorten the prompt"
            )
        default = self.config.max_tokens_edit if edit else self.config.max_tokens_complete
        max_tokens = req.sampling.max_tokens or min(default, room)   # the default is capped by the context
        speculate = self.config.speculation == "all" or (self.config.speculation == "edit" and edit)
        lookahead = self.config.spec_draft_tokens if speculate else 0
        if len(ids) + max_tokens + lookahead > self.kv_capacity_tokens:
            raise ResourceExhausted(
                f"request needs KV for {len(ids) + max_tokens + lookahead} tokens but this replica's KV cache "
                f"holds {self.kv_capacity_tokens}: lower max_tokens or the prompt, or raise kv_cache_bytes"
            )
        return Request(
            request_id=req.request_id,
            prompt_ids=np.asarray(ids, dtype=np.int64),
            sampling=req.sampling,
            max_tokens=max_tokens,
            namespace=f"{self.model_name}\x00{req.cache_namespace}",
            interactive=not req.bulk,
            speculate=speculate,
            arrival_s=arrival_s,
            arrival_mono=mono - max(0.0, wall - arrival_s),
            seq_offset=req.seq_offset,
            lookahead=lookahead,
            stop_token_ids=self.eos_ids | prompt.stop_token_ids,
            stop_strings=tuple(dict.fromkeys((*req.sampling.stop, *prompt.stop_strings))),
            source=req,
            session_id=req.session_id,
            tenant=req.cache_namespace,
            sampler_state=None if req.sampling.greedy else RequestSampler(req.sampling),
        )
