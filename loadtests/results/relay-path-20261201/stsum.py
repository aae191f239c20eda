import sys, collections, numpy as np
rows = []
for line in open(sys.argv[1]):
    pid, tag, t = line.split(); rows.append((int(t), tag, pid))
rows.sort()
segs, cur = [], None
s3 = {}
for t, tag, pid in rows:
    if tag == "C0":
        cur = [(tag, t)]; segs.append(cur); s3[id(cur)] = [(tag, t, pid)]
    elif cur is not None:
        cur.append((tag, t)); s3[id(cur)].append((tag, t, pid))
iv = collections.defaultdict(list)
n = 0
for s in segs:
    tags = [x[0] for x in s]
    if "W0" not in tags or "C1" not in tags: continue
    if len(sys.argv) > 2 and sys.argv[2] not in [p for (tg, t, p) in s3[id(s)] if tg == "W0"]: continue
    n += 1
    # first occurrence of each tag, keep order
    seen = {}
    order = []
    for tag, t in s:
        key = tag
        k = 1
        while key in seen:
            k += 1; key = f"{tag}#{k}"
        seen[key] = t; order.append(key)
    t0 = seen["C0"]
    for a, b in zip(order, order[1:]):
        iv[(a, b)].append((seen[b] - seen[a]) / 1e3)
    iv[("C0", "C1 total")].append((seen["C1"] - t0) / 1e3)
print("worker calls", n)
cnt = collections.Counter()
for s in segs:
    tags = tuple(x[0] for x in s)
    if "W0" in tags: cnt[tags] += 1
for tags, c in cnt.most_common(3): print(c, " ".join(tags))
for (a, b), v in sorted(iv.items(), key=lambda kv: -len(kv[1])):
    if len(v) < n * 0.3: continue
    v = np.array(v)
    print(f"{a:>12s} -> {b:12s} n {len(v):4d} p50 {np.median(v):8.1f} us  p10 {np.percentile(v,10):8.1f}  p90 {np.percentile(v,90):8.1f}")
