"""`flint keys create --tenant T (--file F | --redis-url U)`: make an API key; only its hash is stored."""

from __future__ import annotations

import argparse
import asyncio
import sys

from flint.errors import FlintError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flint keys", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="create an API key for a tenant and print it (shown once)")
    p.add_argument("--tenant", required=True, help="tenant name, 1-64 characters of [A-Za-z0-9._-]")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", help="key file named by the front-end's security.api_keys_file")
    where.add_argument("--redis-url", help="store in Redis (front-ends with security.api_keys_in_redis)")
    p.add_argument("--key-prefix", default="flint", help="Redis key prefix of the deployment (default flint)")
    args = parser.parse_args(argv)
    try:
        if args.file:
            from flint.security.auth import add_key_to_file

            key = add_key_to_file(args.file, args.tenant)
        else:
            key = asyncio.run(_create_in_redis(args.redis_url, args.key_prefix, args.tenant))
    except FlintError as exc:
        print(f"flint keys: {exc.message}", file=sys.stderr)
        return 1
    print(key)
    print(f"API key for tenant {args.tenant!r} (store it now: only its SHA-256 is kept)", file=sys.stderr)
    return 0


async def _create_in_redis(url: str, key_prefix: str, tenant: str) -> str:
    import redis.asyncio as aioredis

    from flint.security.auth import add_key_to_redis
    from flint.valkey import check_redis_async

    redis = aioredis.Redis.from_url(url)
    try:
        await check_redis_async(redis, url)
        return await add_key_to_redis(redis, key_prefix, tenant)
    finally:
        await redis.aclose()
