"""`flint bench keystroke`: one-character keystrokes end to end, document mode vs full text, 0-128K context.

The `flint serve` parts, each in its own process: the embedded Valkey, one
engine replica (demo checkpoint, suffix-first `spm` layout so the figures are
the suffix-first family's; the demo's random weights work with any layout)
and one front-end worker. This process is the editor: for each cached
context (a Python file of about 0, 8K, 32K, 128K tokens, cursor mid-file) it
types one character at a time, one completion (max_tokens 1) per keystroke:
- document mode: the file is opened once on a Session stream; a keystroke is
  an EditDocument plus a CompleteRequest naming the cursor (pipelined);
- full-text mode: a CompleteRequest carrying prefix and suffix on the same stream.
TTFT is measured by the client from sending the keystroke to the first
message after Accepted (delta or final). Per keystroke it records the
bytes on the wire (serialized client messages), the server's queue and
prefill ms (Final.timings), the re-prefilled tokens (prompt - cached), and the
tokenize ms of the same operation timed in this process on the same text
(the replica's incremental split for documents, encoding prefix + suffix for
full text).

Prefix-suffix-middle families (`psm`, e.g. Qwen2.5-Coder) are reported
separately: a second replica serves the same files with `fim_layout: psm`
(suffix cut to `fim_suffix_window_tokens`, default 64), document mode only.
There a keystroke re-prefills the edited prefix end plus the suffix window
(~67 tokens) and those tokens attend to the whole prefix, so their cost grows
with the context (`psm_keystroke_ttft_ms`, with the re-prefilled tokens and
prompt tokens per context).

Also: the KV read bound at 128K (bytes of K and V a new token's attention reads
/ read bandwidth of this machine measured in this run), and keystroke TTFT
while a second client streams a fresh 32K-token prefill, as bulk and as
interactive, beside the idle figure.

Writes loadtests/results/keystroke.json and keystroke.md (`--out-dir`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time

CONTEXTS = (0, 8192, 32768, 131072)


def say(text: str) -> None:
    print(f"[bench keystroke] {text}", file=sys.stderr, flush=True)


def _pct(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"p50": None, "p99": None, "n": 0}
    at = lambda q: v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]  # noqa: E731
    return {"p50": round(at(50), 2), "p99": round(at(99), 2), "n": len(v)}


# ---------------------------------------------------------------- the processes

def _replica_main(config_json: str) -> int:
    """Child process: one engine replica (real engine + ReplicaServer); prints its address, runs until killed."""
    from flint.config import ReplicaConfig
    from flint.engine.async_engine import AsyncEngine
    from flint.engine.config import EngineConfig
    from flint.replica.server import ReplicaServer

    cfg = json.loads(config_json)

    async def run() -> None:
        engine = await asyncio.to_thread(AsyncEngine.from_config, EngineConfig.from_dict(cfg["engine"]))
        await engine.start()
        server = ReplicaServer(engine, ReplicaConfig(redis_url=cfg["redis_url"], key_prefix=cfg["key_prefix"]))
        address = await server.start()
        print(json.dumps({"event": "listening", "address": address}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())
    return 0


def _start_replica(redis_url: str, key_prefix: str, engine: dict) -> subprocess.Popen:
    cfg = json.dumps({"redis_url": redis_url, "key_prefix": key_prefix, "engine": engine})
    proc = subprocess.Popen([sys.executable, "-m", "flint.bench.keystroke", "--replica-process", cfg],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("{"):
        proc.kill()
        raise RuntimeError(f"replica process did not start: {line!r}")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- texts

def make_source(tok, tokens: int, seed: int = 0) -> str:
    """Python source of `tokens` tokens: local stdlib files from the `seed`-th on, the last one cut."""
    from flint.engine.demo import python_source_corpus

    files = python_source_corpus(8_000_000)
    out, n, i = [], 0, seed
    while n < tokens:
        text = files[i % len(files)]
        i += 1
        ids = tok.encode(text)
        if n + len(ids) > tokens:
            ids = ids[:tokens - n]
            text = tok.decode(ids)
        out.append(text)
        n += len(ids)
    return "".join(out)


def memory_read_gbps() -> float:
    """Read bandwidth of this machine: a 512 MiB float32 tensor summed, best of 5."""
    import torch

    x = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


# ---------------------------------------------------------------- the editor

class Editor:
    """One Session stream, driven message by message (pipelined edit + complete)."""

    def __init__(self, stub):
        self._out: asyncio.Queue = asyncio.Queue()
        self.call = stub.Session(self._iter())

    async def _iter(self):
        while (m := await self._out.get()) is not None:
            yield m

    def send(self, message) -> int:
        self._out.put_nowait(message)
        return message.ByteSize()

    async def until(self, predicate, timeout_s: float = 900.0):
        while True:
            m = await asyncio.wait_for(self.call.read(), timeout_s)
            if predicate(m):
                return m

    async def request(self, request_id: str, timeout_s: float = 900.0) -> tuple[float, object]:
        """(perf_counter time of the first delta/final, the final)."""
        first = None
        while True:
            m = await asyncio.wait_for(self.call.read(), timeout_s)
            kind = m.WhichOneof("kind")
            if kind == "error":
                raise RuntimeError(f"{request_id}: {m.error.message}")
            if getattr(getattr(m, kind), "request_id", None) != request_id:
                continue
            if kind in ("delta", "final") and first is None:
                first = time.perf_counter()
            if kind == "final":
                return first, m.final

    def close(self) -> None:
        self._out.put_nowait(None)


async def keystrokes(editor: Editor, pb, text: str, cursor: int, *, mode: str, count: int, tag: str,
                     priority=0) -> list[dict]:
    """`count` one-character keystrokes at the cursor; returns per-keystroke records."""
    from flint.doctext import DocText

    records = []
    version = 1
    positions = DocText(text)
    if mode == "document":
        editor.send(pb.ClientMessage(open_document=pb.OpenDocument(document_id=tag, path=f"{tag}.py", text=text,
                                                                   version=1)))
        await editor.until(lambda m: m.WhichOneof("kind") in ("document", "error"))
    for i in range(count + 1):               # keystroke 0 primes the cache (the whole context is prefilled)
        wire = 0
        rid = f"{tag}-{mode}-{i}-{time.time_ns()}"
        t0 = time.perf_counter()
        if i > 0:
            char = "abcdefghij"[i % 10]
            if mode == "document":
                line, col = positions.position(cursor)
                pos = pb.Position(line=line, character=col)
                wire += editor.send(pb.ClientMessage(edit_document=pb.EditDocument(
                    document_id=tag, version=version,
                    edits=[pb.TextEdit(range=pb.Range(start=pos, end=pos), text=char)])))
                version += 1
            positions = positions.apply(cursor, cursor, char)
            text = positions.text
            cursor += 1
        sampling = pb.Sampling(max_tokens=1)
        if mode == "document":
            line, col = positions.position(cursor)
            request = pb.CompleteRequest(request_id=rid, sampling=sampling, priority=priority,
                                         document=pb.DocumentCursor(document_id=tag, version=version,
                                                                    cursor=pb.Position(line=line, character=col)))
        else:
            request = pb.CompleteRequest(request_id=rid, prefix=text[:cursor], suffix=text[cursor:],
                                         path=f"{tag}.py", sampling=sampling, priority=priority)
        wire += editor.send(pb.ClientMessage(complete=request))
        first_at, final = await editor.request(rid)
        ttft_ms = (first_at - t0) * 1e3
        records.append({"i": i, "at": time.perf_counter(), "ttft_ms": round(ttft_ms, 3), "wire_bytes": wire,
                        "prompt_tokens": final.prompt_tokens, "cached_tokens": final.cached_prompt_tokens,
                        "reprefill_tokens": final.prompt_tokens - final.cached_prompt_tokens,
                        "queue_ms": round(final.timings.queue_ms, 3), "prefill_ms": round(final.timings.prefill_ms, 3),
                        "server_first_token_ms": round(final.timings.first_token_ms, 3)})
    return records


def tokenize_ms(tok, text: str, cursor: int, *, count: int) -> dict:
    """The tokenization a keystroke costs, timed here on the same text: incremental split vs full encode."""
    from flint.engine.incremental import IncrementalTokenizer

    inc = IncrementalTokenizer(tok)
    doc = inc.full(text)
    document, full = [], []
    for i in range(count):
        t0 = time.perf_counter()
        doc = inc.edit(doc, cursor, cursor, "x")
        inc.split_ids(doc, cursor + 1)          # what the replica does per keystroke
        document.append((time.perf_counter() - t0) * 1e3)
        new_text = doc.text
        t0 = time.perf_counter()
        tok.encode(new_text[:cursor + 1], continuation=True)
        tok.encode(new_text[cursor + 1:], continuation=True)
        full.append((time.perf_counter() - t0) * 1e3)
        cursor += 1
    return {"document": _pct(document), "full_text": _pct(full), "full_retokenizations": inc.stats.full}


async def under_long_prefill(stub, pb, tok, idle_text: str, *, count: int, long_tokens: int) -> dict:
    """Keystroke TTFT at a small context while another stream prefills a fresh `long_tokens` prompt."""
    out = {}
    for label, priority in (("bulk", pb.PRIORITY_BULK), ("interactive", pb.PRIORITY_INTERACTIVE)):
        long_text = f"# {time.time_ns()}\n" + make_source(tok, long_tokens, seed=100 + len(out) * 7)  # uncached
        background = Editor(stub)
        rid = f"long-{label}-{time.time_ns()}"
        background.send(pb.ClientMessage(complete=pb.CompleteRequest(
            request_id=rid, prefix=long_text, sampling=pb.Sampling(max_tokens=1), priority=priority)))
        long_task = asyncio.create_task(background.request(rid))
        await asyncio.sleep(0.3)          # the long prefill is under way
        editor = Editor(stub)
        records = await keystrokes(editor, pb, idle_text, len(idle_text) // 2, mode="document", count=count,
                                   tag=f"under-{label}")
        editor.close()
        if long_task.done():              # keep only the keystrokes answered while it was still prefilling
            long_done_at, long_final = long_task.result()
            records = [r for r in records if r["at"] <= long_done_at]
            state = f"finished ({long_final.prompt_tokens} prompt tokens, prefill {long_final.timings.prefill_ms:.0f} ms)"
        else:                             # still prefilling after the last keystroke: stop it, every one counted
            long_task.cancel()
            background.call.cancel()
            state = "still prefilling after the last keystroke (then cancelled)"
        background.close()
        ttfts = [r["ttft_ms"] for r in records if r["i"] > 0]
        out[label] = {**_pct(ttfts), "long_prompt_tokens": long_tokens, "long_request": state,
                      "keystrokes_during_prefill": len(ttfts)}
        say(f"under a {label} ~{long_tokens}-token prefill: {out[label]}")
    return out


# ---------------------------------------------------------------- the run

def _summary(keys: list[dict], first: dict) -> dict:
    """Per-keystroke figures of one context and mode (keystroke 0, the priming one, left out)."""
    return {
        "prompt_tokens": keys[-1]["prompt_tokens"],
        "first_keystroke_prefill_ms": first["prefill_ms"],
        **{k: _pct([r[k] for r in keys]) for k in ("wire_bytes", "queue_ms", "prefill_ms", "server_first_token_ms",
                                                   "reprefill_tokens")},
    }


async def psm_keystrokes(redis_url: str, engine: dict, tok, contexts, *, count: int) -> dict:
    """Document-mode keystroke TTFT with the prefix-suffix-middle layout, on a replica of its own."""
    import grpc

    from flint.bench.relay import start_worker
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    replica = worker = None
    out: dict = {"ttft_ms": {}, "per_keystroke": {}}
    try:
        replica = _start_replica(redis_url, "kbench-psm", {**engine, "fim_layout": "psm"})
        worker, address = start_worker(redis_url, "kbench-psm-worker", "kbench-psm", journal=True)
        async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = flint_pb2_grpc.FlintStub(ch)
            for ctx in contexts:
                text = make_source(tok, max(ctx - 64, 64), seed=ctx % 97)
                editor = Editor(stub)
                t0 = time.perf_counter()
                records = await keystrokes(editor, pb, text, len(text) // 2, mode="document", count=count,
                                           tag=f"psm{ctx}")
                editor.close()
                keys = [r for r in records if r["i"] > 0]
                out["ttft_ms"][str(ctx)] = _pct([r["ttft_ms"] for r in keys])
                out["per_keystroke"][str(ctx)] = _summary(keys, records[0])
                say(f"psm document @ {ctx}: ttft {out['ttft_ms'][str(ctx)]}, {out['per_keystroke'][str(ctx)]} "
                    f"({time.perf_counter() - t0:.0f} s)")
    finally:
        if worker is not None:
            _stop(worker)
        if replica is not None:
            _stop(replica)
    return out


async def keystroke_bench(*, contexts=CONTEXTS, count: int = 20, long_tokens: int = 32768,
                          kv_cache_bytes: int = 3 << 29, partial_path: str = "", psm_contexts=CONTEXTS) -> dict:
    """The whole run; with `partial_path`, what is measured so far is also written there after each point."""
    import grpc

    from flint.bench.relay import start_worker
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.engine.model.config import ModelConfig
    from flint.engine.tokenizer import Tokenizer
    from flint.security.internal import ensure_process_token
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc
    from flint.valkey import EmbeddedValkey

    ensure_process_token()
    model_dir = ensure_demo_checkpoint()
    tok = Tokenizer.from_dir(model_dir)
    mc = ModelConfig.from_dir(model_dir)
    kv_bytes_per_token = mc.num_layers * mc.num_kv_heads * mc.head_dim * 2 * 4   # K and V, fp32
    engine = {"model": str(model_dir), "kv_cache_bytes": kv_cache_bytes, "fim_layout": "spm"}
    valkey = EmbeddedValkey()
    redis_url = valkey.start()
    replica = worker = None
    result: dict = {"machine": _machine(), "model": f"demo checkpoint ({model_dir.name}): {mc.num_layers} layers, "
                    f"hidden {mc.hidden_size}, {mc.num_kv_heads} KV heads x {mc.head_dim}, fp32, random weights",
                    "engine": engine, "keystrokes_per_point": count}
    try:
        replica = _start_replica(redis_url, "kbench", engine)
        worker, address = start_worker(redis_url, "kbench-worker", "kbench", journal=True)
        say(f"replica + worker up ({address})")
        ttft = {"document": {}, "full_text": {}}
        reprefill, wire, breakdown, tokenize = {"document": {}}, {"document": [], "full_text": []}, {}, {}
        async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = flint_pb2_grpc.FlintStub(ch)
            # idle and under a long prefill first: the 128K point can take long on a busy machine
            idle_text = make_source(tok, 64, seed=5)
            editor = Editor(stub)
            idle = await keystrokes(editor, pb, idle_text, len(idle_text) // 2, mode="document", count=count,
                                    tag="idle")
            editor.close()
            result["idle_ttft_ms"] = _pct([r["ttft_ms"] for r in idle if r["i"] > 0])
            result["under_long_prefill_ttft_ms"] = await under_long_prefill(stub, pb, tok, idle_text, count=count,
                                                                            long_tokens=long_tokens)
            for ctx in contexts:
                # the file fills the context but for the template's tokens and room for the completion
                text = make_source(tok, max(ctx - 64, 64), seed=ctx % 97)
                cursor = len(text) // 2
                tokenize[str(ctx)] = tokenize_ms(tok, text, cursor, count=count)
                for mode in ("document", "full_text"):
                    editor = Editor(stub)
                    t0 = time.perf_counter()
                    records = await keystrokes(editor, pb, text, cursor, mode=mode, count=count, tag=f"f{ctx}")
                    editor.close()
                    keys = [r for r in records if r["i"] > 0]
                    ttft[mode][str(ctx)] = _pct([r["ttft_ms"] for r in keys])
                    wire[mode] += [r["wire_bytes"] for r in keys]
                    if mode == "document":
                        reprefill["document"][str(ctx)] = _pct([r["reprefill_tokens"] for r in keys])
                    breakdown[f"{mode}/{ctx}"] = {
                        **_summary(keys, records[0]),
                        "tokenize_ms": tokenize[str(ctx)]["document" if mode == "document" else "full_text"],
                    }
                    say(f"{mode} @ {ctx}: ttft {ttft[mode][str(ctx)]}, {breakdown[f'{mode}/{ctx}']} "
                        f"({time.perf_counter() - t0:.0f} s)")
                    if partial_path:
                        with open(partial_path, "w") as f:
                            json.dump({**result, "keystroke_ttft_ms": ttft, "per_keystroke": breakdown}, f, indent=2)
        if replica is not None:          # the psm replica gets the machine (and the KV budget) to itself
            _stop(replica)
            replica = None
        if psm_contexts:
            psm = await psm_keystrokes(redis_url, engine, tok, psm_contexts, count=count)
            result["psm_keystroke_ttft_ms"] = psm["ttft_ms"]
            result["psm_per_keystroke"] = psm["per_keystroke"]
            result["psm_note"] = (
                "prefix-suffix-middle layout (fim_layout psm, suffix window 64 tokens), document mode: a keystroke "
                "re-prefills the edited prefix end plus the suffix window, and those tokens attend to the whole "
                "prefix before the cursor, so the cost grows with the context; the 128K budget is taken with the "
                "suffix-first (spm) layout")
        gbps = memory_read_gbps()
        top = max(contexts)
        result.update({
            "keystroke_ttft_ms": ttft,
            "reprefill_tokens": reprefill,
            "wire_bytes_per_keystroke": {m: _pct(v) for m, v in wire.items()},
            "kv_read_bound_ms": {str(top): round(top * kv_bytes_per_token / (gbps * 1e9) * 1e3, 2)},
            "kv_read": {"bytes_per_new_token": top * kv_bytes_per_token, "read_gbps": round(gbps, 2)},
            "per_keystroke": breakdown,
            "not_measured": ["prefix-match ms, attention ms and journal ms are not reported by the server; "
                             "prefill_ms (re-prefilled tokens through the model, attention included) and queue_ms "
                             "come from Final.timings, tokenize_ms is timed in the bench process on the same text"],
        })
        return result
    finally:
        if worker is not None:
            _stop(worker)
        if replica is not None:
            _stop(replica)
        valkey.stop()


def _machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "python": platform.python_version()}


def budgets(r: dict) -> list[tuple[str, str, str]]:
    """(budget, measured, verdict) rows."""
    rows = []
    t = r["keystroke_ttft_ms"]["document"]
    base = t.get("0", {}).get("p50")
    if base and "131072" in t and t["131072"]["p50"] is not None:
        bound = 2 * (base + r["kv_read_bound_ms"]["131072"])
        rows.append(("document TTFT p50 at 128K <= 2 x (no-context TTFT + KV read bound)",
                     f"{t['131072']['p50']} ms vs {bound:.1f} ms", _verdict(t["131072"]["p50"], bound)))
    if base and "8192" in t:
        rows.append(("document TTFT p50 at 8K <= 1.5 x no-context", f"{t['8192']['p50']} ms vs {1.5 * base:.1f} ms",
                     _verdict(t["8192"]["p50"], 1.5 * base)))
    w = r["wire_bytes_per_keystroke"]["document"]["p99"]
    rows.append(("<= 1 KB on the wire per one-character keystroke (document)", f"{w} bytes p99", _verdict(w, 1024)))
    worst = max(v["p99"] for v in r["reprefill_tokens"]["document"].values())
    rows.append(("<= 16 re-prefilled tokens per keystroke (spm)", f"{worst} tokens p99 (worst context)",
                 _verdict(worst, 16)))
    idle = r["idle_ttft_ms"]["p99"]
    for label in ("interactive", "bulk"):
        u = r["under_long_prefill_ttft_ms"].get(label, {}).get("p99")
        if u is not None:
            rows.append((f"TTFT p99 under a 32K {label} prefill <= 3 x idle p99", f"{u} ms vs {3 * idle:.1f} ms",
                         _verdict(u, 3 * idle)))
    return rows


def _verdict(value, bound) -> str:
    return "met" if value <= bound else f"NOT met: {value / bound:.1f}x the budget"


def write_report(r: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "keystroke.json"), "w") as f:
        json.dump(r, f, indent=2)
        f.write("\n")
    lines = ["# flint bench keystroke", "",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, load average "
             f"{', '.join(f'{x:.2f}' for x in r['machine']['load_average'])} when it started (shared with other work). "
             f"Model: {r['model']}. Layout: spm (suffix first). {r['keystrokes_per_point']} one-character "
             "keystrokes per point, cursor mid-file, max_tokens 1; TTFT measured by the client "
             "(send -> first message after Accepted). Reproduce: `flint bench keystroke`.", "",
             "## Budgets", "", "| budget | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in budgets(r)]
    lines += ["", "## Keystroke TTFT (ms)", "", "| cached context (tokens) | document p50 | document p99 | "
              "full text p50 | full text p99 | re-prefilled (document, p99) |", "| --- | --- | --- | --- | --- | --- |"]
    for ctx, d in r["keystroke_ttft_ms"]["document"].items():
        f = r["keystroke_ttft_ms"]["full_text"][ctx]
        lines.append(f"| {ctx} | {d['p50']} | {d['p99']} | {f['p50']} | {f['p99']} | "
                     f"{r['reprefill_tokens']['document'][ctx]['p99']} |")
    lines += ["", "## Per keystroke (p50)", "", "| mode / context | prompt tokens | wire bytes | tokenize ms | "
              "queue ms | prefill ms | re-prefilled tokens |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, b in r["per_keystroke"].items():
        lines.append(f"| {key} | {b['prompt_tokens']} | {b['wire_bytes']['p50']} | {b['tokenize_ms']['p50']} | "
                     f"{b['queue_ms']['p50']} | {b['prefill_ms']['p50']} | {b['reprefill_tokens']['p50']} |")
    if "psm_keystroke_ttft_ms" in r:
        lines += ["", "## Prefix-suffix-middle families (psm, reported separately)", "", r["psm_note"] + ".", "",
                  "| file context (tokens) | prompt tokens | re-prefilled tokens p50 | TTFT p50 | TTFT p99 | "
                  "prefill ms p50 |", "| --- | --- | --- | --- | --- | --- |"]
        for ctx, t in r["psm_keystroke_ttft_ms"].items():
            b = r["psm_per_keystroke"][ctx]
            lines.append(f"| {ctx} | {b['prompt_tokens']} | {b['reprefill_tokens']['p50']} | {t['p50']} | "
                         f"{t['p99']} | {b['prefill_ms']['p50']} |")
    kv = r["kv_read"]
    lines += ["", f"KV read bound at 128K: {kv['bytes_per_new_token'] / 1e6:.0f} MB of K and V per new token / "
              f"{kv['read_gbps']} GB/s read bandwidth (measured in this run) = {r['kv_read_bound_ms']['131072']} ms."
              if "131072" in r["kv_read_bound_ms"] else "", "",
              f"Idle keystroke TTFT: p50 {r['idle_ttft_ms']['p50']} ms, p99 {r['idle_ttft_ms']['p99']} ms. "
              "Under a concurrent long prefill (a fresh prompt on a second stream):", ""]
    for label, u in r["under_long_prefill_ttft_ms"].items():
        lines.append(f"- {label}: p50 {u['p50']} ms, p99 {u['p99']} ms over {u['keystrokes_during_prefill']} "
                     f"keystrokes during a ~{u['long_prompt_tokens']}-token prefill, which was {u['long_request']}")
    lines += ["", "Not measured: " + "; ".join(r["not_measured"]), ""]
    with open(os.path.join(out_dir, "keystroke.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--replica-process"]:
        return _replica_main(argv[1])
    p = argparse.ArgumentParser(prog="flint bench keystroke", description=__doc__.splitlines()[0])
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)),
                   help="cached context sizes in tokens, comma-separated (default %(default)s)")
    p.add_argument("--keystrokes", type=int, default=20, help="keystrokes per context and mode")
    p.add_argument("--long-tokens", type=int, default=32768, help="the concurrent prefill's prompt tokens")
    p.add_argument("--psm-contexts", default=",".join(map(str, CONTEXTS)),
                   help="file sizes for the prefix-suffix-middle figures ('' skips them; default %(default)s)")
    p.add_argument("--out-dir", default="loadtests/results", help="where the JSON and Markdown results go")
    args = p.parse_args(argv)
    contexts = tuple(int(c) for c in args.contexts.split(",") if c.strip())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stopped: still stop the processes it started
    os.makedirs(args.out_dir, exist_ok=True)
    psm_contexts = tuple(int(c) for c in args.psm_contexts.split(",") if c.strip())
    result = asyncio.run(keystroke_bench(contexts=contexts, count=args.keystrokes, long_tokens=args.long_tokens,
                                         partial_path=os.path.join(args.out_dir, "keystroke.partial.json"),
                                         psm_contexts=psm_contexts))
    write_report(result, args.out_dir)
    os.remove(os.path.join(args.out_dir, "keystroke.partial.json"))
    print(json.dumps({k: result[k] for k in ("keystroke_ttft_ms", "wire_bytes_per_keystroke", "kv_read_bound_ms",
                                             "under_long_prefill_ttft_ms", "idle_ttft_ms", "psm_keystroke_ttft_ms")
                      if k in result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
