"""Adds time stamps along the front-end worker's path of the code after these cuts (the patch in
../relay-ttft-20261130 fits the code before them); run from the root of an exported tree, never a worktree.
tr.py and tsum.py are in ../relay-ttft-20261130.

Each mark records the time since the first interceptor saw the call (tr.py: time.thread_time_ns for CPU,
or time.perf_counter_ns for wall time), once per request, into /tmp/relayprof/trace.jsonl; tsum.py
prints the p50 of each mark. Run the worker with tr.py's directory on PYTHONPATH.
"""
import sys

FILES = {"g": "services/flint/grpc_status.py", "s": "services/flint/frontend/servicer.py",
         "o": "services/flint/frontend/owner.py", "st": "services/flint/frontend/store.py"}
# (file, the text to find, the same text with a mark added)
EDITS = [
    ("g", "    async def intercept_service(self, continuation, handler_call_details):\n", "    async def intercept_service(self, continuation, handler_call_details):\n        import tr; tr.begin()\n"),
    ("g", "    async def wrapped(request, context):\n        try:\n            # aclosing", "    async def wrapped(request, context):\n        import tr; tr.mark('wrapped')\n        try:\n            # aclosing"),
    ("s", "            arrival = time.time()\n            request = check_decoded(request)\n", "            import tr; tr.mark('single')\n            arrival = time.time()\n            request = check_decoded(request)\n"),
    ("s", "            replica = await self.pool.pick(model=model, affinity=session.replica_id if session else \"\")\n", "            replica = await self.pool.pick(model=model, affinity=session.replica_id if session else \"\")\n        import tr; tr.mark('picked')\n"),
    ("s", "        with stats.time_stage(\"register\"):\n", "        tr.mark('admitted')\n        with stats.time_stage(\"register\"):\n"),
    ("s", "            try:\n                await owner.claimed()\n", "            tr.mark('owner_started')\n            try:\n                await owner.claimed()\n                tr.mark('claimed_seen')\n"),
    ("s", "                    event = await out.get()\n", "                    event = await out.get()\n                    import tr; tr.mark('got_' + type(event).__name__)\n"),
    ("s", "                    yield to_message(event)\n                    if isinstance(event, ev.Final):\n                        return\n", "                    yield to_message(event)\n                    tr.mark('sent_' + type(event).__name__)\n                    if isinstance(event, ev.Final):\n                        tr.end()\n                        return\n"),
    ("s", "        engine_request.cache_namespace = tenant", "        tr.mark('engine_req')\n        engine_request.cache_namespace = tenant"),
    ("s", "        owner.start()\n        return owner, session", "        import tr; tr.mark('so_owner')\n        owner.start()\n        return owner, session"),
    ("o", "        self._opened = self._open_call()\n", "        import tr; tr.mark('gen_call')\n        self._opened = self._open_call()\n        tr.mark('gen_called')\n"),
    ("o", "                async for event in call:\n", "                async for event in call:\n                    import tr; tr.mark('ev_' + event.WhichOneof('kind'))\n"),
    ("o", "    def _on_claimed(self, claim: asyncio.Future) -> None:\n", "    def _on_claimed(self, claim: asyncio.Future) -> None:\n        import tr; tr.mark('claim_done')\n"),
    ("o", "        if deliver:\n            self._sink(event)", "        if deliver:\n            import tr; tr.mark('emit_' + type(event).__name__)\n            self._sink(event)"),
    ("o", "        self._started = True\n", "        self._started = True\n        import tr; tr.mark('run_start')\n"),
    ("st", "        if await self._claim(keys=keys, args=args):\n", "        import tr; tr.mark('claim_send')\n        if await self._claim(keys=keys, args=args):\n"),
]

for key, old, marked in EDITS:
    path = FILES[key]
    text = open(path).read()
    if old not in text:
        sys.exit(f"{path}: no {old!r}: the code moved; adjust the anchor")
    open(path, "w").write(text.replace(old, marked, 1))
