"""The msgpack records flint keeps in Redis: what `pack_record` writes, `unpack_record` reads back."""

import dataclasses

import msgpack
import pytest

from flint.frontend.store import RequestRecord, SessionRecord
from flint.records import pack_record, unpack_record
from flint.replica.registry import ReplicaInfo

RECORDS = [
    RequestRecord(request_id="r-1", owner="w-1", state="finished", last_seq=7, session_id="s", replica_id="a",
                  created_unix_s=1.5, tenant="t"),
    SessionRecord(session_id="s-1", model="m", client="c", replica_id="a", created_unix_s=2.0, tenant="t"),
    ReplicaInfo(replica_id="a", address="127.0.0.1:1", model="m", max_context_tokens=64),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_packed_record_is_the_map_of_its_fields_and_reads_back_equal(record):
    data = pack_record(record)
    assert msgpack.unpackb(data) == dataclasses.asdict(record)
    assert unpack_record(type(record), data, where="test") == record


def test_records_of_two_classes_are_packed_by_their_own_fields():
    request, session = RECORDS[0], RECORDS[1]
    assert set(msgpack.unpackb(pack_record(session))) == {f.name for f in dataclasses.fields(SessionRecord)}
    assert set(msgpack.unpackb(pack_record(request))) == {f.name for f in dataclasses.fields(RequestRecord)}
