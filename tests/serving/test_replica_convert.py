"""The replica's edge: engine events queued together become as few messages as keep every delta whole."""

from flint.engine import types as t
from flint.replica.convert import batch_to_protos


def test_consecutive_deltas_go_out_as_one_deltas_message_keeping_each_delta():
    events = [t.Delta("r", 1, "ab", 2), t.Delta("r", 2, "c", 1), t.Delta("r", 3, "", 1)]
    [message] = batch_to_protos(events)
    assert message.WhichOneof("kind") == "deltas"
    assert [(d.text, d.token_count) for d in message.deltas.items] == [("ab", 2), ("c", 1), ("", 1)]


def test_a_lone_delta_and_the_other_events_keep_their_own_messages():
    final = t.Final("r", 3, t.FinishReason.LENGTH, 1, 2)
    kinds = [m.WhichOneof("kind") for m in batch_to_protos([t.Started("r", 4), t.Delta("r", 1, "a", 1), final])]
    assert kinds == ["started", "delta", "final"]
    kinds = [m.WhichOneof("kind") for m in batch_to_protos([t.Delta("r", 1, "a", 1), t.Delta("r", 2, "b", 1), final])]
    assert kinds == ["deltas", "final"]
