"""usage: summarize.py RUN.jsonl: per variant, the p50 and p99 of the per-sample differences in every round (added =
minus the direct call; vs = minus the baseline variant's (the run's first), + = slower), the median of the round
p50s, and the proxy process's CPU per request."""
import json, statistics, sys


def cols(values, fmt):
    return " ".join(format(x, fmt) for x in values)


rows = [json.loads(line) for line in open(sys.argv[1])]
names = [n for n in rows[0]["result"] if n != "direct"]
direct = " / ".join(str(r["result"]["direct"]["ttft_ms"]["p50"]) for r in rows)
print(f"{len(rows)} rounds of {rows[0]['result']['direct']['ttft_ms']['n']} samples; {rows[0]['cpu']}; load (1-min) "
      f"{min(r['load_start'][0] for r in rows)}-{max(r['load_end'][0] for r in rows)}; direct TTFT p50 {direct} ms")
for n in names:
    a50 = [r["result"][n]["added_ttft_ms"]["p50"] for r in rows]
    a99 = [r["result"][n]["added_ttft_ms"]["p99"] for r in rows]
    v50 = [r["result"][n]["vs_baseline_ms"]["p50"] for r in rows]
    v99 = [r["result"][n]["vs_baseline_ms"]["p99"] for r in rows]
    cpu = [r.get("proxy_cpu_us_per_request", {}).get(n) for r in rows]
    print(f"{n:13s} added p50 {cols(a50, '6.3f')} | median {statistics.median(a50):6.3f} | p99 {cols(a99, '5.2f')}")
    line = f"{'':13s} vs    p50 {cols(v50, '+6.3f')} | median {statistics.median(v50):+6.3f} | p99 {cols(v99, '5.2f')}"
    if cpu[0] is not None:
        line += f" | proxy CPU us/req {' '.join(str(c) for c in cpu)}"
    print(line)
