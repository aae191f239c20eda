import os, time
_path = os.environ.get("FLINT_ST")
_buf = []
_pid = os.getpid()
def st(tag):
    if _path:
        _buf.append(f"{_pid} {tag} {time.perf_counter_ns()}\n")
        if len(_buf) >= 400:
            flush()
def flush():
    global _buf
    if _buf:
        with open(_path, "a") as f:
            f.writelines(_buf)
        _buf = []
