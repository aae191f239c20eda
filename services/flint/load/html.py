"""The self-contained HTML report: one file, inline SVG plots and CSS, no scripts."""

from __future__ import annotations

import json
from html import escape

from flint.load.histogram import LogHistogram
from flint.load.quantile import min_samples, reliable
from flint.load.svg import line_chart, spectrum_chart, stacked_bars

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#111827}
main{max-width:1360px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.sub{color:#4b5563;margin-bottom:14px}.badges span{display:inline-block;padding:3px 10px;border-radius:999px;
font-weight:600;font-size:12px;margin-right:6px}.pass{background:#dcfce7;color:#166534}
.fail{background:#fee2e2;color:#991b1b}.warn{background:#fef3c7;color:#92400e}.info{background:#e0e7ff;color:#3730a3}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:10px 14px}
.card .k{color:#6b7280;font-size:12px}.card .v{font-size:21px;font-weight:650}.card .u{font-size:12px;color:#6b7280}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
.panel{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:12px 14px}
.panel h3{font-size:14px;margin:0 0 6px}.panel p.note{color:#6b7280;font-size:12px;margin:4px 0 0}
svg.chart{width:100%;height:auto}svg .grid{stroke:#eef0f3}svg .frame{fill:none;stroke:#d1d5db}
svg .tick{font-size:11px;fill:#6b7280}svg .axis{font-size:12px;fill:#374151}svg .legend{font-size:11.5px;fill:#374151}
svg .ref{stroke:#991b1b;stroke-dasharray:5 4;stroke-width:1.3}svg .knee{stroke:#166534}
svg .reflabel{font-size:11px;fill:#991b1b}svg .mark{fill:none;stroke:#991b1b;stroke-width:2.2}
.explain{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:8px 14px;color:#374151;font-size:13px}
.hidden-q{color:#9ca3af;font-size:11px}svg .barlabel{font-size:11px;fill:#fff;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:5px 9px;border-bottom:1px solid #eef0f3}th:first-child,td:first-child{text-align:left}
th{background:#f3f4f6;font-weight:600;font-size:12.5px}tr.knee td{background:#ecfdf5;font-weight:600}
details{margin-top:18px}pre{background:#111827;color:#e5e7eb;padding:12px;border-radius:8px;overflow:auto;font-size:12px}
.empty{color:#9ca3af}
"""

_ROWS = (("TTFT (from send)", "ttft_ms"), ("TTFT (from intended time)", "ttft_intended_ms"),
         ("TPOT", "tpot_ms"), ("ITL per token", "itl_ms"), ("Gap between deltas", "delta_gap_ms"),
         ("Max gap per request", "max_gap_ms"), ("End-to-end", "e2e_ms"), ("Schedule lag", "schedule_lag_ms"),
         ("Interrupt to stop", "interrupt_to_stop_ms"), ("Tokens after interrupt", "tokens_after_interrupt"),
         ("Completion tokens", "completion_tokens"), ("Server: queue", "server_queue_ms"),
         ("Server: prefill", "server_prefill_ms"), ("Server: first token", "server_first_token_ms"),
         ("Server: decode", "server_decode_ms"), ("Server: total", "server_total_ms"),
         ("Client TTFT − server first token", "client_overhead_ms"))


def _num(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def _card(k: str, v, unit: str = "", digits: int = 1) -> str:
    return f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{_num(v, digits)} ' \
           f'<span class="u">{escape(unit)}</span></div></div>'


def _pct_card(k: str, v, count: int, q: float, unit: str = "ms", digits: int = 1) -> str:
    """A percentile card, or "–" with the sample count it needs when it has too few (flint.load.quantile)."""
    if reliable(q, count):
        return _card(k, v, unit, digits)
    return (f'<div class="card"><div class="k">{escape(k)}</div><div class="v">– <span class="hidden-q">'
            f'{count:,} samples; needs ≥ {min_samples(q):,}</span></div></div>')


_QS = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999}


def _pct(summary: dict, col: str) -> str:
    """A table cell of a histogram summary; percentiles from too few samples print as "–"."""
    q = _QS.get(col)
    if q is not None and not reliable(q, summary["count"]):
        return f'<span class="hidden-q" title="needs ≥ {min_samples(q):,} samples">–</span>'
    return _num(summary[col])


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><main>{body}</main></body></html>')


def _panel(title: str, content: str, note: str = "") -> str:
    note_html = f'<p class="note">{escape(note)}</p>' if note else ""
    return f'<div class="panel"><h3>{escape(title)}</h3>{content}{note_html}</div>'


def _badges(summary: dict) -> str:
    slo = summary["slo"]
    out = [f'<span class="{"pass" if slo["pass"] else "fail"}">SLO {slo["preset"]} (TTFT p{slo["percentile"]:g} ≤ '
           f'{slo["ttft_ms"]:g} ms, TPOT p{slo["percentile"]:g} ≤ {slo["tpot_ms"]:g} ms): '
           f'{"PASS" if slo["pass"] else "FAIL"}</span>']
    n = summary["metrics"]["ttft_intended_ms"]["count"]
    if not reliable(slo["percentile"] / 100.0, n):
        out.append(f'<span class="warn">verdict indicative only: {n:,} TTFT samples, p{slo["percentile"]:g} needs '
                   f'≥ {min_samples(slo["percentile"] / 100.0):,}</span>')
    if summary["fell_behind"]:
        out.append(f'<span class="warn">generator fell behind: {escape("; ".join(summary["fell_behind_reasons"]))}'
                   '</span>')
    else:
        out.append('<span class="info">generator kept its schedule</span>')
    if summary["errors"]:
        out.append(f'<span class="fail">{summary["errors"]} errors</span>')
    return f'<div class="badges">{"".join(out)}</div>'


def run_sections(report: dict) -> str:
    """Cards, plots and tables of one run (also used for the knee step of a capacity report)."""
    s, partial = report["summary"], report["partial"]
    m, limits = s["metrics"], s["slo"]
    hists = {k: LogHistogram.from_dict(v) for k, v in partial["hists"].items()}
    p, q = limits["percentile"], limits["percentile"] / 100.0
    pct = f'p{p:g}'
    n_ttft, n_tpot = m["ttft_intended_ms"]["count"], m["tpot_ms"]["count"]
    parts = [_badges(s), '<div class="cards">',
             _card("offered", s["offered_rps"], "req/s", 2), _card("achieved", s["achieved_rps"], "req/s", 2),
             _card("goodput", s["goodput_rps"], "req/s", 2), _card("good", (s["good_fraction"] or 0) * 100, "%"),
             _pct_card("TTFT p50", m["ttft_intended_ms"]["p50"], n_ttft, 0.5),
             _pct_card(f"TTFT {pct}", s["slo"]["ttft_at_percentile_ms"], n_ttft, q),
             _pct_card("TPOT p50", m["tpot_ms"]["p50"], n_tpot, 0.5, digits=2),
             _pct_card(f"TPOT {pct}", s["slo"]["tpot_at_percentile_ms"], n_tpot, q, digits=2),
             _card("tokens/s", s["tokens_per_s"], ""), _card("requests", s["requests"]),
             _card("interrupted", s["interrupted"]), _card("stalls", s["stalls"]), "</div>", _explain_goodput(s)]
    spec = lambda label, name: (label, hists[name].cdf(), hists[name].count)   # noqa: E731
    lat = spectrum_chart([spec("TTFT from intended", "ttft_intended_ms"), spec("TTFT from send", "ttft_ms"),
                          spec("end-to-end", "e2e_ms")], y_label="milliseconds",
                         marks=[(p, limits["ttft_ms"], f'SLO: TTFT {pct} ≤ {limits["ttft_ms"]:g} ms')])
    tok = spectrum_chart([spec("ITL per token", "itl_ms"), spec("TPOT per request", "tpot_ms"),
                          spec("gap between deltas", "delta_gap_ms")], y_label="milliseconds",
                         marks=[(p, limits["tpot_ms"], f'SLO: TPOT {pct} ≤ {limits["tpot_ms"]:g} ms')])
    parts.append('<h2>Latency by percentile</h2><div class="grid2">')
    parts.append(_panel("Time to first token and end-to-end", lat,
                        "Each step is the latency at that percentile; the tail is spread out on a log scale "
                        "(50%, 90%, 99%, 99.9% equally spaced), the largest sample at the right edge. The ring "
                        "is the SLO target: the TTFT-from-intended line must pass below it. From intended time "
                        "includes any delay in sending (coordinated omission corrected)."))
    parts.append(_panel("Between tokens", tok, "A delta carrying n tokens after a gap g counts n samples of g/n."))
    parts.append("</div>")
    parts.append('<h2>Over time</h2><div class="grid2">' + _timeline(partial) + "</div>")
    parts.append('<h2>Where the time went</h2><div class="grid2">' + _panel("Mean TTFT by stage", _stages(m),
                 "Means add up; percentiles do not. Server stages come from each request's Final message.") +
                 _panel("Outcomes", _outcomes(s)) + "</div>")
    if report.get("consistency"):
        parts.append("<h2>Client vs server</h2>" + _consistency_table(report["consistency"]))
    parts.append("<h2>All metrics (ms unless noted)</h2>" + _metric_table(m))
    if report.get("generators"):
        parts.append("<h2>Generators</h2>" + _generator_table(report["generators"]))
    return "".join(parts)


def _timeline(partial: dict) -> str:
    tl = {int(k): v for k, v in partial["timeline"].items()}
    ttft = {int(k): LogHistogram.from_dict(v) for k, v in partial["timeline_ttft"].items()}
    keys = list(tl) + list(ttft)
    secs = list(range(min(keys), max(keys) + 1)) if keys else []   # every second: an idle one counts as 0
    count = lambda key: [(t, tl.get(t, {}).get(key, 0)) for t in secs]   # noqa: E731
    rate = [("intended req/s", count("intended")), ("sent req/s", count("sent")), ("ended req/s", count("done")),
            ("errors/s", count("errors"))]

    def per_second(q: float) -> list[tuple[int, float | None]]:   # None (a gap) where a second has too few
        return [(t, ttft[t].quantile(q) if t in ttft and reliable(q, ttft[t].count) else None) for t in secs]

    lat = [("TTFT max", [(t, ttft[t].max if t in ttft else None) for t in secs]), ("TTFT p90", per_second(0.9)),
           ("TTFT p50", per_second(0.5))]
    tokens = [("tokens/s", count("tokens"))]
    return (_panel("Request rate", line_chart(rate, x_label="seconds since start", y_label="requests per second",
                                              markers=True)) +
            _panel("TTFT by intended send second", line_chart(lat, x_label="seconds since start", y_label="ms",
                                                             markers=True),
                   "A percentile is drawn only for seconds with enough requests for it (p50: 10, p90: 50); "
                   "a second without any has no point, so lines break there instead of bridging it.") +
            _panel("Token throughput", line_chart(tokens, x_label="seconds since start", y_label="tokens per second")))


def _explain_goodput(s: dict) -> str:
    slo = s["slo"]
    p = f'p{slo["percentile"]:g}'
    return (f'<p class="explain"><b>good</b> is the share of judged requests that each met the SLO on their own '
            f'(no error, TTFT from intended time ≤ {slo["ttft_ms"]:g} ms and TPOT ≤ {slo["tpot_ms"]:g} ms); '
            f'<b>goodput</b> is how many such requests completed per second over the run '
            f'({s["good"]:,} good in {s["span_s"]:g} s). The SLO verdict is a different question: whether the '
            f'{p} of all requests stays under the limits, so a run can pass with good below 100%, and goodput '
            f'is the rate a capacity plan can count on. Requests interrupted before their first token '
            f'(superseded) are not judged.</p>')


def _stages(m: dict) -> str:
    mean = lambda k: m[k]["mean"] or 0.0   # noqa: E731
    if not m["server_first_token_ms"]["count"]:
        return stacked_bars([("client TTFT", [("client TTFT", mean("ttft_ms"))])])
    first_other = max(0.0, mean("server_first_token_ms") - mean("server_queue_ms") - mean("server_prefill_ms"))
    return stacked_bars([
        ("client TTFT", [("server queue", mean("server_queue_ms")), ("server prefill", mean("server_prefill_ms")),
                         ("server: rest to 1st token", first_other),
                         ("network + front-end + client", max(0.0, mean("client_overhead_ms")))]),
        ("server total", [("server queue", mean("server_queue_ms")), ("server prefill", mean("server_prefill_ms")),
                          ("server: rest to 1st token", first_other), ("server decode", mean("server_decode_ms"))]),
    ])


def _outcomes(s: dict) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td></tr>" for k, v in sorted(s["finish_reasons"].items()))
    errs = "".join(f"<tr><td>error {escape(k)}</td><td>{v:,}</td></tr>" for k, v in sorted(s["errors_by_code"].items()))
    extra = (f"<tr><td>superseded (interrupted before 1st token)</td><td>{s['superseded']:,}</td></tr>"
             f"<tr><td>deltas after interrupt ack</td><td>{s['deltas_after_ack']:,}</td></tr>"
             f"<tr><td>seq errors</td><td>{s['seq_errors']:,}</td></tr>"
             f"<tr><td>prompt tokens (from prefix cache), completed requests</td><td>{s['prompt_tokens']:,} ({s['cached_prompt_tokens']:,})</td></tr>")
    return f"<table><tr><th>outcome</th><th>requests</th></tr>{rows}{errs}{extra}</table>"


def _metric_table(m: dict) -> str:
    cols = ("count", "mean", "p50", "p90", "p99", "p999", "max")
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = "".join(f"<tr><td>{escape(label)}</td>" + "".join(f"<td>{_pct(m[key], c)}</td>" for c in cols) + "</tr>"
                   for label, key in _ROWS if m.get(key, {}).get("count"))
    return (f"<table><tr><th>metric</th>{head}</tr>{rows}</table><p class='note'>– in a percentile column: too few "
            "samples for it (at least 5 must lie at or above it: p50 needs 10, p90 50, p99 500, p99.9 5,000). "
            "All percentiles are nearest-rank, as in <code>flint load compare</code>.</p>")


def _consistency_table(checks: list[dict]) -> str:
    verdict = {True: "<span class='pass'>consistent</span>", False: "<span class='fail'>differs</span>",
               None: "–"}
    rows = "".join(f"<tr><td>{escape(c['check'])}</td><td>{_num(c['client'])}</td><td>{_num(c['server'])}</td>"
                   f"<td>±{c['tolerance'] * 100:g}%{' or ' + format(c.get('abs_tolerance'), 'g') + ' ms' if c.get('abs_tolerance') else ''}</td><td class='badges'>{verdict[c['ok']]}</td>"
                   f"<td>{escape(c['note'])}</td></tr>" for c in checks)
    return ("<table><tr><th>check</th><th>client</th><th>server</th><th>tolerance</th><th>verdict</th>"
            f"<th>note</th></tr>{rows}</table>")


def _generator_table(gens: list[dict]) -> str:
    rows = "".join(f"<tr><td>{g['index']}</td><td>{g['requests']:,}</td><td>{g['cpu_s']:.2f}</td>"
                   f"<td>{(g['cpu_util'] or 0) * 100:.0f}%</td><td>{_num(g['loop_lag_ms']['p50'], 2)}</td>"
                   f"<td>{_num(g['loop_lag_ms']['p99'], 2)}</td><td>{_num(g['loop_lag_ms']['max'], 2)}</td></tr>"
                   for g in gens)
    return ("<table><tr><th>generator</th><th>requests</th><th>CPU s</th><th>CPU of one core</th>"
            f"<th>loop lag p50 ms</th><th>loop lag p99 ms</th><th>loop lag max ms</th></tr>{rows}</table>")


def _header(title: str, report: dict, extra: str = "") -> str:
    cfg, sc, mach, tgt = report["config"], report["scenario"], report["machine"], report.get("target", {})
    arrival = cfg["arrival"]
    return (f"<h1>{escape(title)}</h1><div class='sub'>scenario <b>{escape(sc['name'])}</b> v{sc['version']} "
            f"seed {sc['seed']} · arrival {escape(arrival['kind'])} · target {escape(tgt.get('protocol', ''))} "
            f"{escape(tgt.get('address', ''))} model <b>{escape(str(tgt.get('model', '')))}</b> · "
            f"{escape(mach.get('cpu_model', ''))} ({mach.get('cpus')} CPUs) · {escape(report['created_utc'])}"
            f"{extra}</div>")


def render_run(report: dict) -> str:
    body = _header(f"flint load · {report.get('label') or report['scenario']['name']}", report)
    body += run_sections(report)
    body += ("<details><summary>Run configuration and scenario parameters</summary><pre>"
             f"{escape(json.dumps({'config': report['config'], 'scenario': report['scenario']}, indent=2))}"
             "</pre></details>")
    return _page("flint load report", body)


def _slo_pct(s: dict, which: str) -> str:
    """A capacity step's TTFT/TPOT at the SLO percentile, "–" when the step had too few samples for it."""
    metric = {"ttft": "ttft_intended_ms", "tpot": "tpot_ms"}[which]
    q = s["slo"]["percentile"] / 100.0
    if not reliable(q, s["metrics"][metric]["count"]):
        return f'<span class="hidden-q" title="needs ≥ {min_samples(q):,} samples">–</span>'
    return _num(s["slo"][f"{which}_at_percentile_ms"], 1 if which == "ttft" else 2)


def render_capacity(cap: dict) -> str:
    steps = cap["steps"]
    unit, knee = cap["level_unit"], cap.get("knee")
    pts = lambda f: [(st["level"], f(st["summary"])) for st in steps]   # noqa: E731
    limits = cap["slo"]
    knee_lines = [(knee["level"], f"knee {knee['level']:g}")] if knee else []
    lat = line_chart([("TTFT p%g (from intended)" % limits["percentile"], pts(lambda s: s["slo"]["ttft_at_percentile_ms"])),
                      ("TTFT p50", pts(lambda s: s["metrics"]["ttft_intended_ms"]["p50"]))],
                     x_label=f"load ({unit})", y_label="ms", markers=True, vlines=knee_lines,
                     hlines=[(limits["ttft_ms"], f"SLO {limits['ttft_ms']:g} ms")])
    tpot = line_chart([("TPOT p%g" % limits["percentile"], pts(lambda s: s["slo"]["tpot_at_percentile_ms"]))],
                      x_label=f"load ({unit})", y_label="ms", markers=True, vlines=knee_lines,
                      hlines=[(limits["tpot_ms"], f"SLO {limits['tpot_ms']:g} ms")])
    thr = line_chart([("offered req/s", pts(lambda s: s["offered_rps"])), ("achieved req/s", pts(lambda s: s["achieved_rps"])),
                      ("goodput req/s", pts(lambda s: s["goodput_rps"]))], x_label=f"load ({unit})",
                     y_label="requests per second", markers=True, vlines=knee_lines)
    first = steps[-1]["report"] if steps else None
    verdict = cap["verdict"]
    cls = "pass" if knee and not cap.get("generator_bound") else ("warn" if knee else "fail")
    body = _header("flint load · capacity", first, "") if first else "<h1>flint load · capacity</h1>"
    body += f'<div class="badges"><span class="{cls}">{escape(verdict)}</span></div>'
    if cap.get("calibration"):
        c = cap["calibration"]
        reached = "not reached up to" if c.get("reached_max_level") else "at"
        body += (f"<p class='sub'>Generator ceiling (self-calibration against the mock token server): {reached} "
                 f"<b>{_num(c.get('ceiling_level'), 2)} {escape(unit)}</b> "
                 f"({_num(c.get('ceiling_rps'), 1)} req/s, {_num(c.get('ceiling_tokens_per_s'), 0)} tokens/s "
                 "driven without falling behind).</p>")
    body += '<h2>Capacity curve</h2><div class="grid2">' + _panel("TTFT vs load", lat) + _panel("TPOT vs load", tpot) + \
            _panel("Throughput and goodput vs load", thr) + "</div>"
    rows = []
    for st in steps:
        s = st["summary"]
        is_knee = knee is not None and st["level"] == knee["level"]
        rows.append(f"<tr class='{'knee' if is_knee else ''}'><td>{st['level']:g}</td><td>{s['offered_rps']:.2f}</td>"
                    f"<td>{s['achieved_rps']:.2f}</td><td>{s['goodput_rps']:.2f}</td>"
                    f"<td>{_slo_pct(s, 'ttft')}</td><td>{_slo_pct(s, 'tpot')}</td>"
                    f"<td>{s['error_rate'] * 100:.1f}%</td><td>{'yes' if s['fell_behind'] else 'no'}</td>"
                    f"<td>{'PASS' if s['slo']['pass'] else 'FAIL'}</td><td>{escape(st.get('dir', ''))}</td></tr>")
    body += ("<h2>Steps</h2><table><tr><th>load</th><th>offered req/s</th><th>achieved req/s</th><th>goodput req/s</th>"
             f"<th>TTFT p{limits['percentile']:g} ms</th><th>TPOT p{limits['percentile']:g} ms</th><th>errors</th>"
             f"<th>generator behind</th><th>SLO</th><th>run</th></tr>{''.join(rows)}</table>")
    knee_step = next((st for st in steps if knee and st["level"] == knee["level"]), None)
    if knee_step is not None:
        body += f"<h2>The knee step ({knee['level']:g} {escape(unit)})</h2>" + run_sections(knee_step["report"])
    return _page("flint load capacity report", body)
