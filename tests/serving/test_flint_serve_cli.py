"""`flint serve` as a user runs it: starts, answers `flint complete`, reports `flint status`, stops on SIGTERM."""

import os
import re
import signal
from pathlib import Path
import urllib.request

import pytest

from flint import env as flint_env

from support.serve_process import flint, flint_serve


def test_flint_complete_without_a_server_says_how_to_point_at_one(tmp_path):
    env = {**os.environ, "FLINT_CACHE_DIR": str(tmp_path),
           # a fresh cache for the demo checkpoint, the machine's built native kernels
           "FLINT_KERNEL_CACHE_DIR": str(flint_env.kernel_cache_dir())}
    done = flint("complete", "--address", "127.0.0.1:9", "x = ", env=env)
    assert done.returncode == 1
    assert "cannot reach flint at 127.0.0.1:9" in done.stderr and "--address" in done.stderr


@pytest.mark.slow
def test_flint_serve_starts_answers_complete_and_stops_on_sigterm(demo_checkpoint, tmp_path):
    with flint_serve(tmp_path, "--model", str(demo_checkpoint),
                     config='workers = 2\nray_num_cpus = 1\n[engine]\nkv_cache_bytes = 16777216\n') as served:
        out, address, env = served.out, served.address, served.env
        out.wait_for(r"flint complete --address", timeout_s=10)

        done = flint("complete", "def fibonacci(n):\n", "--max-tokens", "8", "--stats", env=env)
        assert done.returncode == 0, done.stderr
        assert re.search(r"\[\d+ tokens, FINISH_REASON_\w+", done.stderr)

        source = tmp_path / "code.py"
        source.write_text("import os\n\nx = 1\ny = 2\n")
        edit = flint("edit", "--file", str(source), "--lines", "3-4", "-i", "rename x", "--max-tokens", "6",
                     "--stats", "--address", address, env=env)
        assert edit.returncode == 0, edit.stderr
        assert "[6 tokens, FINISH_REASON_LENGTH" in edit.stderr and len(edit.stdout) > 1  # streamed text + newline

        # The HTTP door is on by default, and one scrape of it covers both workers' requests.
        http = next(m.group(1) for line in out.lines if (m := re.search(r"/health and /metrics at (\S+)", line)))
        with urllib.request.urlopen(http + "/health", timeout=10) as reply:
            assert reply.status == 200
        for _ in range(3):   # whichever worker answers
            with urllib.request.urlopen(http + "/metrics", timeout=10) as reply:
                text = reply.read().decode()
            ended = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("flint_request_success_total{"))
            assert ended == 2 and "_created" not in text

        # The embedded Valkey's password never goes on a command line (every local user can read those).
        worker_pids = [int(m.group(1)) for line in out.lines if (m := re.search(r"front-end worker .*pid (\d+)", line))]
        assert len(worker_pids) == 2
        for pid in worker_pids:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
            assert "redis://" not in cmdline, cmdline

        status = flint("status", env=env)  # finds Redis through the state file of the running serve
        assert status.returncode == 0, status.stderr
        assert "Engine replicas: 1" in status.stdout and address.split(":")[0] in status.stdout

        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=90) == 0
        out.wait_for("flint serve: stopped", timeout_s=5)
