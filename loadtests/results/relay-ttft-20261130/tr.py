"""Time stamps of one request at a time (see timestamps_patch.py). Swap thread_time_ns for perf_counter_ns for wall time."""
import time, os, json
_cur = {}
_f = None
def begin():
    global _cur
    _cur = {"t0": time.thread_time_ns()}
def mark(name):
    if name not in _cur:
        _cur[name] = time.thread_time_ns() - _cur.get("t0", 0)
def end():
    global _f
    if _f is None:
        _f = open(os.environ.get("TR_OUT", "/tmp/relayprof/trace.jsonl"), "a")
    _f.write(json.dumps(_cur) + "\n"); _f.flush()
