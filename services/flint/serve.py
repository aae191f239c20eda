"""`flint serve`: start Redis (or join one), Ray, engine replicas and front-end workers; stop them all.

Order matters for clear failures: Redis first (a bad --redis-url fails in a
second with the URL named), then the model (the demo checkpoint is made once
and cached), then Ray and the replica actors (each loads the engine and
publishes its address in Redis), then the front-end worker processes, which
route through the registry. Shutdown runs in reverse, from a signal handler
that only sets a flag.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from flint import env
from flint.config import FrontendConfig, ReplicaConfig, ServeConfig
from flint.errors import FlintError, InvalidArgument, Unavailable
from flint.security import internal
from flint.security.redact import install_log_redaction, redact
from flint.valkey import EmbeddedValkey, check_redis


def state_file() -> Path:
    """Where a running `flint serve` records its address and Redis URL for `flint complete/status`."""
    return env.cache_dir() / "serve.json"


def read_state() -> dict:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}


class Server:
    """Everything `flint serve` runs, started by `start()` and torn down by `stop()` (idempotent)."""

    def __init__(self, config: ServeConfig, say: Callable[[str], None] = print):
        self.config = config
        self.say = say
        self.redis_url = config.redis_url
        self.address = ""
        self.http_address = ""
        self._metrics_dir = ""            # the workers' shared prometheus_client multiprocess directory
        self._valkey: EmbeddedValkey | None = None
        self._ray_started = False
        self._replicas: list = []
        self._workers: list[subprocess.Popen] = []
        # The internal API secret shared by this run's replicas and workers: the operator's, or a fresh one.
        self._internal_token = internal.resolve_token() or internal.new_token()

    # ------------------------------------------------------------------ start
    def start(self) -> str:
        install_log_redaction()
        try:
            self._start_redis()
            engine_config = self._engine_config()
            self._start_ray()
            self._start_replicas(engine_config)
            self._start_workers()
        except BaseException:
            self.stop()
            raise
        state_file().parent.mkdir(parents=True, exist_ok=True)
        state_file().touch(mode=0o600)  # holds the Redis URL, password included: this user's only
        state_file().chmod(0o600)
        state_file().write_text(json.dumps({"address": self.address, "http_address": self.http_address,
                                            "redis_url": self.redis_url,
                                            "pid": os.getpid()}))
        return self.address

    def _start_redis(self) -> None:
        if self.redis_url:
            check_redis(self.redis_url)
            self.say(f"Redis: {redact(self.redis_url)}")
            return
        self._valkey = EmbeddedValkey()
        self.redis_url = self._valkey.start()
        self.say(f"Redis: embedded Valkey at {redact(self.redis_url)} (password protected)")

    def _engine_config(self):
        from flint.engine.config import EngineConfig

        model = self.config.model
        if not model:
            from flint.engine import demo

            cached = (env.cache_dir() / demo.DEMO_VERSION / "model.safetensors").is_file()
            if not cached:
                self.say("Making the demo checkpoint (once; cached under "
                         f"{env.cache_dir()}): training a small tokenizer and writing random weights...")
            started = time.monotonic()
            model = str(demo.ensure_demo_checkpoint())
            if not cached:
                self.say(f"  done in {time.monotonic() - started:.1f} s")
            self.say(f"WARNING: {demo.DEMO_NOTE}")
        return EngineConfig.from_dict(self.config.engine, model=str(Path(model).expanduser().resolve()))

    def _start_ray(self) -> None:
        import ray

        if self.config.ray_address:
            self.say(f"Ray: joining {self.config.ray_address}")
            ray.init(address=self.config.ray_address, logging_level="WARNING", log_to_driver=False)
        else:
            self.say("Ray: starting a local instance")
            ray.init(address="local", num_cpus=self.config.ray_num_cpus or None, include_dashboard=False,
                     logging_level="WARNING", log_to_driver=False)
        self._ray_started = True

    def _start_replicas(self, engine_config) -> None:
        from flint.replica.host import start_replica_actors

        n = self.config.replicas
        if not self.config.ray_address:  # a local instance cannot grow: fail now rather than wait for CPUs
            import ray

            have = ray.cluster_resources().get("CPU", 0)
            need = n * self.config.replica_num_cpus
            if need > have:
                raise InvalidArgument(f"{n} replica(s) x {self.config.replica_num_cpus:g} CPU need {need:g} CPUs but "
                                      f"the local Ray instance has {have:g}; lower --replicas or "
                                      "--replica-num-cpus, or raise --ray-num-cpus")
        if engine_config.device == "cpu" and not self.config.ray_address:
            from flint.engine import kernels

            kernels.prebuild(say=self.say)  # once per machine; replicas then load them in milliseconds
        self.say(f"Engine: loading {engine_config.model} into {n} replica{'s' if n > 1 else ''}...")
        replica_config = self.replica_config(self._internal_token)
        self._replicas = start_replica_actors(engine_config, replica_config, count=n,
                                              num_cpus=self.config.replica_num_cpus,
                                              timeout_s=self.config.startup_timeout_s,
                                              max_restarts=self.config.replica_max_restarts)
        for _, address in self._replicas:
            self.say(f"  engine replica serving at {address}")

    def replica_config(self, internal_token: str) -> ReplicaConfig:
        """Replicas bind privately whatever the public --host: loopback on one machine, the node IP Ray
        reports in a cluster; only front-ends holding `internal_token` may call them."""
        return ReplicaConfig(redis_url=self.redis_url, host="node" if self.config.ray_address else "127.0.0.1",
                             admission=self.config.admission, internal_token=internal_token)

    def _start_workers(self) -> None:
        cfg = self.config
        port, http_port = cfg.port, cfg.http_port
        if port:
            _check_port_free(cfg.host, port)
        if http_port > 0:
            _check_port_free(cfg.host, http_port, flag="--http-port")
        # All workers write their metrics here and whichever one answers a scrape reports them all.
        self._metrics_dir = tempfile.mkdtemp(prefix="flint-metrics-")
        for i in range(cfg.workers):
            observability = dict(cfg.observability)
            if observability.get("metrics_port", -1) > 0:  # one /metrics port per worker process
                observability["metrics_port"] += i
            frontend = FrontendConfig(redis_url=self.redis_url, host=cfg.host, port=port, http_port=http_port,
                                      routing=cfg.routing, engine_transport=cfg.engine_transport,
                                      reuse_port=cfg.workers > 1, journal=cfg.journal, admission=cfg.admission,
                                      security=cfg.security, observability=observability, buffers=cfg.buffers,
                                      liveness=cfg.liveness)
            proc = subprocess.Popen(  # the token goes by environment: a command line is visible to every user
                # redis_url (password included) goes by environment too: the worker reads FLINT_REDIS_URL
                [sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps({**asdict(frontend),
                                                                                      "redis_url": ""}),
                 "--parent-pid", str(os.getpid())],
                stdout=subprocess.PIPE, text=True, env={**os.environ, internal.TOKEN_ENV: self._internal_token,
                                                        env.REDIS_URL_ENV: self.redis_url,
                                                        env.PROMETHEUS_MULTIPROC_ENV: self._metrics_dir})
            self._workers.append(proc)
            ready = _read_ready_line(proc, timeout_s=60.0)
            port = ready["port"]  # port 0: later workers share the port the first one got
            http_port = ready.get("http_port", -1)
            self.say(f"  front-end worker {i + 1}/{cfg.workers} ({ready['worker_id']}, pid {proc.pid})")
        self.address = f"{cfg.host}:{port}"
        if http_port >= 0:
            self.http_address = f"http://{cfg.host}:{http_port}"
            self.say(f"  OpenAI-compatible HTTP API, /health and /metrics at {self.http_address}")

    # ------------------------------------------------------------------ run / stop
    def wait(self) -> int:
        """Block until SIGINT/SIGTERM (0) or until a front-end worker dies (1)."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                for proc in self._workers:
                    if proc.poll() is not None:
                        self.say(f"front-end worker pid {proc.pid} exited with code {proc.returncode}; "
                                 "shutting down")
                        return 1
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        for proc in self._workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._workers = []
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = ""
        if self._replicas:
            from flint.replica.host import stop_replica_actors

            stop_replica_actors([actor for actor, _ in self._replicas], grace_s=2.0)
            self._replicas = []
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if read_state().get("pid") == os.getpid():
            state_file().unlink(missing_ok=True)


def _check_port_free(host: str, port: int, flag: str = "--port") -> None:
    # Workers set SO_REUSEPORT, which would silently share a port with another server of
    # ours still running there; a plain bind first turns that into a clear error.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}; pick another {flag} "
                                  "(or stop the server using it)") from exc


def _read_ready_line(proc: subprocess.Popen, timeout_s: float) -> dict:
    result: dict = {}

    def read() -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            result.update(event)
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if result.get("event") == "listening":
        return result
    if result.get("event") == "error":
        raise Unavailable(f"front-end worker failed to start: {result['message']}")
    raise Unavailable(f"front-end worker pid {proc.pid} did not start within {timeout_s:g} s "
                      f"(exit code {proc.poll()})")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM during start-up unwinds like Ctrl-C: everything started is stopped


def run(config: ServeConfig) -> int:
    """`flint serve`: start everything, print how to try it, run until a signal, stop everything."""
    server = Server(config)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        address = server.start()
    except FlintError as exc:
        print(f"flint serve: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flint serve: interrupted during start-up; stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        print(f"\nflint is serving on {address} (gRPC: flint.v1.Flint, health, reflection)", flush=True)
        print(f"Try it:\n  flint complete --address {address} 'def fibonacci(n):'\n"
              "Press Ctrl-C to stop.", flush=True)
        return server.wait()
    finally:
        print("flint serve: shutting down...", flush=True)
        server.stop()
        print("flint serve: stopped", flush=True)
