"""`flint` commands as subprocesses: `flint(...)` runs one, `flint_serve(...)` runs `flint serve` as a user does."""

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from flint import env as flint_env


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


@dataclass
class Served:
    proc: subprocess.Popen
    out: Output
    address: str     # host:port the front-end printed
    env: dict        # the environment to run `flint` commands against this server with


@contextlib.contextmanager
def flint_serve(tmp_path: Path, *args: str, config: str, timeout_s: float = 240):
    """`flint serve --port 0 --http-port 0 --config <config> *args` with its own cache dir; killed if still
    running at exit."""
    env = {**os.environ, "FLINT_CACHE_DIR": str(tmp_path / "cache"),
           # a fresh cache for the demo checkpoint, the machine's built native kernels
           "FLINT_KERNEL_CACHE_DIR": str(flint_env.kernel_cache_dir())}
    env.pop("FLINT_ADDRESS", None)
    config_file = tmp_path / "serve.toml"
    config_file.write_text(config)
    proc = subprocess.Popen([sys.executable, "-m", "flint.cli", "serve", "--port", "0", "--http-port", "0",
                             "--config", str(config_file), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out = Output(proc)
        address = out.wait_for(r"flint is serving on (\S+)", timeout_s=timeout_s).group(1)
        yield Served(proc, out, address, env)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
