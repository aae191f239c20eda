"""`flint load soak --hostile`, short: the victim tenant's keystroke load beside a hostile tenant (oversized
prompts, unread streams, Session and Resume floods, guessed and reused victim ids, a cache probe) with API keys
and TLS on. The report must carry issue 13's keys, every hostile action must have been sent, and the victim
must lose no token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYS = {"victim_ttft_ms", "victim_tokens_lost", "cross_tenant_effects", "worker_rss_mib_max", "redis_bytes_max"}
ACTIONS = {"oversized_prompts", "unread_streams", "session_flood", "guessed_ids", "resume_flood", "cache_probe"}


def test_hostile_soak_reports_its_keys_and_the_victim_loses_no_token(tmp_path):
    flint = Path(sys.executable).with_name("flint")
    proc = subprocess.run([str(flint), "load", "soak", "--hostile", "--duration-s", "8", "--nodes", "1",
                           "--users", "2", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert (tmp_path / "soak-hostile.json").is_file(), proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads((tmp_path / "soak-hostile.json").read_text())
    assert KEYS <= set(r), sorted(r)
    for phase in ("baseline", "under_attack"):
        assert r["victim_ttft_ms"][phase]["p50"] > 0 and r["victim_ttft_ms"][phase]["p99"] > 0, r["victim_ttft_ms"]
    assert r["victim_tokens_lost"] == 0 and proc.returncode == 0, (r["victim"]["tokens"], r["victim"]["failures"])
    assert r["cluster"]["tls"] is True
    actions = r["hostile"]["actions"]
    assert set(actions) == ACTIONS and all(a["sent"] > 0 for a in actions.values()), actions
    assert sum(actions["oversized_prompts"]["outcomes"].values()) == actions["oversized_prompts"]["sent"]
    assert r["hostile"]["cache_probe"]["control"]["prompt_tokens"] > 0
    assert r["worker_rss_mib_max"] > 0 and r["redis_bytes_max"] > 0
    assert "| 0 victim tokens lost | yes |" in (tmp_path / "soak-hostile.md").read_text()


def test_the_hostile_tenant_labels_a_write_overtaken_by_the_servers_status_apart_from_a_servers_internal():
    import grpc

    from flint.load.hostile import OVERTAKEN_WRITE, _code

    def error(code, debug):
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "Internal error from Core", debug)

    overtaken = 'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x7f14c4702bb0>,)'
    assert _code(error(grpc.StatusCode.INTERNAL, overtaken)) == OVERTAKEN_WRITE
    assert _code(error(grpc.StatusCode.INTERNAL, "INTERNAL:internal error (error id e-1)")) == "INTERNAL"
    assert _code(error(grpc.StatusCode.RESOURCE_EXHAUSTED, "")) == "RESOURCE_EXHAUSTED"
