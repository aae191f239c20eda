"""`flint serve` as a user runs it: starts, answers `flint complete`, reports `flint status`, stops on SIGTERM."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest


def flint(*args: str, env: dict, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flint.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s)


class Output:
    """Lines of a process's stdout, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc) -> None:
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        while True:
            line = self._queue.get(timeout=timeout_s)
            if line is None:
                raise AssertionError("process ended before printing " + pattern + ":\n" + "".join(self.lines))
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match


def test_flint_complete_without_a_server_says_how_to_point_at_one(tmp_path):
    env = {**os.environ, "FLINT_CACHE_DIR": str(tmp_path)}
    done = flint("complete", "--address", "127.0.0.1:9", "x = ", env=env)
    assert done.returncode == 1
    assert "cannot reach flint at 127.0.0.1:9" in done.stderr and "--address" in done.stderr


@pytest.mark.slow
def test_flint_serve_starts_answers_complete_and_stops_on_sigterm(demo_checkpoint, tmp_path):
    env = {**os.environ, "FLINT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("FLINT_ADDRESS", None)
    config = tmp_path / "serve.toml"
    config.write_text('workers = 2\nray_num_cpus = 1\n[engine]\nkv_cache_bytes = 16777216\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "flint.cli", "serve", "--model", str(demo_checkpoint), "--port", "0",
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out = Output(proc)
        address = out.wait_for(r"flint is serving on (\S+)", timeout_s=240).group(1)
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

        status = flint("status", env=env)  # finds Redis through the state file of the running serve
        assert status.returncode == 0, status.stderr
        assert "Engine replicas: 1" in status.stdout and address.split(":")[0] in status.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        out.wait_for("flint serve: stopped", timeout_s=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
