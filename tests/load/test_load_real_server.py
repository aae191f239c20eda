"""A short real run against flint's own front-end workers and engine replica -> valid JSON and HTML."""

import json

from flint.load.cli import main as load_main
from flint.load.report import load_run, validate_run

# Small prompts (the test engine's context is 1024 tokens); sampled, because the tiny random demo
# checkpoint decodes FIM greedily to special tokens, which stream no text.
PARAMS = {
    "weights": {"keystroke": 2, "interrupt": 1},
    "params": {
        "keystroke": {"file_tokens": [64, 160], "suffix_tokens": [16, 48], "lines": [1, 1], "max_tokens": [4, 8],
                      "temperature": 1.0},
        "interrupt": {"prompt_tokens": [64, 160], "max_tokens": [48, 64], "after_tokens": [2, 3],
                      "by_time_fraction": 0.0, "temperature": 1.0},
    },
}


def test_short_run_against_flint_serve_writes_valid_reports(frontend_workers, tmp_path):
    out = tmp_path / "real"
    code = load_main(["run", "--scenario", "mix", "--seed", "3", "--param", f"weights={json.dumps(PARAMS['weights'])}",
                      "--param", f"params={json.dumps(PARAMS['params'])}", "--arrival", "poisson", "--rate", "2",
                      "--duration-s", "4", "--drain-s", "30", "--address", frontend_workers[0].address,
                      "--out", str(out), "--quiet"])
    assert code == 0
    report, records = load_run(out)
    validate_run(report)
    s = report["summary"]
    assert s["requests"] == len(records) > 0
    assert s["errors"] == 0, s["errors_by_code"]
    finished = [r for r in records if r.finish_reason in ("length", "eos", "stop")]
    assert finished, "some requests must run to completion"
    for r in finished:
        assert r.ttft_ms is not None and r.server["first_token_ms"] > 0 and 0 < r.tokens <= r.completion_tokens
        assert r.seq_errors == 0
    interrupted = [r for r in records if r.interrupt_mode == "interrupt"]
    assert interrupted, "the interrupt jobs must have interrupted something"
    for r in interrupted:     # acknowledged by the server, and no delta after the acknowledgement
        assert r.ack_last_seq is not None and r.deltas_after_ack == 0
    assert report["target"]["model"] and report["target"]["max_context_tokens"] > 0
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 5


def test_run_figures_match_the_front_ends_own_prometheus_metrics(valkey_url, engine_replica, tmp_path):
    import socket

    from support.services import start_worker_process, stop_worker_process

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    worker = start_worker_process(valkey_url, "worker-load-metrics", observability={"metrics_port": metrics_port})
    try:
        out = tmp_path / "metrics"
        assert load_main(["run", "--scenario", "mix", "--seed", "4", "--param",
                          f"weights={json.dumps(PARAMS['weights'])}", "--param", f"params={json.dumps(PARAMS['params'])}",
                          "--rate", "2", "--duration-s", "4", "--drain-s", "30", "--address", worker.address,
                          "--server-metrics", f"http://127.0.0.1:{metrics_port}/metrics", "--out", str(out),
                          "--quiet"]) == 0
    finally:
        stop_worker_process(worker.process)
    report, records = load_run(out)
    checks = {c["check"]: c for c in report["consistency"]}
    for name in ("requests ended: client vs front-end counter", "interrupted: client vs front-end counter",
                 "tokens streamed vs Final.completion_tokens"):
        assert checks[name]["ok"] is True, checks[name]
    assert checks["requests ended: client vs front-end counter"]["server"] == len(records)
    # Latency checks are reported (client vs Final, vs front-end histograms) but not asserted: they are timings.
    assert "mean TTFT: client vs server first_token_ms" in checks


def test_editor_workload_in_document_mode_opens_once_and_sends_edits(frontend_workers, tmp_path):
    out = tmp_path / "documents"
    params = {"file_tokens": [64, 160], "suffix_tokens": [16, 48], "lines": [1, 2], "max_tokens": [2, 4],
              "temperature": 1.0, "documents": True, "debounce_ms": 30.0}
    flags = [a for k, v in params.items() for a in ("--param", f"{k}={json.dumps(v)}")]
    code = load_main(["run", "--scenario", "keystroke", "--seed", "5", *flags, "--arrival", "poisson", "--rate", "1",
                      "--duration-s", "3", "--drain-s", "30", "--address", frontend_workers[0].address,
                      "--out", str(out), "--quiet"])
    assert code == 0
    report, records = load_run(out)
    assert report["summary"]["errors"] == 0, report["summary"]["errors_by_code"]
    by_job: dict = {}
    for r in records:
        by_job.setdefault(r.job, []).append(r)
    assert any(len(rs) > 1 for rs in by_job.values()), "a job must type more than one keystroke"
    finished = [r for r in records if r.finish_reason in ("length", "eos", "stop")]
    assert finished and all(r.prompt_tokens > 0 for r in finished)   # prompts built from the documents


def test_document_messages_bring_the_servers_copy_to_the_new_text():
    from flint.doctext import DocText
    from flint.load.targets.flint_grpc import document_messages
    from flint.load.workload import RequestSpec

    docs: dict = {}
    first, cursor = document_messages(RequestSpec(prefix="def f(x):\n    ret", suffix="\n\nprint(1)\n",
                                                  document_id="a.py", path="a.py"), docs)
    assert first[0].WhichOneof("kind") == "open_document" and cursor.version == 1
    assert (cursor.cursor.line, cursor.cursor.character) == (1, 7)
    second, cursor = document_messages(RequestSpec(prefix="def f(x):\n    return x", suffix="\n\nprint(1)\n",
                                                   document_id="a.py", path="a.py"), docs)
    edit = second[0].edit_document
    assert (edit.version, cursor.version, edit.edits[0].text) == (1, 2, "urn x")
    r = edit.edits[0].range
    old = DocText("def f(x):\n    ret\n\nprint(1)\n")
    start, end = old.offset(r.start.line, r.start.character), old.offset(r.end.line, r.end.character)
    assert old.apply(start, end, edit.edits[0].text).text == "def f(x):\n    return x\n\nprint(1)\n"
