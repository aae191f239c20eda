"""The hostile tenant of `flint load soak --hostile`: bounded attacks on a loopback flint front-end.

Every action is bounded in count (HostileConfig) and in time (the attack deadline and per-call timeouts),
and only reaches 127.0.0.1. Each action returns its counts, its outcomes by gRPC status, and how many of
its calls reached the victim tenant (`cross_tenant`), by these checks:

- guessed_ids: the victim's request ids follow `flint load`'s pattern `g0-j{job}-s{step}`; for each guess
  an Interrupt that answers OK (the server found the victim's request: it may have stopped it), a Resume
  that streams any message (the victim's output), and a Complete under that id answered ALREADY_EXISTS
  (the victim's running id is confirmed) each count once.
- resume_flood: concurrent Resumes of guessed ids; one that streams any message counts.
- cache_probe: the victim sent a canary prompt first; the hostile tenant sends it (probe) and then again
  (control: its own cache). A probe whose Final.cached_prompt_tokens >= half its prompt tokens hit the
  victim's cache and counts.
- oversized prompts, unread streams and Session floods reach the victim only through its latency and its
  streams, which the soak measures on the victim's side.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from flint.errors import InvalidArgument
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


@dataclass(frozen=True)
class HostileConfig:
    oversized_prompts: int = 8
    oversized_prompt_bytes: int = 3 * 1024 * 1024     # above the default security.max_prompt_bytes (2 MiB)
    unread_streams: int = 32                          # Complete streams opened and never read
    session_flood: int = 300                          # Session streams opened (Open sent) and held
    guessed_ids: int = 40                             # victim ids guessed per sweep
    resume_flood: int = 200                           # concurrent Resumes of guessed ids
    hold_s: float = 4.0                               # unread streams and flooded sessions stay open this long
    call_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        counts = (self.oversized_prompts, self.unread_streams, self.session_flood, self.guessed_ids,
                  self.resume_flood)
        if min(counts) < 0 or max(counts) > 5000:
            raise InvalidArgument("hostile: every count must be in 0..5000 (the attack is bounded)")
        if not 1 <= self.oversized_prompt_bytes <= 12 * 1024 * 1024:
            raise InvalidArgument("hostile: oversized_prompt_bytes must be in 1..12 MiB")
        if not 0 < self.hold_s <= 60 or not 0 < self.call_timeout_s <= 60:
            raise InvalidArgument("hostile: hold_s and call_timeout_s must be in (0, 60] s")


# What gRPC's Python client reports for a write the server's status overtook (the server's status is lost).
OVERTAKEN_WRITE = "INTERNAL (the client's write was overtaken by the server's status)"


def _code(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() == grpc.StatusCode.INTERNAL and "SendMessageOperation" in (exc.debug_error_string() or ""):
            return OVERTAKEN_WRITE
        return exc.code().name
    if isinstance(exc, asyncio.TimeoutError):
        return "CLIENT_TIMEOUT"
    return type(exc).__name__


def _action() -> dict:
    return {"sent": 0, "outcomes": Counter(), "cross_tenant": 0}


class Attacker:
    def __init__(self, address: str, api_key: str, tls_ca: bytes | None, cfg: HostileConfig, users: int):
        from flint.addresses import is_loopback

        if not is_loopback(address):
            raise InvalidArgument(f"the hostile tenant only attacks this machine, not {address!r}")
        self.cfg, self.users = cfg, users
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
        if tls_ca is not None:
            options.append(("grpc.ssl_target_name_override", "localhost"))
            self.channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(tls_ca), options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = flint_pb2_grpc.FlintStub(self.channel)
        self.actions = {name: _action() for name in ("oversized_prompts", "unread_streams", "session_flood",
                                                     "guessed_ids", "resume_flood", "cache_probe")}
        self.probe: dict = {}

    async def close(self) -> None:
        await self.channel.close()

    def guesses(self, sweep: int) -> list[str]:
        """Victim ids by `flint load`'s pattern, from the recent steps of every job (running or finished)."""
        per_job = max(1, self.cfg.guessed_ids // max(1, self.users))
        return [f"g0-j{j}-s{s}" for j in range(self.users) for s in range(sweep * per_job, (sweep + 1) * per_job)]

    # ---------------------------------------------------------------- actions
    async def oversized(self) -> None:
        a = self.actions["oversized_prompts"]
        prompt = "x = 1\n" * (self.cfg.oversized_prompt_bytes // 6 + 1)

        async def one():
            try:
                async for _ in self.stub.Complete(pb.CompleteRequest(prefix=prompt,
                                                                     sampling=pb.Sampling(max_tokens=4)),
                                                  timeout=self.cfg.call_timeout_s, metadata=self.metadata):
                    pass
                a["outcomes"]["OK"] += 1
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
                a["outcomes"][_code(exc)] += 1

        a["sent"] += self.cfg.oversized_prompts
        await asyncio.gather(*(one() for _ in range(self.cfg.oversized_prompts)))

    async def unread(self) -> None:
        """Complete streams that are never read while held; then one read tells whether they were refused."""
        a = self.actions["unread_streams"]
        calls = [self.stub.Complete(pb.CompleteRequest(prefix=f"def hostile_{i}(", sampling=pb.Sampling(
            max_tokens=512, temperature=0.0)), timeout=self.cfg.hold_s + self.cfg.call_timeout_s,
            metadata=self.metadata) for i in range(self.cfg.unread_streams)]
        a["sent"] += len(calls)
        await asyncio.sleep(self.cfg.hold_s)
        for call in calls:
            try:
                message = await asyncio.wait_for(call.read(), self.cfg.call_timeout_s)
                a["outcomes"]["held: " + (message.WhichOneof("kind") if message is not grpc.aio.EOF else "eof")] += 1
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
                a["outcomes"][_code(exc)] += 1
            call.cancel()

    async def session_flood(self) -> None:
        a = self.actions["session_flood"]
        calls = []

        async def one(i: int):
            call = self.stub.Session(metadata=self.metadata, timeout=self.cfg.hold_s + self.cfg.call_timeout_s)
            calls.append(call)
            try:
                await call.write(pb.ClientMessage(open=pb.Open(client=f"hostile-{i}")))
                message = await asyncio.wait_for(call.read(), self.cfg.call_timeout_s)
                kind = message.WhichOneof("kind") if message is not grpc.aio.EOF else "eof"
                a["outcomes"][kind if kind != "error" else f"error {message.error.code}"] += 1
            except (grpc.aio.AioRpcError, asyncio.TimeoutError, grpc.aio.UsageError) as exc:
                a["outcomes"][_code(exc)] += 1

        a["sent"] += self.cfg.session_flood
        await asyncio.gather(*(one(i) for i in range(self.cfg.session_flood)))
        await asyncio.sleep(self.cfg.hold_s)
        for call in calls:
            call.cancel()

    async def guessed(self, sweep: int) -> None:
        a = self.actions["guessed_ids"]
        for rid in self.guesses(sweep):
            a["sent"] += 3
            try:
                await self.stub.Interrupt(pb.InterruptRequest(request_id=rid), timeout=self.cfg.call_timeout_s,
                                          metadata=self.metadata)
                a["outcomes"]["interrupt OK"] += 1
                a["cross_tenant"] += 1
            except grpc.aio.AioRpcError as exc:
                a["outcomes"]["interrupt " + _code(exc)] += 1
            got = await self._resume(rid, timeout_s=1.0, outcomes=a["outcomes"], label="resume ")
            a["cross_tenant"] += got
            try:
                async for _ in self.stub.Complete(pb.CompleteRequest(request_id=rid, prefix="def reused(",
                                                                     sampling=pb.Sampling(max_tokens=2)),
                                                  timeout=self.cfg.call_timeout_s, metadata=self.metadata):
                    pass
                a["outcomes"]["reuse OK"] += 1
            except grpc.aio.AioRpcError as exc:
                a["outcomes"]["reuse " + _code(exc)] += 1
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS or "already in use" in (exc.details() or ""):
                    a["cross_tenant"] += 1

    async def _resume(self, rid: str, *, timeout_s: float, outcomes: Counter, label: str = "") -> int:
        """1 when a Resume of `rid` streamed anything (another tenant's output), else 0."""
        got = 0
        try:
            async for _ in self.stub.Resume(pb.ResumeRequest(request_id=rid, last_seq=0), timeout=timeout_s,
                                            metadata=self.metadata):
                got = 1
            outcomes[label + ("OK with messages" if got else "OK empty")] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[label + _code(exc) + (" after messages" if got else "")] += 1
        return got

    async def resume_flood(self, sweep: int) -> None:
        a = self.actions["resume_flood"]
        ids = self.guesses(sweep)
        a["sent"] += self.cfg.resume_flood
        got = await asyncio.gather(*(self._resume(ids[i % len(ids)], timeout_s=3.0, outcomes=a["outcomes"])
                                     for i in range(self.cfg.resume_flood)))
        a["cross_tenant"] += sum(got)

    async def cache_probe(self, canary: str) -> None:
        a = self.actions["cache_probe"]
        for role in ("probe", "control"):
            a["sent"] += 1
            final = None
            try:
                async for m in self.stub.Complete(pb.CompleteRequest(prefix=canary, sampling=pb.Sampling(
                        max_tokens=1)), timeout=30, metadata=self.metadata):
                    if m.WhichOneof("kind") == "final":
                        final = m.final
                a["outcomes"][f"{role} OK"] += 1
            except grpc.aio.AioRpcError as exc:
                a["outcomes"][f"{role} {_code(exc)}"] += 1
            if final is not None:
                self.probe[role] = {"prompt_tokens": final.prompt_tokens,
                                    "cached_prompt_tokens": final.cached_prompt_tokens}
                if role == "probe" and final.cached_prompt_tokens * 2 >= max(1, final.prompt_tokens):
                    a["cross_tenant"] += 1

    async def run(self, duration_s: float, canary: str) -> dict:
        """The attack: the cache probe, then rounds of every action until `duration_s` has passed."""
        deadline = time.monotonic() + duration_s
        await self.cache_probe(canary)
        sweep = 0
        while time.monotonic() < deadline:
            await asyncio.gather(self.oversized(), self.unread(), self.session_flood(), self.guessed(sweep),
                                 self.resume_flood(sweep))
            sweep += 1
        return {"rounds": sweep, "cache_probe": self.probe,
                "actions": {name: {**a, "outcomes": dict(a["outcomes"])} for name, a in self.actions.items()}}
