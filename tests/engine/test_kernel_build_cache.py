"""The native kernel cache survives a build that was killed half-way."""

import subprocess
import sys

from flint.engine import kernels

LOAD = "from flint.engine import kernels; kernels.load('skinny_f32'); print('loaded')"


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_start():
    kernels.prebuild(say=lambda line: None)              # built (or already cached) for this checkout
    build = kernels._build_dir("skinny_f32", [kernels._HERE / s for s in kernels.KERNELS["skinny_f32"]],
                               kernels._CFLAGS)
    (build / "lock").touch()                             # what torch's build leaves when its process is killed
    try:
        done = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("kernels.load waited on a lock no live process holds") from None
    finally:
        (build / "lock").unlink(missing_ok=True)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr


def test_two_processes_loading_at_once_both_get_the_kernel():
    procs = [subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert all("loaded" in out for out, _ in outs)
