"""Complete and Edit RPCs stream accepted, seq-ordered deltas and one final with timings."""

import pytest
from support.services import SEEDED, collect, delta_text, kinds

from flint.v1 import flint_pb2 as pb


def check_stream_shape(messages, request_id: str):
    assert kinds(messages)[0] == "accepted" and kinds(messages)[-1] == "final"
    assert set(kinds(messages)[1:-1]) <= {"delta"}
    deltas = [m.delta for m in messages[1:-1]]
    assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    assert all(d.request_id == request_id for d in deltas)
    final = messages[-1].final
    assert final.request_id == request_id and final.seq == len(deltas) + 1
    # Tokens that decode to no text (special tokens) are counted in the final only.
    assert final.completion_tokens >= sum(d.token_count for d in deltas)
    assert final.prompt_tokens == messages[0].accepted.prompt_tokens > 0
    assert final.timings.total_ms >= final.timings.first_token_ms > 0
    assert final.replica_id
    return final


async def test_complete_rpc_streams_fim_completion(flint_stub):
    request = pb.CompleteRequest(prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                                 sampling=pb.Sampling(max_tokens=40, **SEEDED))
    messages = await collect(flint_stub.Complete(request))
    assert "delta" in kinds(messages)
    request_id = messages[0].accepted.request_id
    assert request_id.startswith("r-") and len(request_id) > 20  # server-generated, unguessable
    final = check_stream_shape(messages, request_id)
    assert final.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS, pb.FINISH_REASON_STOP)
    assert final.completion_tokens <= 40


async def test_edit_rpc_streams_replacement(flint_stub):
    request = pb.EditRequest(request_id="edit-rpc-1", code="x = 1\ny = 2\n", instruction="rename x to total",
                             prefix="import os\n", suffix="print(y)\n", sampling=pb.Sampling(max_tokens=10))
    messages = await collect(flint_stub.Edit(request))
    assert "delta" in kinds(messages)
    assert check_stream_shape(messages, "edit-rpc-1").finish_reason == pb.FINISH_REASON_LENGTH


async def test_same_seed_gives_the_same_completion(flint_stub):
    request = pb.CompleteRequest(prefix="import sys\n\ndef main(", sampling=pb.Sampling(max_tokens=30, **SEEDED))
    first = delta_text(await collect(flint_stub.Complete(request)))
    second = delta_text(await collect(flint_stub.Complete(request)))
    assert first and first == second


@pytest.mark.parametrize("request_id", ["client-chosen.id:1", "a" * 128])
async def test_client_chosen_request_id_is_used(flint_stub, request_id):
    request = pb.CompleteRequest(request_id=request_id, prefix="x = ", sampling=pb.Sampling(max_tokens=2))
    messages = await collect(flint_stub.Complete(request))
    assert messages[0].accepted.request_id == request_id and messages[-1].final.request_id == request_id
