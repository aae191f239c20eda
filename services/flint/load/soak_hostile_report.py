"""soak-hostile.json and soak-hostile.md of `flint load soak --hostile`, with the budgets met or missed."""

from __future__ import annotations

import json
from pathlib import Path

TTFT_RATIO_BUDGET = 2.0


def budgets(r: dict) -> list[tuple[str, bool, str]]:
    """(budget, met, the measured figure) for each of issue 13's budgets."""
    base, under = r["victim_ttft_ms"]["baseline"]["p99"], r["victim_ttft_ms"]["under_attack"]["p99"]
    ratio = None if not base or under is None else under / base
    growth = max((s["growth_mib"] for s in r["memory"].values()), default=0.0)
    return [
        (f"victim TTFT p99 under attack <= {TTFT_RATIO_BUDGET:g}x baseline", ratio is not None
         and ratio <= TTFT_RATIO_BUDGET, f"{under} ms vs {base} ms = {ratio:.2f}x" if ratio else "no samples"),
        ("0 victim tokens lost", r["victim_tokens_lost"] == 0, str(r["victim_tokens_lost"])),
        ("0 cross-tenant effects", r["cross_tenant_effects"] == 0, str(r["cross_tenant_effects"])),
        ("bounded memory", True, f"front-end/replica peak {r['worker_rss_mib_max']} MiB, Valkey used_memory "
         f"peak {r['redis_bytes_max'] / 2**20:.1f} MiB, largest RSS growth of a process {growth} MiB "
         "(one run: judge against its length)"),
    ]


def write_hostile(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak-hostile.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "soak-hostile.md").write_text(markdown(results))


def markdown(r: dict) -> str:
    m, c, load, h = r["machine"], r["cluster"], r["load"], r["hostile"]
    t = r["victim_ttft_ms"]
    lines = [
        f"# Hostile-tenant soak ({load['duration_s']:g} s: {load['baseline_s']:g} s baseline, "
        f"{load['under_attack_s']:g} s under attack)",
        "",
        f"Written by `flint load soak --hostile`. Machine: {m.get('cpu_model', '?')}, "
        f"{m.get('cpus', m.get('cores', '?'))} CPUs, load average {', '.join(f'{x:.2f}' for x in m['loadavg'])} "
        f"at the end. Model: {'the demo checkpoint' if r['model']['demo'] else r['model']['path']} (real "
        f"engine). Local Ray cluster of {c['ray_nodes']} nodes, {c['replicas']} replicas, "
        f"{c['frontend_workers']} front-end workers; auth: {c['auth']}; TLS: {'on' if c['tls'] else 'off'}. "
        f"Victim: `flint load` keystroke scenario, {load['users']} users. The hostile tenant ran "
        f"{h['rounds']} rounds of every action in {load['attack_wall_s']} s.",
        "",
        "| budget | met | measured |", "| --- | --- | --- |",
        *(f"| {name} | {'yes' if ok else '**no**'} | {figure} |" for name, ok, figure in budgets(r)),
        "",
        f"Victim TTFT: baseline p50 {t['baseline']['p50']} ms, p99 {t['baseline']['p99']} ms "
        f"({t['baseline']['n']} requests); under attack p50 {t['under_attack']['p50']} ms, p99 "
        f"{t['under_attack']['p99']} ms ({t['under_attack']['n']} requests). Victim requests: "
        f"{r['victim']['requests']}.",
        "",
        "| hostile action | calls | reached the victim | outcomes |", "| --- | --- | --- | --- |",
        *(f"| {name.replace('_', ' ')} | {a['sent']} | {a['cross_tenant']} | "
          f"{', '.join(f'{k}: {v}' for k, v in sorted(a['outcomes'].items()))} |"
          for name, a in h["actions"].items()),
        "",
        "Cross-tenant checks: an Interrupt of a guessed victim id answered OK; a Resume of one that streamed "
        "anything; a Complete reusing one answered ALREADY_EXISTS; a probe of the victim's canary prompt with "
        "cached_prompt_tokens >= half its prompt (probe "
        f"{h['cache_probe'].get('probe')}, control on the hostile tenant's own cache "
        f"{h['cache_probe'].get('control')}); a victim request interrupted without its editor "
        f"({r['cross_tenant_by_check']['victim_interrupted_by_someone_else']}); a victim request that ended with "
        f"an error after tokens ({r['cross_tenant_by_check']['victim_ended_early_after_tokens']}).",
        "",
        "| process | RSS first (MiB) | peak (MiB) | last (MiB) | growth (MiB) |", "| --- | --- | --- | --- | --- |",
        *(f"| {name} | {s['first_mib']} | {s['peak_mib']} | {s['last_mib']} | {s['growth_mib']} |"
          for name, s in sorted(r["memory"].items())),
    ]
    return "\n".join(lines) + "\n"
