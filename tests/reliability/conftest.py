"""Fixtures of the reliability tests (helpers, the checkpoint and the reference engine live in rel_support.py)."""

from __future__ import annotations

import secrets

import pytest

from rel_support import Cluster, Reference, make_checkpoint


@pytest.fixture(scope="session")
def rel_checkpoint(tmp_path_factory, bytelevel_tokenizer_file):
    """The tiny checkpoint every reliability replica serves (greedy streams run to max_tokens)."""
    return make_checkpoint(tmp_path_factory.mktemp("rel-model"), bytelevel_tokenizer_file.parent)


@pytest.fixture(scope="session")
def reference(rel_checkpoint):
    """Expected output of a request: the same request run alone and uninterrupted on the same checkpoint."""
    return Reference(rel_checkpoint)


@pytest.fixture
def key_prefix():
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def cluster(valkey_url, key_prefix, rel_checkpoint):
    c = Cluster(valkey_url, key_prefix, rel_checkpoint)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def tenant_keys(tmp_path):
    """A key file with one key for tenant-a and one for tenant-b: (path, key_a, key_b)."""
    from flint.security.keystore import add_key_to_file

    path = tmp_path / "keys.json"
    return str(path), add_key_to_file(path, "tenant-a"), add_key_to_file(path, "tenant-b")
