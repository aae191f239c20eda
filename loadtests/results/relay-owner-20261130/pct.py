"""p50/p90/p99/mean/max of (mark B - mark A) per request in a tr.py trace file (the first 20 requests are warm-up).
Usage: python pct.py TRACE.jsonl A B"""
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])][20:]
a, b = sys.argv[2], sys.argv[3]
d = sorted((r[b] - r[a]) / 1e3 for r in rows if a in r and b in r)
q = lambda p: d[min(len(d) - 1, int(p * len(d)))]
print(f"{b}-{a} us: n={len(d)} p50 {q(.5):.0f} p90 {q(.9):.0f} p99 {q(.99):.0f} mean {statistics.mean(d):.0f} max {d[-1]:.0f}")
