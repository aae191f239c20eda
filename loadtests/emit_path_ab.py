"""In-process A/B of the engine's output path: commit BASE's `_emit`, OutputProcessor and detokenizer vs this
tree's, alternating rounds on one engine (results: loadtests/results/emit-path-20261130.md).

    BASE=<commit> [CODE=1 [WARM=1]] [QUANT=int4] PYTHONPATH=services python loadtests/emit_path_ab.py [rounds]

Per round: 16 (or 1) requests x 64 tokens; per decode step: step time, and _emit minus chooser.choose
(the host output path); medians per round for each variant. CODE=1: the tokens are real code (stdlib files)
instead of the random model's own; WARM=1: the tokenizer first streams other code. MODEL: the checkpoint dir
(default: the one `flint bench engine` makes).
"""
import os, subprocess, sys, time, types
import numpy as np
from pathlib import Path
from flint.bench import engine_measure as m
import flint.engine.engine as engmod
from flint.engine.output import OutputProcessor as TreeOutput

BASE = os.environ["BASE"]
REPO = Path(__file__).resolve().parents[1]
def src(path):
    return subprocess.check_output(["git", "-C", str(REPO), "show", f"{BASE}:{path}"], text=True)
base_detok = types.ModuleType("base_detok")
exec(compile(src("services/flint/engine/detokenizer.py"), "base_detok", "exec"), base_detok.__dict__)
sys.modules["base_detok"] = base_detok
base_out = types.ModuleType("base_out")
exec(compile(src("services/flint/engine/output.py").replace("from flint.engine.detokenizer import", "from base_detok import"),
             "base_out", "exec"), base_out.__dict__)
eng_src = src("services/flint/engine/engine.py")
i = eng_src.index("    def _emit("); j = eng_src.index("\n    def ", i + 10)
import textwrap
g = dict(engmod.__dict__); exec(textwrap.dedent(eng_src[i:j]), g); base_emit = g["_emit"]
tree_emit = engmod.Engine._emit

P = Path(os.environ.get("MODEL") or "/root/.cache/flint/bench-models/bench-architecturellama-heads8-hidden512-intermediate1536-kv_heads4-layers4-"
         "max_position_embeddings16384-vocab_size16000")
e = m.engine_for(P, num_threads=2, kv_cache_bytes=1 << 28, quantization=os.environ.get("QUANT", "int4"), prefix_cache=False)
variants = {"base": (base_out.OutputProcessor(e.tokenizer), base_emit), "tree": (TreeOutput(e.tokenizer), tree_emit)}
emit_t, choose_t = [], []
oc = e.chooser.choose
CODE = os.environ.get("CODE")
if CODE:
    # Real code text as the generated tokens (the model still runs): each request streams a stdlib file slice.
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    code_ids = e.tokenizer.encode("".join(f.read_text(errors="ignore") for f in files[:60]))
    if os.environ.get("WARM"):
        from flint.engine.detokenizer import IncrementalDetokenizer
        d = IncrementalDetokenizer(e.tokenizer)
        for t_ in e.tokenizer.encode("".join(f.read_text(errors="ignore") for f in files[60:200])): d.add(t_)
    streams_ = {}; _orig = oc
    def forced(logits, work):
        _orig(logits, work)
        out = []
        for req, n, draft in work:
            st = streams_.get(req.request_id)
            if st is None:
                st = streams_[req.request_id] = [int(np.random.default_rng(abs(hash(req.request_id.split("-", 1)[1])) % 2**32).integers(0, len(code_ids) - 200)), 0]
            out.append([code_ids[st[0] + st[1]]]); st[1] += 1
        return out
    oc = forced
def choose(*a):
    t = time.perf_counter(); r = oc(*a); choose_t.append(time.perf_counter() - t); return r
e.chooser.choose = choose
texts = {}
toks = {}
def round_(name, streams, seed, tokens=64):
    out, emit = variants[name]
    e.output = out
    def timed(*a):
        t = time.perf_counter(); r = emit(e, *a); emit_t.append(time.perf_counter() - t); return r
    e._emit = timed
    reqs = []
    for k in range(streams):
        reqs.append(m.token_request(e, f"{name}-{seed}-{k}", m.prompt_ids(e, 16, seed=seed * 100 + k), tokens))
    steps, ev = [], []
    emit_t.clear(); choose_t.clear()
    while e.has_work():
        t = time.perf_counter(); ev.extend(e.step()); steps.append(time.perf_counter() - t)
    texts[(name, streams, seed)] = sorted((getattr(x, "request_id", ""), getattr(x, "seq", 0), repr(x)) for x in ev
                                          if type(x).__name__ in ("Delta", "Final"))
    toks[(name, streams, seed)] = [r.tokens[:r.num_tokens].tolist() for r in reqs]
    s = np.array(steps[1:]); h = np.array(emit_t[1:]) - np.array(choose_t[1:])
    return np.median(s) * 1e3, np.median(h) * 1e6

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
for r in range(2):
    round_("base", 16, 900 + r); round_("tree", 16, 900 + r)
for streams in (1, 16):
    res = {"base": [], "tree": []}
    for r in range(rounds):
        order = ("base", "tree") if r % 2 == 0 else ("tree", "base")
        for name in order:
            res[name].append(round_(name, streams, r))
    for name in ("base", "tree"):
        print(f"streams={streams:2d} {name}: step_ms " + " ".join(f"{a:.3f}" for a, _ in res[name])
              + " | host_us " + " ".join(f"{b:.1f}" for _, b in res[name]), flush=True)
    hb = np.array([b for _, b in res["base"]]); ht = np.array([b for _, b in res["tree"]])
    sb = np.array([a for a, _ in res["base"]]); st = np.array([a for a, _ in res["tree"]])
    print(f"streams={streams:2d} tree/base host per round: " + " ".join(f"{x:.2f}" for x in ht / hb)
          + f" | median host base {np.median(hb):.1f} tree {np.median(ht):.1f} us; step base {np.median(sb):.3f} tree {np.median(st):.3f} ms")
# Outputs identical (events differ only by request id prefix and timings)
def norm(rows):
    import re
    return [re.sub(r"cached_prompt_tokens=\d+", "", re.sub(r"timings=Timings\([^)]*\)", "", r[2])).replace("base-", "").replace("tree-", "") for r in rows]
same = all(norm(texts[("base", s, r)]) == norm(texts[("tree", s, r)]) for (n, s, r) in texts if n == "base")
print("identical deltas/finals base vs tree:", same)
if not same:
    for (n, s, r) in texts:
        if n == "base":
            a, b = norm(texts[("base", s, r)]), norm(texts[("tree", s, r)])
            if a != b:
                d = [(x, y) for x, y in zip(a, b) if x != y]
                print("tokens same:", toks[("base", s, r)] == toks[("tree", s, r)])
                print("differ", s, r, len(a), len(b), d[:2]); break
