"""Public requests -> internal engine requests, validated at the front-end edge.

Each check names the field, the allowed range and what to change, so bad
input ends in an INVALID_ARGUMENT a user can act on. Checks that need the
model (prompt length) happen in the engine and come back the same way.
"""

from __future__ import annotations

import math
import re
import secrets
import time

from flint.errors import InvalidArgument
from flint.internal.v1 import engine_pb2 as ipb
from flint.v1 import flint_pb2 as pb

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256


def new_id(prefix: str) -> str:
    """An unguessable id (128 random bits) that passes the client-chosen id pattern."""
    return f"{prefix}-{secrets.token_urlsafe(16)}"


def check_request_id(request_id: str, *, field: str = "request_id") -> str:
    if not REQUEST_ID.match(request_id):
        raise InvalidArgument(f"{field} {request_id[:140]!r} is not valid: use 1-128 characters of "
                              "[A-Za-z0-9._:-], or leave it empty to get a server-generated id")
    return request_id


def request_id_of(msg: pb.CompleteRequest | pb.EditRequest, tenant: str = "") -> str:
    """The request's internal id: the client's (or a new) id, scoped to `tenant`."""
    return scope_request_id(check_request_id(msg.request_id) if msg.request_id else new_id("r"), tenant)


def scope_request_id(request_id: str, tenant: str) -> str:
    """The id flint uses inside (Redis keys, journal, engine) for a client's id: one namespace per tenant, so
    a tenant can neither find out nor collide with another tenant's ids. Ids stay as sent without auth."""
    return f"{tenant}/{request_id}" if tenant else request_id


def public_request_id(request_id: str) -> str:
    """The id the client sent (or was given) for an internal id (client ids never contain '/')."""
    return request_id.rsplit("/", 1)[-1]


def _sampling(s: pb.Sampling, max_context_tokens: int) -> ipb.SamplingParams:
    out = ipb.SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_time_ms=s.max_time_ms)
    if s.HasField("temperature"):
        if not (math.isfinite(s.temperature) and 0.0 <= s.temperature <= 2.0):
            raise InvalidArgument(f"sampling.temperature must be in [0, 2] (0 = greedy), got {s.temperature}")
        out.temperature = s.temperature
    if s.HasField("top_p"):
        if not (math.isfinite(s.top_p) and 0.0 < s.top_p <= 1.0):
            raise InvalidArgument(f"sampling.top_p must be in (0, 1] (1 = off), got {s.top_p}")
        out.top_p = s.top_p
    if s.HasField("top_k"):
        if s.top_k < 0:
            raise InvalidArgument(f"sampling.top_k must be >= 0 (0 = off), got {s.top_k}")
        out.top_k = s.top_k
    if s.HasField("seed"):
        out.has_seed, out.seed = True, s.seed
    if s.HasField("max_tokens"):
        if not 1 <= s.max_tokens <= max_context_tokens:
            raise InvalidArgument(f"sampling.max_tokens must be in [1, {max_context_tokens}] (the model's "
                                  f"context), got {s.max_tokens}")
        out.max_tokens = s.max_tokens
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"sampling.stop has {len(s.stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
    for stop in s.stop:
        if not stop or len(stop.encode()) > MAX_STOP_BYTES:
            raise InvalidArgument(f"each sampling.stop string must be 1-{MAX_STOP_BYTES} bytes, "
                                  f"got one of {len(stop.encode())} bytes")
    out.stop.extend(s.stop)
    return out


def _context(files) -> list[ipb.ContextFile]:
    return [ipb.ContextFile(path=f.path, content=f.content) for f in files]


def to_engine_request(msg: pb.CompleteRequest | pb.EditRequest, *, request_id: str,
                      max_context_tokens: int, arrival_unix_s: float | None = None) -> ipb.GenerateRequest:
    """The internal request for a validated public Complete/Edit request."""
    out = ipb.GenerateRequest(
        request_id=request_id, prefix=msg.prefix, suffix=msg.suffix, path=msg.path,
        context=_context(msg.context), sampling=_sampling(msg.sampling, max_context_tokens),
        bulk=msg.priority == pb.PRIORITY_BULK, arrival_unix_s=arrival_unix_s or time.time(),
    )
    if isinstance(msg, pb.EditRequest):
        if not msg.instruction.strip():
            raise InvalidArgument("edit.instruction is empty: say what to change in the code region")
        out.kind = ipb.GenerateRequest.EDIT
        out.code, out.instruction = msg.code, msg.instruction
    else:
        out.kind = ipb.GenerateRequest.COMPLETE
    return out
