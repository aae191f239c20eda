"""The committed protobuf stubs match protos/."""

from flint.tools import genproto


def test_generated_stubs_are_fresh():
    assert genproto.stale_files() == [], "run `python -m flint.tools.genproto` and commit the result"


def test_public_api_exposes_session_complete_interrupt_resume():
    from flint.v1 import flint_pb2

    methods = {m.name for m in flint_pb2.DESCRIPTOR.services_by_name["Flint"].methods}
    assert {"Session", "Complete", "Edit", "Interrupt", "Resume"} <= methods
