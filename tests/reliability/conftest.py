"""Fixtures of the reliability tests (helpers and the paced engine live in rel_support.py)."""

from __future__ import annotations

import secrets

import pytest

from rel_support import Cluster


@pytest.fixture
def key_prefix():
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def cluster(valkey_url, key_prefix):
    c = Cluster(valkey_url, key_prefix)
    try:
        yield c
    finally:
        await c.close()
