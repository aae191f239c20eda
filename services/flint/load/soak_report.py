"""Accounting and files of `flint load soak`: what every request received against what the server sent."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from flint.load.record import RequestRecord


def account(records: list[RequestRecord]) -> dict:
    """Requests by outcome and tokens received vs the server's Final, per request.

    A completed request must have delta seqs 1, 2, ..., n (no gap, no repeat) and as many tokens as its
    Final.completion_tokens says were generated. A request that failed after receiving tokens was cut off:
    the client never got the rest of it.
    """
    completed = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    lost = extra = gaps = repeats = 0
    mismatched = []
    for r in completed:
        seqs = [int(d[1]) for d in r.deltas]
        repeats += len(seqs) - len(set(seqs))
        gaps += len(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
        if r.completion_tokens is not None:
            lost += max(0, r.completion_tokens - r.accounted_tokens)
            extra += max(0, r.accounted_tokens - r.completion_tokens)
            if r.accounted_tokens != r.completion_tokens:
                mismatched.append({"id": r.id, "finish_reason": r.finish_reason, "resumes": r.resumes,
                                   "received": r.tokens, "final_completion_tokens": r.completion_tokens,
                                   "interrupt_mode": r.interrupt_mode})
    cut_off = [r for r in failed if r.tokens > 0]
    return {
        "requests": {
            "sent": len(records),
            "completed": len(completed),
            "completed_after_resume": sum(1 for r in completed if r.resumes),
            "interrupted_by_the_editor": sum(1 for r in completed if r.finish_reason == "interrupted"),
            "failed": len(failed),
            "failed_by_status": dict(Counter(r.error_code for r in failed)),
            "failed_after_tokens": len(cut_off),
        },
        "tokens": {"received": sum(r.tokens for r in records), "lost": lost, "extra": extra,
                   "seq_gaps": gaps, "seq_repeats": repeats,
                   "received_by_cut_off_requests": sum(r.tokens for r in cut_off)},
        "token_mismatches": mismatched[:20],
        "failures": [{"id": r.id, "code": r.error_code, "message": r.error_message, "tokens": r.tokens}
                     for r in failed[:20]],
    }


def write_results(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "soak.md").write_text(markdown(results))


def markdown(r: dict) -> str:
    m, c, load, req, tok = r["machine"], r["cluster"], r["load"], r["requests"], r["tokens"]
    lines = [
        f"# Soak run with injected faults ({load['duration_s']:g} s of load)",
        "",
        f"Written by `flint load soak`. Machine: {m.get('cpu_model', '?')}, {m.get('cpus', m.get('cores', '?'))} "
        f"CPUs. Model: {'the demo checkpoint' if r['model']['demo'] else r['model']['path']} (real engine). "
        f"Local Ray cluster of {c['ray_nodes']} nodes (head + {c['ray_nodes'] - 1} workers, one `ray start` "
        f"process tree each), {c['replicas']} engine replica actors (one per worker node, restarted by Ray), "
        f"{c['frontend_workers']} front-end worker processes on one port, embedded Valkey. Load: `flint load` "
        f"keystroke scenario, {load['users']} users, lost streams resumed by the load target.",
        "",
        "| requests | count |", "| --- | --- |",
        *(f"| {k.replace('_', ' ')} | {v} |" for k, v in req.items() if k != "failed_by_status"),
        *(f"| failed: {code} | {n} |" for code, n in req["failed_by_status"].items()),
        "",
        f"Tokens received: {tok['received']}; **tokens lost: {tok['lost']}** (completed requests: tokens received "
        f"vs Final.completion_tokens); extra: {tok['extra']}; seq gaps: {tok['seq_gaps']}; seq repeats: "
        f"{tok['seq_repeats']}; requests cut off after tokens: {req['failed_after_tokens']}.",
        *([""] + [f"Extra tokens ({tok['extra']}) are tokens received beyond the request's Final.completion_tokens, "
                  "not repeats (seq repeats above): see `token_mismatches` in soak.json for which requests."]
          if tok["extra"] else []),
        "",
        "| fault at | kind | process | replacement |", "| --- | --- | --- | --- |",
        *(f"| {f['t_s']} s | {f['kind']} | {f['process']} | {f['replacement']} |" for f in r["faults"]),
        "",
        "| process | pid | RSS first (MiB) | RSS last (MiB) | peak (MiB) | growth (MiB) | sampled for (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {name} | {s['pid']} | {s['first_mib']} | {s['last_mib']} | {s['peak_mib']} | {s['growth_mib']} | "
          f"{s['sampled_s']} |" for name, s in sorted(r["memory"].items())),
        "",
        "Processes replaced during the run (killed or drained workers, crashed replicas: `replica-wN#k` is the "
        "k-th process of that replica) are measured while they lived.",
    ]
    if r["failures"]:
        lines += ["", "First failures:", ""]
        lines += [f"- {f['id']}: {f['code']} ({f['tokens']} tokens received): {f['message']}" for f in r["failures"]]
    return "\n".join(lines) + "\n"
