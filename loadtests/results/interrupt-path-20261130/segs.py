import sys, glob, collections, statistics
def load(d):
    ev = collections.defaultdict(dict)
    for f in glob.glob(d + "/*.txt"):
        for line in open(f):
            t, name, rid = (line.split() + [""])[:3]
            rid = rid.rsplit("/", 1)[-1]
            ev[rid].setdefault(name, int(t))
    return ev
segs = [("C.t0","B.in","client -> B's handler"), ("B.in","A.msg","B's handler -> owner hears"),
        ("A.msg","B.ackrecv","owner hears -> B has the ack"), ("B.ackrecv","B.out","B's ack -> handler returns"),
        ("B.out","C.ack","B returns -> client has the ack"), ("C.ack","C.eof","ack -> A's stream EOF"),
        ("C.t0","C.eof","total")]
def pct(v,q): v=sorted(v); return v[min(len(v)-1,int(round(q/100*(len(v)-1))))]
for d in sys.argv[1:]:
    ev = load(d)
    rows = [e for e in ev.values() if all(a in e and b in e for a,b,_ in segs)]
    print(f"## {d} n={len(rows)}")
    for a,b,label in segs:
        v=[(e[b]-e[a])/1e6 for e in rows]
        print(f"| {label} | {pct(v,50):.2f} | {statistics.mean(v):.2f} | {pct(v,90):.2f} | {pct(v,99):.2f} |")
