"""Time stamps along the interrupt path, for measurement only (never committed to the code).

Usage: python timestamps_patch.py TREE   (a scratch worktree of the commit measured, e.g. `git worktree add
/tmp/t b533756 --detach`). Writes TREE/services/itrace.py (each process appends "ns name request_id" lines to
$ITRACE_DIR/<pid>.txt, default /tmp/itrace) and inserts its marks into the front-end. trace_drive.py stamps
the client side (C.t0 before Interrupt, C.ack after it, C.eof at A's stream end); segs.py reads the files.
The marks of main (57b3672) were the same names at the same places, with B's GET and pipeline in between.
"""
import sys
from pathlib import Path

ITRACE = '''import os, time
_dir = os.environ.get("ITRACE_DIR", "/tmp/itrace")
os.makedirs(_dir, exist_ok=True)
_fd = os.open(f"{_dir}/{os.getpid()}.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
def mark(name, rid=""):
    os.write(_fd, f"{time.time_ns()} {name} {rid}\\n".encode())
'''

EDITS = {
    "interrupts.py": [
        ("import msgpack\n", "import msgpack\nfrom itrace import mark\n"),
        ("            stored, published = await self._signal(",
         "            mark('B.rec0', request_id); stored, published = await self._signal("),
        ("            record = unpack_record(RequestRecord, stored",
         "            mark('B.pub', request_id); record = unpack_record(RequestRecord, stored"),
        ("""                        future.set_result(InterruptResult(payload["request_id"], payload["was_running"],""",
         """                        mark('B.ackrecv', payload['request_id']); future.set_result(InterruptResult(payload["request_id"], payload["was_running"],"""),
        ("                    self._serve_interrupt(payload)\n",
         "                    mark('A.msg', payload['request_id']); self._serve_interrupt(payload)\n"),
        ("            answer = local.interrupt_soon(ack) if local is not None else None\n",
         "            answer = local.interrupt_soon(ack) if local is not None else None; mark('A.intsync', request_id)\n"),
    ],
    "owner.py": [
        ("import grpc\n", "import grpc\nfrom itrace import mark\n"),
        ("""        except asyncio.CancelledError:
            state = "interrupted"
""", """        except asyncio.CancelledError:
            mark("A.cancelled", self.request_id)
            state = "interrupted"
"""),
    ],
    "journal.py": [
        ("from flint.config import from_mapping\n", "from flint.config import from_mapping\nfrom itrace import mark\n"),
        ("""                        await pipe.execute()
                ok = True""", """                        mark('A.flush0', batch[-1][0]); await pipe.execute(); mark('A.flush1', batch[-1][0])
                ok = True"""),
    ],
    "servicer.py": [
        ("from flint.v1 import flint_pb2 as pb\n", "from flint.v1 import flint_pb2 as pb\nfrom itrace import mark\n"),
        ("""        await self.check_rate()
        result = await self.interrupt(request.request_id)
""", """        mark('B.in', request.request_id)
        await self.check_rate()
        result = await self.interrupt(request.request_id)
        mark('B.out', request.request_id)
"""),
        ("""                await owner.cancel()  # the client""",
         """                await owner.cancel(); mark('A.handlerdone', owner.request_id)  # the client"""),
    ],
}

if __name__ == "__main__":
    tree = Path(sys.argv[1])
    (tree / "services" / "itrace.py").write_text(ITRACE)
    for name, edits in EDITS.items():
        path = tree / "services" / "flint" / "frontend" / name
        text = path.read_text()
        for old, new in edits:
            assert text.count(old) == 1, (name, old)
            text = text.replace(old, new)
        path.write_text(text)
