"""Internal engine protobuf <-> engine dataclasses, at the replica's edge only."""

from __future__ import annotations

from flint.engine import types as t
from flint.internal.v1 import engine_pb2 as pb

_KINDS = {pb.GenerateRequest.COMPLETE: t.RequestKind.COMPLETE, pb.GenerateRequest.EDIT: t.RequestKind.EDIT}


def request_from_proto(msg: pb.GenerateRequest) -> t.GenerateRequest:
    s = msg.sampling
    sampling = t.SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p if s.top_p > 0 else 1.0,  # proto3 default 0 means "unset"
        top_k=s.top_k,
        seed=s.seed if s.has_seed else None,
        max_tokens=s.max_tokens,
        stop=tuple(s.stop),
        max_time_ms=s.max_time_ms,
    )
    return t.GenerateRequest(
        request_id=msg.request_id,
        kind=_KINDS[msg.kind],
        prefix=msg.prefix,
        suffix=msg.suffix,
        code=msg.code,
        instruction=msg.instruction,
        path=msg.path,
        context=tuple(t.ContextFile(path=c.path, content=c.content) for c in msg.context),
        sampling=sampling,
        bulk=msg.bulk,
        cache_namespace=msg.cache_namespace,
        arrival_unix_s=msg.arrival_unix_s,
    )


def event_to_proto(event: t.Event) -> pb.GenerateEvent:
    if isinstance(event, t.Delta):
        return pb.GenerateEvent(delta=pb.Delta(text=event.text, token_count=event.token_count))
    if isinstance(event, t.Started):
        return pb.GenerateEvent(started=pb.Started(prompt_tokens=event.prompt_tokens))
    tm = event.timings
    return pb.GenerateEvent(final=pb.Final(
        finish_reason=int(event.finish_reason),
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        cached_prompt_tokens=event.cached_prompt_tokens,
        queue_ms=tm.queue_ms,
        prefill_ms=tm.prefill_ms,
        first_token_ms=tm.first_token_ms,
        decode_ms=tm.decode_ms,
        total_ms=tm.total_ms,
        draft_tokens=event.draft_tokens,
        accepted_draft_tokens=event.accepted_draft_tokens,
        withheld_tokens=event.withheld_tokens,
    ))


def batch_to_protos(events: list[t.Event]) -> list[pb.GenerateEvent]:
    """Messages for events the engine queued together: consecutive deltas go out as one `Deltas` message."""
    out: list[pb.GenerateEvent] = []
    run: list[pb.Delta] = []
    for event in events:
        if isinstance(event, t.Delta):
            run.append(pb.Delta(text=event.text, token_count=event.token_count))
            continue
        _flush_deltas(run, out)
        out.append(event_to_proto(event))
    _flush_deltas(run, out)
    return out


def _flush_deltas(run: list[pb.Delta], out: list[pb.GenerateEvent]) -> None:
    if len(run) == 1:
        out.append(pb.GenerateEvent(delta=run[0]))
    elif run:
        out.append(pb.GenerateEvent(deltas=pb.Deltas(items=run)))
    run.clear()
