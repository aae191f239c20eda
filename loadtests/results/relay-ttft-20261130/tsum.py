"""p50 of each time stamp over the requests in a trace file (the first 20 are warm-up)."""
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][20:]
keys = {}
for r in rows:
    for k, v in r.items():
        if k != "t0": keys.setdefault(k, []).append(v / 1e3)
for k, v in sorted(keys.items(), key=lambda kv: statistics.median(kv[1])):
    print(f"{k:18s} p50 {statistics.median(v):8.1f} us  n={len(v)}")
