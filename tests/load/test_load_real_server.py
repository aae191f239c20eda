"""A short real run against flint's own front-end workers and engine replica -> valid JSON and HTML."""

from flint.load.cli import main as load_main
from flint.load.report import load_run, validate_run


def test_short_keystroke_run_against_flint_serve_writes_valid_reports(frontend_workers, tmp_path):
    out = tmp_path / "real"
    code = load_main(["run", "--scenario", "keystroke", "--seed", "3", "--param", "file_tokens=[64,160]",
                      "--param", "suffix_tokens=[16,48]", "--param", "lines=[1,1]", "--param", "max_tokens=[4,8]",
                      # The tiny random demo checkpoint decodes FIM greedily to special tokens (no text): sample.
                      "--param", "temperature=1.0",
                      "--arrival", "users", "--users", "2", "--think-ms", "200,400", "--duration-s", "4",
                      "--drain-s", "20", "--address", frontend_workers[0].address, "--out", str(out), "--quiet"])
    assert code == 0
    report, records = load_run(out)
    validate_run(report)
    s = report["summary"]
    assert s["requests"] == len(records) > 0
    assert s["errors"] == 0, s["errors_by_code"]
    finished = [r for r in records if r.finish_reason in ("length", "eos", "stop")]
    assert finished, "some keystroke requests must run to completion"
    for r in finished:
        assert r.ttft_ms is not None and r.server["first_token_ms"] > 0 and 0 < r.tokens <= r.completion_tokens
        assert r.seq_errors == 0
    # Redirected requests were stopped by the server with nothing after its acknowledgement.
    assert s["deltas_after_ack"] == 0
    assert report["target"]["model"] and report["target"]["max_context_tokens"] > 0
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 5
