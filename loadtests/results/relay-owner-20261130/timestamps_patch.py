"""Time stamps along the front-end worker's path to the first token, for the code after 28699c0 (the engine call
opens in the servicer, before the owner is built). Run from the root of an exported tree (`git archive HEAD
services | tar -x -C DIR`), never a worktree; then run the worker with ../relay-ttft-20261130/tr.py's directory on
PYTHONPATH (tr.py stamps CPU time, time.thread_time_ns; a copy with time.perf_counter_ns stamps wall time) and
drive it with ../relay-cuts-20261130/drive.py; ../relay-ttft-20261130/tsum.py prints each mark's p50.
"""
import sys

FILES = {"g": "services/flint/grpc_status.py", "s": "services/flint/frontend/servicer.py",
         "o": "services/flint/frontend/owner.py", "st": "services/flint/frontend/store.py"}
M = "import tr; tr.mark"
# (file, anchor, text put before the anchor, text put after it)
MARKS = [
    ("g", "    async def intercept_service(self, continuation, handler_call_details):\n", "", "        import tr; tr.begin()\n"),
    ("s", "            arrival = time.time()\n            request = check_decoded(request)\n", f"            {M}('single')\n", ""),
    ("s", "            replica = await self.pool.pick(model=model, affinity=session.replica_id if session else \"\")\n", "", f"        {M}('picked')\n"),
    ("s", "        engine_request.cache_namespace = tenant", f"        {M}('engine_req')\n", ""),
    ("s", "        with stats.time_stage(\"register\"):\n", f"        {M}('admitted')\n", ""),
    ("s", "            opened = open_engine_call(self.pool, replica, engine_request, metadata)\n", f"            {M}('call_open')\n", f"            {M}('call_opened')\n"),
    ("s", "        owner.start()\n        return owner, session", f"        {M}('owner_built')\n", ""),
    ("s", "                await owner.claimed()\n", "", f"                {M}('claimed_seen')\n"),
    ("s", "                    event = await out.get()\n", "", f"                    {M}('got_' + type(event).__name__)\n"),
    ("s", "                    yield to_message(event)\n", "", f"                    {M}('sent_' + type(event).__name__)\n                    if isinstance(event, ev.Final): tr.end()\n"),
    ("o", "            self._claim.add_done_callback(self._on_claimed)\n", "", f"            {M}('owner_started')\n"),
    ("o", "    def _on_claimed(self, claim: asyncio.Future) -> None:\n", "", f"        {M}('claim_done')\n"),
    ("o", "        self._started = True\n", "", f"        {M}('run_start')\n"),
    ("o", "                async for event in call:\n", "", f"                    {M}('ev_' + event.WhichOneof('kind'))\n"),
    ("o", "        if deliver:\n", "", f"            {M}('emit_' + type(event).__name__)\n"),
    ("st", "        if await self._claim(keys=keys, args=args):\n", f"        {M}('claim_send')\n", ""),
]

for key, anchor, before, after in MARKS:
    path = FILES[key]
    text = open(path).read()
    if text.count(anchor) != 1:
        sys.exit(f"{path}: {text.count(anchor)} of {anchor!r}: the code moved; adjust the anchor")
    open(path, "w").write(text.replace(anchor, before + anchor + after, 1))
