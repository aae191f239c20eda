"""`python -m flint.bench.attention` runs end to end (tiny sizes) and reports the KV read bound."""

from flint.bench.attention import DEMO_SHAPE, kv_bytes_read, main, measure


def test_kv_bytes_read_counts_k_and_v_of_every_layer():
    # demo shape: 4 layers x 2 KV heads x 64 dims x 4 bytes x (K + V) = 4 KiB per token
    assert kv_bytes_read(1000, **DEMO_SHAPE) == 1000 * 4096


def test_measure_times_both_paths_against_the_bound():
    rows = measure([300], [1, 3], reps=1, bandwidth_elems=1 << 20)
    assert [(r["context"], r["new_tokens"]) for r in rows] == [(300, 1), (300, 3)]
    for r in rows:
        assert r["in_place_ms"] > 0 and r["gathered_ms"] > 0 and r["read_gbps"] > 0
        assert r["kv_read_bound_ms"] == kv_bytes_read(300, **DEMO_SHAPE) / r["read_gbps"] / 1e6


def test_cli_writes_the_markdown_table(tmp_path, monkeypatch):
    monkeypatch.setattr("flint.bench.attention.BANDWIDTH_ELEMS", 1 << 20)
    out = tmp_path / "attention.md"
    main(["--contexts", "200", "--new", "2", "--reps", "1", "--out", str(out)])
    table = out.read_text()
    assert "| 200 | 2 |" in table and "KV read bound ms" in table
