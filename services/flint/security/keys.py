"""`flint keys create|revoke`: make an API key (only its hash is stored) or revoke keys, in a key file or Redis.

    flint keys create --tenant T (--file F | --redis-url U)
    flint keys revoke (--key K | --tenant T) (--file F | --redis-url U)

A revoked key stops working on every front-end within its `security.key_recheck_s` (default 2 s), streams
already open with it included.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from flint.errors import FlintError


def _store_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", help="key file named by the front-end's security.api_keys_file")
    where.add_argument("--redis-url", help="keys in Redis (front-ends with security.api_keys_in_redis)")
    p.add_argument("--key-prefix", default="flint", help="Redis key prefix of the deployment (default flint)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flint keys", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="create an API key for a tenant and print it (shown once)")
    p.add_argument("--tenant", required=True, help="tenant name, 1-64 characters of [A-Za-z0-9._-]")
    _store_args(p)
    p = sub.add_parser("revoke", help="revoke one key, or every key of a tenant")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="the key to revoke")
    which.add_argument("--tenant", help="revoke every key of this tenant")
    _store_args(p)
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            key = _create(args)
            print(key)
            print(f"API key for tenant {args.tenant!r} (store it now: only its SHA-256 is kept)", file=sys.stderr)
        else:
            count = _revoke(args)
            print(f"revoked {count} key{'s' if count != 1 else ''}; front-ends stop accepting "
                  f"{'them' if count != 1 else 'it'} within their security.key_recheck_s", file=sys.stderr)
    except FlintError as exc:
        print(f"flint keys: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _create(args) -> str:
    from flint.security import keystore

    if args.file:
        return keystore.add_key_to_file(args.file, args.tenant)
    return asyncio.run(_in_redis(args, lambda redis: keystore.add_key_to_redis(redis, args.key_prefix, args.tenant)))


def _revoke(args) -> int:
    from flint.security import keystore

    if args.file:
        return keystore.revoke_in_file(args.file, key=args.key or "", tenant=args.tenant or "")
    return asyncio.run(_in_redis(args, lambda redis: keystore.revoke_in_redis(
        redis, args.key_prefix, key=args.key or "", tenant=args.tenant or "")))


async def _in_redis(args, action):
    import redis.asyncio as aioredis

    from flint.valkey import check_redis_async

    redis = aioredis.Redis.from_url(args.redis_url)
    try:
        await check_redis_async(redis, args.redis_url)
        return await action(redis)
    finally:
        await redis.aclose()
