"""`flint complete`, `flint edit` and `flint status`: the client side of the CLI."""

from __future__ import annotations

import argparse
import sys

from flint.errors import InvalidArgument, Unavailable


def split_at_cursor(text: str, cursor: str | None) -> tuple[str, str]:
    """(prefix, suffix) of `text` at a 1-based LINE:COL cursor; no cursor = end of text."""
    if cursor is None:
        return text, ""
    try:
        line, col = (int(part) for part in cursor.split(":"))
    except ValueError:
        raise InvalidArgument(f"--cursor {cursor!r} must be LINE:COL with 1-based integers, e.g. 12:5") from None
    lines = text.splitlines(keepends=True) or [""]
    if not 1 <= line <= len(lines):
        raise InvalidArgument(f"--cursor line {line} is outside the file (1-{len(lines)})")
    body = lines[line - 1].rstrip("\r\n")
    if not 1 <= col <= len(body) + 1:
        raise InvalidArgument(f"--cursor column {col} is outside line {line} (1-{len(body) + 1})")
    offset = sum(len(x) for x in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]


def split_lines(text: str, spec: str) -> tuple[str, str, str]:
    """(before, region, after) for a 1-based inclusive `A-B` line range."""
    try:
        first, last = (int(part) for part in spec.split("-"))
    except ValueError:
        raise InvalidArgument(f"--lines {spec!r} must be A-B with 1-based line numbers, e.g. 10-20") from None
    lines = text.splitlines(keepends=True)
    if not 1 <= first <= last <= len(lines):
        raise InvalidArgument(f"--lines {spec} must satisfy 1 <= A <= B <= {len(lines)} (lines in the file)")
    return "".join(lines[: first - 1]), "".join(lines[first - 1: last]), "".join(lines[last:])


def _sampling(args: argparse.Namespace):
    from flint.client import sampling

    return sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                    max_tokens=args.max_tokens, stop=args.stop)


async def run_request(args: argparse.Namespace, address: str) -> int:
    """Stream one completion or edit to stdout as it arrives."""
    from flint.cli import read_source
    from flint.client import FlintClient

    path = args.file or ""
    if args.command == "complete" and getattr(args, "document", False):
        return await run_document(args, address)
    if args.command == "complete":
        if args.file:
            prefix, suffix = split_at_cursor(read_source(args.file), args.cursor)
            suffix = suffix or args.suffix
        elif args.prefix is not None:
            prefix, suffix = args.prefix, args.suffix
        elif not sys.stdin.isatty():
            prefix, suffix = sys.stdin.read(), args.suffix
        else:
            raise InvalidArgument("nothing to complete: pass PREFIX, --file F [--cursor LINE:COL], or pipe stdin")
    else:
        before, code, after = split_lines(read_source(args.file), args.lines)

    from flint import env

    async with FlintClient(address, api_key=env.api_key() or "",
                           allow_plaintext_key=env.allow_plaintext_key()) as client:  # resumes and retries by itself
        if args.command == "complete":
            stream = client.complete(prefix, suffix, path=path, model=args.model, sampling_params=_sampling(args))
        else:
            stream = client.edit(code, args.instruction, prefix=before, suffix=after, path=path, model=args.model,
                                 sampling_params=_sampling(args))
        final = None
        try:
            async for message in stream:
                kind = message.WhichOneof("kind")
                if kind == "delta":
                    sys.stdout.write(message.delta.text)
                    sys.stdout.flush()
                elif kind == "final":
                    final = message.final
        except Unavailable as exc:
            raise Unavailable(f"cannot reach flint at {address}: {exc.message}. Is `flint serve` running? "
                              "Pass --address HOST:PORT") from None
    sys.stdout.write("\n")
    if args.stats and final is not None:
        _print_stats(final)
    return 0


def _print_stats(final, label: str = "") -> None:
    from flint.v1 import flint_pb2 as pb

    t = final.timings
    print(f"[{label}{final.completion_tokens} tokens, {pb.FinishReason.Name(final.finish_reason)}, prompt "
          f"{final.prompt_tokens} tokens ({final.cached_prompt_tokens} cached), first token "
          f"{t.first_token_ms:.1f} ms, total {t.total_ms:.1f} ms, replica {final.replica_id}]", file=sys.stderr)


async def run_document(args: argparse.Namespace, address: str) -> int:
    """`flint complete --document`: open the file once, then complete (and type) at the cursor by reference."""
    from flint import env
    from flint.cli import read_source
    from flint.client import FlintClient

    if not args.file:
        raise InvalidArgument("--document needs --file: the file is opened as a document of the session")
    text = read_source(args.file)
    cursor = len(split_at_cursor(text, args.cursor)[0])
    async with FlintClient(address, api_key=env.api_key() or "") as client:
        async with client.session(model=args.model) as session:
            doc = await session.open_document(args.file, text, path=args.file)
            for i, char in enumerate([""] + list(args.type_text)):
                if char:
                    doc.replace(cursor, cursor, char)   # pipelined: the stream keeps edit and completion in order
                    cursor += 1
                final = None
                async for message in doc.complete(cursor, sampling_params=_sampling(args)):
                    kind = message.WhichOneof("kind")
                    if kind == "delta" and i == len(args.type_text):
                        sys.stdout.write(message.delta.text)
                        sys.stdout.flush()
                    elif kind == "final":
                        final = message.final
                if args.stats and final is not None:
                    _print_stats(final, f"keystroke {i} {char!r}: " if char else "opened: ")
    sys.stdout.write("\n")
    return 0


async def run_status(redis_url: str) -> int:
    """Print replicas, their load and the session/request counts recorded in Redis."""
    import redis.asyncio as aioredis

    from flint.frontend.store import Store
    from flint.replica.registry import ReplicaRegistry
    from flint.security.redact import redact
    from flint.valkey import check_redis_async

    redis = aioredis.Redis.from_url(redis_url)
    try:
        await check_redis_async(redis, redis_url)
        replicas = await ReplicaRegistry(redis).list()
        store = Store(redis, "flint", session_ttl_s=1, request_ttl_s=1)
        sessions = await store.count_sessions()
        running = await store.running_requests()
    finally:
        await redis.aclose()
    print(f"Redis: {redact(redis_url)}")
    print(f"Engine replicas: {len(replicas)}")
    for r in replicas:
        state = "draining" if r.draining else ("healthy" if r.healthy else "unhealthy")
        print(f"  {r.replica_id:<20} {r.address:<22} {r.model:<16} {state:<9} running {r.running:<3} "
              f"waiting {r.waiting:<3} KV {r.kv_used_fraction:6.1%}  context {r.max_context_tokens}  "
              f"cancelled {r.cancelled_total}")
    print(f"Sessions: {sessions}")
    print(f"Running requests: {len(running)}")
    owners: dict[str, int] = {}
    for record in running:
        owners[record.owner] = owners.get(record.owner, 0) + 1
    for owner, count in sorted(owners.items()):
        print(f"  {owner}: {count}")
    return 0
