"""Front-end events <-> flint.v1.ServerMessage: the gRPC edge's rendering, and the journal's format."""

from __future__ import annotations

from flint.frontend import events as ev
from flint.frontend.validate import public_request_id as public
from flint.grpc_status import as_flint_error, code_number, error_of, status_code
from flint.v1 import flint_pb2 as pb


def request_error(request_id: str, exc: BaseException, *, document_id: str = "") -> pb.ServerMessage:
    """A per-request (or per-document) error as a Session stream carries it (the stream stays open)."""
    error = as_flint_error(exc)
    return pb.ServerMessage(error=pb.RequestError(
        request_id=public(request_id), code=code_number(status_code(error)), message=error.message,
        retryable=error.retryable, retry_after_ms=error.retry_after_ms, document_id=document_id,
        document_version=getattr(error, "document_version", 0)))


def to_message(event: ev.Event) -> pb.ServerMessage:
    """The message a client receives: ids as the client knows them (tenant scoping is internal)."""
    if isinstance(event, ev.Delta):
        return pb.ServerMessage(delta=pb.Delta(request_id=public(event.request_id), seq=event.seq, text=event.text,
                                               token_count=event.token_count))
    if isinstance(event, ev.Accepted):
        return pb.ServerMessage(accepted=pb.Accepted(request_id=public(event.request_id),
                                                     prompt_tokens=event.prompt_tokens))
    if isinstance(event, ev.Final):
        t = event.timings
        return pb.ServerMessage(final=pb.Final(
            request_id=public(event.request_id), seq=event.seq, finish_reason=int(event.finish_reason),
            prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
            cached_prompt_tokens=event.cached_prompt_tokens, draft_tokens=event.draft_tokens,
            accepted_draft_tokens=event.accepted_draft_tokens, replica_id=event.replica_id,
            withheld_tokens=event.withheld_tokens, timings=pb.Timings(queue_ms=t.queue_ms, prefill_ms=t.prefill_ms, first_token_ms=t.first_token_ms,
                               decode_ms=t.decode_ms, total_ms=t.total_ms)))
    if isinstance(event, ev.Failed):
        return request_error(event.request_id, event.error)
    raise TypeError(f"not a front-end event: {event!r}")


def from_message(message: pb.ServerMessage) -> ev.Event | None:
    """The event a journaled message stands for (None for kinds the owner never emits)."""
    kind = message.WhichOneof("kind")
    if kind == "delta":
        d = message.delta
        return ev.Delta(d.request_id, d.seq, d.text, d.token_count)
    if kind == "accepted":
        return ev.Accepted(message.accepted.request_id, message.accepted.prompt_tokens)
    if kind == "final":
        f, t = message.final, message.final.timings
        return ev.Final(
            request_id=f.request_id, seq=f.seq, finish_reason=ev.FinishReason(f.finish_reason),
            prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
            cached_prompt_tokens=f.cached_prompt_tokens, draft_tokens=f.draft_tokens,
            accepted_draft_tokens=f.accepted_draft_tokens, replica_id=f.replica_id,
            withheld_tokens=f.withheld_tokens, timings=ev.Timings(t.queue_ms, t.prefill_ms, t.first_token_ms, t.decode_ms, t.total_ms))
    if kind == "error":
        return ev.Failed(message.error.request_id, error_of(message.error))
    return None
