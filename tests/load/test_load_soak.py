"""`flint load soak`, short: a local multi-node Ray cluster, the real engine (demo checkpoint), front-end worker
processes, Valkey, the keystroke load of `flint load`, and faults (a front-end worker SIGKILLed, an engine replica
SIGKILLed and restarted by Ray, a worker drained). Every request must complete or end with a retryable status,
and no token may be lost: delta seqs without gap or repeat, tokens received == Final.completion_tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}


def test_soak_with_faults_loses_no_token(tmp_path):
    flint = Path(sys.executable).with_name("flint")
    proc = subprocess.run([str(flint), "load", "soak", "--duration-s", "24", "--fault-interval-s", "6",
                           "--users", "3", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert (tmp_path / "soak.json").is_file(), proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "soak.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-2000:], results["tokens"], results["failures"])

    kinds = [f["kind"] for f in results["faults"]]
    assert "kill_worker" in kinds and "kill_replica" in kinds, results["faults"]
    assert all(f.get("restarted_after_s") is not None for f in results["faults"] if f["kind"] == "kill_replica")

    requests, tokens = results["requests"], results["tokens"]
    assert requests["completed"] > 0 and tokens["received"] > 0
    assert set(requests["failed_by_status"]) <= RETRYABLE, requests["failed_by_status"]
    assert requests["failed_after_tokens"] == 0
    assert tokens["lost"] == 0 and tokens["seq_gaps"] == 0 and tokens["seq_repeats"] == 0, tokens

    memory = results["memory"]
    assert {"valkey", "driver"} <= set(memory)
    assert any(name.startswith("replica-w1#") for name in memory) and any(name.startswith("fe") for name in memory)
    assert (tmp_path / "soak.md").read_text().count("tokens lost: 0") == 1
