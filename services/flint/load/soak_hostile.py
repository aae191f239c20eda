"""`flint load soak --hostile`: a victim tenant's keystroke load beside a hostile tenant, auth and TLS on.

The stack is `flint load soak`'s (local Ray cluster, replicas, front-end workers, Valkey) with API keys for
two tenants in a key file and TLS on the public port (a self-signed CA made for the run). No faults. The
victim (`flint load` keystroke scenario, the victim's key) runs alone for half the duration (baseline),
then again for the other half while the hostile tenant (flint.load.hostile) attacks. Before the attack the
victim sends a canary prompt, which the hostile tenant then probes for in the prefix cache.

Victim-side cross-tenant checks (added to the hostile actions' own): a victim request that ended
`interrupted` without its editor interrupting it, or ended with an error after receiving tokens.
Writes soak-hostile.json and soak-hostile.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

from flint.load.hostile import Attacker, HostileConfig
from flint.load.soak import SoakConfig, _run_config, running_stack
from flint.load.soak_report import account

VICTIM_KEY_ENV = "FLINT_SOAK_VICTIM_KEY"
BUDGET_TTFT_RATIO = 2.0


def _percentiles(records) -> dict:
    from flint.load.quantile import exact

    ttfts = [r.ttft_ms for r in records if r.ok and r.ttft_ms is not None]
    return {"p50": _round(exact(ttfts, 0.5)), "p99": _round(exact(ttfts, 0.99)), "n": len(ttfts)}


def _round(value):
    return None if value is None else round(value, 1)


class RedisMemory:
    """INFO memory used_memory sampled in a thread: the peak."""

    def __init__(self, url: str, interval_s: float = 0.5):
        import redis

        self.client, self.peak, self._stop = redis.Redis.from_url(url), 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True)
        self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))
            except Exception:   # a sample lost to a busy Valkey is not a failure of the soak
                continue

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.client.close()
        return self.peak


def _victim_effects(records) -> dict:
    interrupted = [r.id for r in records if r.finish_reason == "interrupted" and not r.interrupt_mode]
    cut_off = [r.id for r in records if not r.ok and r.tokens > 0]
    return {"interrupted_by_someone_else": len(interrupted), "ended_early_after_tokens": len(cut_off),
            "ids": (interrupted + cut_off)[:20]}


def _canary(seed: int) -> str:
    rng = random.Random(f"canary:{seed}")
    return "# victim canary\n" + "\n".join(f"v_{rng.getrandbits(40):x} = {rng.getrandbits(30)}" for _ in range(60))


async def _victim_canary(address: str, key: str, ca: bytes | None, canary: str) -> dict:
    from flint.client import ClientTLS, FlintClient

    tls = ClientTLS(root_certificates=ca, server_name_override="localhost") if ca else None
    async with FlintClient(address, api_key=key, tls=tls, allow_plaintext_key=True) as client:
        async for m in client.complete(canary, max_tokens=1):
            if m.WhichOneof("kind") == "final":
                return {"prompt_tokens": m.final.prompt_tokens}
    return {}


def run_hostile(cfg: SoakConfig, hostile: HostileConfig | None = None, say=print) -> dict:
    from flint.load.orchestrate import machine_info, run
    from flint.security.keystore import add_key_to_file

    hostile = hostile or HostileConfig()
    half_s = cfg.duration_s / 2
    with tempfile.TemporaryDirectory(prefix="flint-soak-hostile-") as tmp:
        keys_file = Path(tmp) / "keys.json"
        victim_key, hostile_key = add_key_to_file(keys_file, "victim"), add_key_to_file(keys_file, "hostile")
        security: dict = {"api_keys_file": str(keys_file)}
        target: dict = {"api_key_env": VICTIM_KEY_ENV}
        ca = None
        try:
            from flint.security.selfsigned import write_tls_files

            files = write_tls_files(Path(tmp))
            security.update(tls_cert_file=str(files["server_cert"]), tls_key_file=str(files["server_key"]))
            target.update(tls_ca_file=str(files["ca"]), tls_server_name="localhost")
            ca = files["ca"].read_bytes()
        except ImportError:
            say("  `cryptography` is not installed: TLS is off for this run (API keys only)")
        os.environ[VICTIM_KEY_ENV] = victim_key
        with running_stack(cfg, say, security=security) as (stack, redis_url, model):
            redis_memory = RedisMemory(redis_url)
            address = f"127.0.0.1:{stack.port}"
            say(f"Baseline: the victim's keystroke load alone, {cfg.users} users for {half_s:g} s")
            baseline = run(_run_config(cfg, stack.port, half_s, target), quiet=True, label="baseline")
            canary = _canary(cfg.seed)
            canary_info = asyncio.run(_victim_canary(address, victim_key, ca, canary))
            say(f"Under attack: the victim's load again for {half_s:g} s beside the hostile tenant")
            holder: dict = {}

            def attack():
                async def go():
                    attacker = Attacker(address, hostile_key, ca, hostile, cfg.users)
                    try:
                        return await attacker.run(half_s, canary)
                    finally:
                        await attacker.close()
                holder["attack"] = asyncio.run(go())

            attacker_thread = threading.Thread(target=attack, daemon=True)
            started = time.monotonic()
            attacker_thread.start()
            under = run(_run_config(cfg, stack.port, half_s, target), quiet=True, label="under_attack")
            attacker_thread.join(timeout=120)
            attack_s = round(time.monotonic() - started, 1)
            memory = stack.memory.stop()
            redis_bytes_max = redis_memory.stop()
    if "attack" not in holder:
        raise RuntimeError("the hostile tenant did not finish (see the error above)")
    attack = holder["attack"]
    victim = account(baseline.records + under.records)
    effects = _victim_effects(under.records)
    hostile_effects = {name: a["cross_tenant"] for name, a in attack["actions"].items()}
    results = {
        "machine": {**machine_info(), "loadavg": os.getloadavg()},
        "model": {"path": model, "demo": not cfg.model},
        "cluster": {"ray_nodes": 1 + cfg.nodes, "replicas": cfg.nodes, "frontend_workers": cfg.workers,
                    "auth": "API keys (key file, tenants victim and hostile)", "tls": ca is not None},
        "load": {"scenario": "keystroke", "users": cfg.users, "duration_s": cfg.duration_s,
                 "baseline_s": half_s, "under_attack_s": half_s, "attack_wall_s": attack_s, "seed": cfg.seed},
        "victim_ttft_ms": {"baseline": _percentiles(baseline.records), "under_attack": _percentiles(under.records)},
        "victim_tokens_lost": victim["tokens"]["lost"],
        "cross_tenant_effects": sum(hostile_effects.values()) + effects["interrupted_by_someone_else"]
        + effects["ended_early_after_tokens"],
        "cross_tenant_by_check": {**hostile_effects, "victim_interrupted_by_someone_else":
                                  effects["interrupted_by_someone_else"],
                                  "victim_ended_early_after_tokens": effects["ended_early_after_tokens"]},
        "victim_effect_ids": effects["ids"],
        "worker_rss_mib_max": max(s["peak_mib"] for n, s in memory.items() if n.startswith(("fe", "replica"))),
        "redis_bytes_max": redis_bytes_max,
        "hostile": {"config": hostile.__dict__, "canary": canary_info, **attack},
        "victim": victim, "memory": memory,
    }
    from flint.load.soak_hostile_report import write_hostile

    write_hostile(results, Path(cfg.out_dir))
    return results


def main_hostile(cfg: SoakConfig) -> int:
    r = run_hostile(cfg)
    t = r["victim_ttft_ms"]
    print(f"victim TTFT p99 {t['baseline']['p99']} ms alone, {t['under_attack']['p99']} ms under attack; "
          f"tokens lost {r['victim_tokens_lost']}; cross-tenant effects {r['cross_tenant_effects']}; "
          f"wrote {cfg.out_dir}/soak-hostile.json and soak-hostile.md")
    return 0 if r["victim_tokens_lost"] == 0 else 1
