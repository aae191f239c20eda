"""Are the client's figures consistent with the server's own?

Two sources of the server's view:
- every Final message (completion tokens, queue/prefill/first-token times),
  always available on the flint target;
- optionally its Prometheus endpoint (`--server-metrics URL`, loopback
  only), scraped before and after the run; counters are compared as deltas.
A check passes when the two sides agree within its tolerance; the report
shows each side, so a mismatch says which figure to distrust.
"""

from __future__ import annotations

import re
import urllib.request

from flint.load.record import RequestRecord

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Prometheus text format -> {name: value summed over label sets} plus {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:   # noqa: S310 (loopback-only, checked)
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            if m.group(2):
                out[m.group(1) + m.group(2)] = float(m.group(3))
    return out


def _labelled(delta: dict[str, float], name: str, label: str) -> float | None:
    """Sum of a metric's series whose label set contains `label` (e.g. 'outcome="interrupted"')."""
    keys = [k for k in delta if k.startswith(name + "{") and label in k]
    return sum(delta[k] for k in keys) if keys else None


def _check(name: str, client: float | None, server: float | None, rel_tol: float, note: str,
           abs_tol: float = 0.0) -> dict:
    """Agreement within rel_tol of the larger side, or within abs_tol (ms of relay are fine on short TTFTs)."""
    ok = None
    if client is not None and server is not None:
        ok = abs(client - server) <= max(rel_tol * max(abs(server), abs(client), 1.0), abs_tol)
    return {"check": name, "client": client, "server": server, "tolerance": rel_tol, "abs_tolerance": abs_tol,
            "ok": ok, "note": note}


def consistency(records: list[RequestRecord], before: dict | None = None, after: dict | None = None) -> list[dict]:
    finals = [r for r in records if r.completion_tokens is not None and r.ok]
    checks = []
    if finals:
        streamed = sum(r.accounted_tokens for r in finals)
        reported = sum(r.completion_tokens for r in finals)
        checks.append(_check("tokens streamed vs Final.completion_tokens", streamed, reported, 0.02,
                             "tokens without text and stop strings are counted in withheld_tokens"))
        timed = [r for r in finals if r.server.get("first_token_ms") and r.ttft_ms is not None
                 and not r.interrupted]
        if timed:
            client = sum(r.ttft_ms for r in timed) / len(timed)
            server = sum(r.server["first_token_ms"] for r in timed) / len(timed)
            checks.append(_check("mean TTFT: client vs server first_token_ms", client, server, 0.25,
                                 "client adds network, front-end relay and its own reading", abs_tol=10.0))
    if before and after:
        delta = {k: after[k] - before.get(k, 0.0) for k in after}
        checks.extend(_frontend_checks(records, delta))
        if "flint_engine_decode_tokens_total" not in delta:
            return checks
        decode = delta.get("flint_engine_decode_tokens_total")
        client_tokens = sum(r.completion_tokens or 0 for r in records)
        checks.append(_check("generated tokens: Finals vs engine counter", client_tokens, decode, 0.05,
                             "engine counter delta over the run (includes other clients, if any)"))
        ttft_n = delta.get("flint_engine_time_to_first_token_seconds_count")
        first_tokens = sum(1 for r in records if (r.completion_tokens or 0) > 0)
        checks.append(_check("requests with a first token: client vs engine", first_tokens, ttft_n, 0.05, ""))
        if ttft_n:
            server_ttft = 1000.0 * delta.get("flint_engine_time_to_first_token_seconds_sum", 0.0) / ttft_n
            client = [r.ttft_ms for r in records if r.ttft_ms is not None]
            checks.append(_check("mean TTFT: client vs engine histogram", sum(client) / len(client) if client else None,
                                 server_ttft, 0.5, "engine TTFT starts at the engine, the client's at its send"))
    return checks


def _frontend_checks(records: list[RequestRecord], delta: dict[str, float]) -> list[dict]:
    """Against the front-end worker's flint_frontend_* metrics (see flint.observability.metrics)."""
    checks = []
    if "flint_frontend_requests_total" in delta:
        ended = sum(1 for r in records if r.t_end_ms is not None and r.error_code not in ("ABANDONED", "TIMEOUT"))
        checks.append(_check("requests ended: client vs front-end counter", ended,
                             delta["flint_frontend_requests_total"], 0.02, "flint_frontend_requests_total delta"))
        interrupted = _labelled(delta, "flint_frontend_requests_total", 'outcome="interrupted"')
        client_interrupted = sum(1 for r in records if r.finish_reason == "interrupted")
        checks.append(_check("interrupted: client vs front-end counter", client_interrupted, interrupted or 0.0,
                             0.02, "outcome=\"interrupted\" series"))
    n = _labelled(delta, "flint_frontend_stage_seconds_count", 'stage="first_delta"')
    if n:
        server_ms = 1000.0 * (_labelled(delta, "flint_frontend_stage_seconds_sum", 'stage="first_delta"') or 0.0) / n
        ttfts = [r.ttft_ms for r in records if r.ttft_ms is not None]
        checks.append(_check("mean TTFT: client vs front-end first_delta", sum(ttfts) / len(ttfts) if ttfts else None,
                             server_ms, 0.25, "front-end: arrival -> first delta relayed; client adds the network",
                             abs_tol=10.0))
        checks.append(_check("requests with a first delta: client vs front-end", len(ttfts), n, 0.05,
                             "the front-end also counts deltas that carry no token"))
    return checks
