import sys, json
pair = None
rows = []
for line in open(sys.argv[1]):
    if line.startswith("pair"):
        pair = line.split()[1]
    elif line.startswith("{"):
        r = json.loads(line); t = r["to_stream_end_ms"]
        rows.append((pair, r["label"], r["load_start"][0], t["p50"], t["p90"], t["p99"], t["n"], r["deltas_after_ack"], len(r["samples_stuck"])))
print("| pair | code | load before | p50 ms | p90 ms | p99 ms | n | deltas after ack | stuck |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print("| %s | %s | %.2f | %.2f | %.2f | %.2f | %d | %d | %d |" % r)
import statistics
for code in ("base", "resp"):
    m = [r for r in rows if r[1] == code]
    print(code, "median p50 %.2f p99 %.2f; p99 range %.2f-%.2f; p50 range %.2f-%.2f" % (statistics.median(r[3] for r in m), statistics.median(r[5] for r in m), min(r[5] for r in m), max(r[5] for r in m), min(r[3] for r in m), max(r[3] for r in m)))
