"""A small async client for flint.v1.Flint, used by `flint complete` and `flint edit`.

It opens one channel, streams one request per call and turns gRPC statuses
into flint exceptions (`flint.errors`), so callers handle one error family.
Resume, retries and deadlines come later in this module.
"""

from __future__ import annotations

from typing import AsyncIterator, Iterable

import grpc

from flint.grpc_status import from_rpc_error
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


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


class FlintClient:
    """`async with FlintClient(address) as client: async for msg in client.complete(...)`."""

    def __init__(self, address: str = DEFAULT_ADDRESS):
        self.address = address
        self._channel = grpc.aio.insecure_channel(address)
        self.stub = flint_pb2_grpc.FlintStub(self._channel)

    async def __aenter__(self) -> "FlintClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def complete(self, prefix: str, suffix: str = "", *, path: str = "", context=(), model: str = "",
                       request_id: str = "", sampling_params: pb.Sampling | None = None,
                       timeout_s: float | None = None) -> AsyncIterator[pb.ServerMessage]:
        """Stream `accepted`, `delta`s and `final` of one completion; errors raise flint exceptions."""
        request = pb.CompleteRequest(request_id=request_id, prefix=prefix, suffix=suffix, path=path,
                                     context=context_files(context), model=model, sampling=sampling_params)
        async for message in self._stream(self.stub.Complete, request, timeout_s):
            yield message

    async def edit(self, code: str, instruction: str, *, prefix: str = "", suffix: str = "", path: str = "",
                   context=(), model: str = "", request_id: str = "", sampling_params: pb.Sampling | None = None,
                   timeout_s: float | None = None) -> AsyncIterator[pb.ServerMessage]:
        """Stream the replacement of `code` following `instruction`."""
        request = pb.EditRequest(request_id=request_id, code=code, instruction=instruction, prefix=prefix,
                                 suffix=suffix, path=path, context=context_files(context), model=model,
                                 sampling=sampling_params)
        async for message in self._stream(self.stub.Edit, request, timeout_s):
            yield message

    async def interrupt(self, request_id: str, timeout_s: float | None = 10.0) -> pb.InterruptResponse:
        try:
            return await self.stub.Interrupt(pb.InterruptRequest(request_id=request_id), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, peer=self.address) from None

    async def _stream(self, method, request, timeout_s: float | None):
        call = method(request, timeout=timeout_s)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, peer=self.address) from None
        finally:
            call.cancel()  # a caller that stops early frees the server's engine slot
