"""`flint.client`: the client library for services and editors consuming flint streams.

    async with FlintClient(["10.0.0.1:50051", "10.0.0.2:50051"], api_key=KEY) as client:
        async for message in client.complete("def add(a, b):", max_tokens=64):
            ...                                   # accepted, delta..., final

    with SyncFlintClient("127.0.0.1:50051") as client:
        text = client.complete_text("def add(a, b):")

What it adds over the raw stubs:
  * automatic resume: every request gets an id up front; when the stream
    breaks (front-end worker gone, engine replica gone: UNAVAILABLE), the
    client calls Resume(request id, last seq) on the next address and drops
    any delta it already has, so each seq arrives exactly once;
  * retries with exponential backoff and jitter on UNAVAILABLE and
    RESOURCE_EXHAUSTED, never sooner than the server's retry delay;
  * one deadline (`timeout_s`) for the whole request, retries included;
  * gRPC statuses raised as `flint.errors` exceptions, one error family;
  * API key (`authorization: Bearer ...`) and TLS / mTLS channel settings.
`client.interrupt(request_id)` stops a request from anywhere; interrupt and
redirect within one Session stream go through `client.session()`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Sequence

import grpc

from flint.errors import DeadlineExceeded, FlintError, Internal, InvalidArgument, Unavailable
from flint.grpc_status import from_rpc_error
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"

log = logging.getLogger(__name__)


def sampling(*, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
             seed: int | None = None, max_tokens: int | None = None, stop: Iterable[str] = (),
             max_time_ms: int = 0) -> pb.Sampling:
    """A Sampling message with only the given fields set (the rest take server defaults)."""
    fields = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed, "max_tokens": max_tokens}
    msg = pb.Sampling(stop=list(stop), max_time_ms=max_time_ms)
    for name, value in fields.items():
        if value is not None:
            setattr(msg, name, value)
    return msg


def context_files(files: Iterable[tuple[str, str]]) -> list[pb.ContextFile]:
    return [pb.ContextFile(path=path, content=content) for path, content in files]


def new_request_id() -> str:
    """An unguessable client-side request id: known before the first byte is sent, so resume always works."""
    return f"c-{secrets.token_urlsafe(16)}"


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retryable failures: attempt n waits min(max, initial * multiplier**n) * jitter(0.5-1]."""

    max_attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise InvalidArgument("RetryPolicy needs max_attempts >= 1 and 0 <= initial_backoff_s <= max_backoff_s")

    def delay_s(self, attempt: int, retry_after_ms: int = 0) -> float:
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** attempt)
        return max(backoff * random.uniform(0.5, 1.0), retry_after_ms / 1000.0)


@dataclass(frozen=True)
class ClientTLS:
    """TLS for the channel: the CA that signed the server's certificate; a client cert/key pair for mTLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name_override: str = ""   # when the certificate's name differs from the address (tests)


class FlintClient:
    """Async client over one or more front-end addresses (failover rotates through them)."""

    def __init__(self, addresses: str | Sequence[str] = DEFAULT_ADDRESS, *, api_key: str = "",
                 tls: ClientTLS | None = None, retry: RetryPolicy | None = None, resume: bool = True,
                 allow_plaintext_key: bool = False):
        self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not self.addresses:
            raise InvalidArgument("FlintClient needs at least one address host:port")
        if api_key and tls is None:
            _check_plaintext_key(self.addresses, allow_plaintext_key)
        self.retry = retry or RetryPolicy()
        self.resume_enabled = resume
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channels = [self._channel(a, tls) for a in self.addresses]
        self._current = 0
        self.resumes = 0       # streams continued with Resume after a break (for callers' statistics)
        self.retries = 0

    @staticmethod
    def _channel(address: str, tls: ClientTLS | None) -> grpc.aio.Channel:
        if tls is None:
            return grpc.aio.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
        options = [("grpc.ssl_target_name_override", tls.server_name_override)] if tls.server_name_override else []
        return grpc.aio.secure_channel(address, credentials, options=options)

    @property
    def address(self) -> str:
        return self.addresses[self._current]

    @property
    def stub(self) -> flint_pb2_grpc.FlintStub:
        return flint_pb2_grpc.FlintStub(self._channels[self._current])

    def _fail_over(self) -> None:
        self._current = (self._current + 1) % len(self._channels)

    async def __aenter__(self) -> "FlintClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    # ------------------------------------------------------------ requests
    async def complete(self, prefix: str, suffix: str = "", *, path: str = "", context=(), model: str = "",
                       request_id: str = "", sampling_params: pb.Sampling | None = None,
                       priority: int = pb.PRIORITY_INTERACTIVE, timeout_s: float | None = None,
                       **sampling_kwargs) -> AsyncIterator[pb.ServerMessage]:
        """Stream `accepted`, `delta`s (each seq once) and `final` of a completion; errors raise flint exceptions."""
        request = pb.CompleteRequest(request_id=request_id, prefix=prefix, suffix=suffix, path=path,
                                     context=context_files(context), model=model, priority=priority,
                                     sampling=sampling_params or sampling(**sampling_kwargs))
        async for message in self.stream(request, timeout_s=timeout_s):
            yield message

    async def edit(self, code: str, instruction: str, *, prefix: str = "", suffix: str = "", path: str = "",
                   context=(), model: str = "", request_id: str = "", sampling_params: pb.Sampling | None = None,
                   priority: int = pb.PRIORITY_INTERACTIVE, timeout_s: float | None = None,
                   **sampling_kwargs) -> AsyncIterator[pb.ServerMessage]:
        """Stream the replacement of `code` following `instruction`."""
        request = pb.EditRequest(request_id=request_id, code=code, instruction=instruction, prefix=prefix,
                                 suffix=suffix, path=path, context=context_files(context), model=model,
                                 priority=priority, sampling=sampling_params or sampling(**sampling_kwargs))
        async for message in self.stream(request, timeout_s=timeout_s):
            yield message

    async def complete_text(self, prefix: str, suffix: str = "", **kwargs) -> str:
        return "".join([m.delta.text async for m in self.complete(prefix, suffix, **kwargs)
                        if m.WhichOneof("kind") == "delta"])

    async def interrupt(self, request_id: str, timeout_s: float | None = 10.0) -> pb.InterruptResponse:
        """Stop a request from anywhere (any worker reaches its owner); retried like a stream."""
        request = pb.InterruptRequest(request_id=request_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            try:
                return await self.stub.Interrupt(request, timeout=_remaining(deadline), metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                attempt = await self._backoff_or_raise(err, attempt, deadline)

    async def resume(self, request_id: str, last_seq: int = 0,
                     timeout_s: float | None = None) -> AsyncIterator[pb.ServerMessage]:
        """Reattach to a request by id: every delta after `last_seq` once, then the live rest and the final."""
        tracker = _Tracker(request_id, last_seq=last_seq, accepted=True)
        async for message in self._follow(tracker, None, timeout_s):
            yield message

    def session(self, *, session_id: str = "", model: str = "", client_name: str = "flint.client"):
        """A Session stream: interleaved requests, interrupt, redirect (see `flint.client_session`)."""
        from flint.client_session import ClientSession

        return ClientSession(self, session_id=session_id, model=model, client_name=client_name)

    # ------------------------------------------------------------ the resume/retry loop
    async def stream(self, request: pb.CompleteRequest | pb.EditRequest, *,
                     timeout_s: float | None = None) -> AsyncIterator[pb.ServerMessage]:
        """Run one Complete/Edit request to its final, resuming and retrying as needed."""
        own_id = not request.request_id
        if own_id:
            request.request_id = new_request_id()
        tracker = _Tracker(request.request_id, own_id=own_id)
        async for message in self._follow(tracker, request, timeout_s):
            yield message

    async def _follow(self, tracker: "_Tracker", request, timeout_s: float | None):
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            if tracker.accepted:
                if not self.resume_enabled and request is not None:
                    raise Unavailable(f"the stream of request {tracker.request_id!r} broke and resume is off")
                call = self.stub.Resume(pb.ResumeRequest(request_id=tracker.request_id, last_seq=tracker.last_seq),
                                        timeout=_remaining(deadline), metadata=self._metadata)
            else:
                method = self.stub.Edit if isinstance(request, pb.EditRequest) else self.stub.Complete
                call = method(request, timeout=_remaining(deadline), metadata=self._metadata)
            try:
                async for message in call:
                    if tracker.accept(message):
                        yield message
                    if tracker.done:
                        return
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None,
                                           details="stream ended before its final message")
            except grpc.aio.AioRpcError as err:
                attempt = await self._backoff_or_raise(err, attempt, deadline)
                if tracker.accepted:
                    self.resumes += 1
                elif tracker.own_id:  # never accepted: send again under a fresh id (the old one may be held)
                    request.request_id = tracker.request_id = new_request_id()
            finally:
                call.cancel()  # a caller that stops early frees the server's engine slot

    async def _backoff_or_raise(self, err: grpc.aio.AioRpcError, attempt: int, deadline: float | None) -> int:
        """Sleep before the next attempt (on the next address) or raise the flint error."""
        error = from_rpc_error(err, peer=self.address)
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DeadlineExceeded(f"deadline passed waiting for {self.address}: {err.details()}") from None
        if not error.retryable or attempt + 1 >= self.retry.max_attempts:
            raise error from None
        delay_s = self.retry.delay_s(attempt, error.retry_after_ms)
        if deadline is not None and time.monotonic() + delay_s >= deadline:
            raise DeadlineExceeded(f"deadline passes before the next retry ({error.message})") from None
        self.retries += 1
        self._fail_over()
        await asyncio.sleep(delay_s)
        return attempt + 1


def _check_plaintext_key(addresses: list[str], allowed: bool) -> None:
    """An API key over a plaintext channel: refused off loopback unless allowed; always a loud warning."""
    from flint.addresses import is_loopback

    remote = [a for a in addresses if not is_loopback(a)]
    if remote and not allowed:
        raise InvalidArgument(f"refusing to send the API key in plaintext to {', '.join(remote)}: pass tls=ClientTLS(...), "
                              "or allow_plaintext_key=True (FLINT_ALLOW_PLAINTEXT_KEY=1 for `flint complete`) when "
                              "the network is trusted")
    log.warning("SECURITY: the API key is sent in plaintext (no TLS) to %s", ", ".join(addresses))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed")
    return left


class _Tracker:
    """Per-request bookkeeping: which seqs the caller already has (exactly once across resumes)."""

    def __init__(self, request_id: str, *, last_seq: int = 0, accepted: bool = False, own_id: bool = False):
        self.request_id = request_id
        self.last_seq = last_seq
        self.accepted = accepted
        self.own_id = own_id
        self._accepted_yielded = accepted
        self.done = False

    def accept(self, message: pb.ServerMessage) -> bool:
        """True when the caller should see `message` (drops deltas it already has)."""
        kind = message.WhichOneof("kind")
        if kind == "accepted":
            self.accepted = True
            if self._accepted_yielded:
                return False
            self._accepted_yielded = True
            return True
        if kind == "delta":
            seq = message.delta.seq
            if seq <= self.last_seq:
                return False
            if seq != self.last_seq + 1:
                raise Internal(f"request {self.request_id!r}: got seq {seq} after {self.last_seq} (a gap)")
            self.last_seq = seq
            return True
        if kind == "final":
            self.done = True
        if kind == "error":  # a per-request error carried in a message (Session streams)
            from flint.grpc_status import error_of

            raise error_of(message.error)
        return True


class SyncFlintClient:
    """The same client for synchronous code: a private event loop thread runs the async one."""

    def __init__(self, addresses: str | Sequence[str] = DEFAULT_ADDRESS, **kwargs):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flint-client", daemon=True)
        self._thread.start()
        self._client: FlintClient = self._call(_make_client(addresses, kwargs))

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> "SyncFlintClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _iterate(self, agen):
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())

    def complete(self, prefix: str, suffix: str = "", **kwargs):
        """Iterator of the completion's ServerMessages (same arguments as FlintClient.complete)."""
        return self._iterate(self._client.complete(prefix, suffix, **kwargs))

    def edit(self, code: str, instruction: str, **kwargs):
        return self._iterate(self._client.edit(code, instruction, **kwargs))

    def resume(self, request_id: str, last_seq: int = 0, **kwargs):
        return self._iterate(self._client.resume(request_id, last_seq, **kwargs))

    def complete_text(self, prefix: str, suffix: str = "", **kwargs) -> str:
        return self._call(self._client.complete_text(prefix, suffix, **kwargs))

    def interrupt(self, request_id: str, timeout_s: float | None = 10.0) -> pb.InterruptResponse:
        return self._call(self._client.interrupt(request_id, timeout_s))


async def _make_client(addresses, kwargs) -> FlintClient:
    return FlintClient(addresses, **kwargs)  # channels bind to the loop they are created on


__all__ = ["FlintClient", "SyncFlintClient", "RetryPolicy", "ClientTLS", "sampling", "context_files",
           "new_request_id", "FlintError"]
