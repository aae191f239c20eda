"""Turning sampled token ids into stream events: detokenize, stop, coalesce.

One `Delta` per request per step at most (all tokens the step produced,
including accepted draft tokens); text is held back only as long as the
detokenizer needs (an unfinished UTF-8 character, a possible stop-string
prefix). A request ends in the step that produced its EOS, stop string or
last allowed token: no extra step is spent to find out.
"""

from __future__ import annotations

from flint.engine.detokenizer import IncrementalDetokenizer
from flint.engine.request import Request
from flint.engine.types import Delta, Final, FinishReason, Timings


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def start(self, req: Request) -> None:
        req.detok = IncrementalDetokenizer(self.tokenizer, stop=req.stop_strings,
                                           context_ids=req.prompt_ids[-6:].tolist())

    def accept(self, req: Request, new_tokens: list[int]) -> tuple[Delta | None, FinishReason | None]:
        """Append tokens up to the first end condition; returns this step's delta and finish reason."""
        if len(new_tokens) == 1:                 # a decode step's one token: the same rules, no lists
            return self._accept_one(req, new_tokens[0])
        reason = None
        kept: list[int] = []
        text = []
        room = req.max_tokens - req.num_output
        stop_ids = req.stop_token_ids
        for t in new_tokens:
            if t in stop_ids:
                reason = FinishReason.EOS
                break
            kept.append(t)
            text.append(req.detok.add(t))
            if req.detok.stopped:
                reason = FinishReason.STOP
                break
            if len(kept) >= room:
                reason = FinishReason.LENGTH
                break
        if kept:
            req.append(kept)
        req.pending_tokens += len(kept)
        if reason is not None:
            text.append(req.detok.flush())
        return self._delta(req, "".join(text)), reason

    def _accept_one(self, req: Request, token: int) -> tuple[Delta | None, FinishReason | None]:
        detok = req.detok
        if token in req.stop_token_ids:
            return self._delta(req, detok.flush()), FinishReason.EOS
        text = detok.add(token)
        if detok.stopped:
            reason = FinishReason.STOP
        elif req.max_tokens - req.num_output <= 1:
            reason = FinishReason.LENGTH
        else:
            reason = None
        req.append((token,))
        req.pending_tokens += 1
        if reason is not None:
            text += detok.flush()
        return self._delta(req, text), reason

    def _delta(self, req: Request, text: str) -> Delta | None:
        if not text:
            return None
        delta = Delta(req.request_id, req.take_seq(), text, req.pending_tokens)
        req.pending_tokens = 0
        return delta

    @staticmethod
    def final(req: Request, reason: FinishReason, now: float) -> Final:
        arrival = req.arrival_mono
        scheduled = req.scheduled_at or now
        first = req.first_token_at
        timings = Timings(
            queue_ms=(scheduled - arrival) * 1e3,
            prefill_ms=((req.prefill_done_at or now) - scheduled) * 1e3,
            first_token_ms=(first - arrival) * 1e3 if first else 0.0,
            decode_ms=(now - first) * 1e3 if first else 0.0,
            total_ms=(now - arrival) * 1e3,
        )
        return Final(
            request_id=req.request_id,
            seq=req.take_seq(),
            finish_reason=reason,
            prompt_tokens=req.prompt_len,
            completion_tokens=req.num_output,
            cached_prompt_tokens=req.num_cached_prompt,
            timings=timings,
            draft_tokens=req.draft_tokens,
            accepted_draft_tokens=req.accepted_draft_tokens,
            # Tokens whose text was never sent: it was empty (special tokens), cut by an abort or a time limit,
            # or a stop string. The deltas' token counts plus these are completion_tokens, exactly.
            withheld_tokens=req.pending_tokens,
        )
