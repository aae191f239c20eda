#!/usr/bin/env python3
"""Check a `flint load` HTML report in real headless Chromium: screenshots, and no empty plot.

    python loadtests/check_report_in_browser.py loadtests/results/<run>/     # an existing run
    python loadtests/check_report_in_browser.py                              # a fresh 8 s run on the mock

Needs the `chromium` binary (Debian/Ubuntu: `apt-get install -y chromium`) and Pillow (test extra).
Writes report.png (the whole page), plots.html and plots.png (each plot at a known spot) into
--out (default: <run>/browser-check/), prints each plot's count of pixels in series colours and
exits 1 when a plot is empty or missing. tests/load/test_load_report_browser.py runs the same check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from flint.load.browser_check import MIN_SERIES_PIXELS, check_report


def _fresh_run(out: Path) -> Path:
    from flint.load.cli import main as load_main
    from flint.load.mock_server import MockConfig, MockProcess

    with MockProcess(MockConfig(tokens_per_s=300, ttft_ms=3, coalesce=2, max_streams=4)) as mock:
        load_main(["run", "--scenario", "short-fim", "--param", "prompt_tokens=[64,128]", "--param",
                   "max_tokens=[8,32]", "--arrival", "poisson", "--rate", "40", "--duration-s", "8", "--drain-s",
                   "5", "--address", mock.address, "--out", str(out), "--quiet"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="a run directory or report.html (default: a fresh run on the mock)")
    p.add_argument("--out", help="where the screenshots go (default: <run>/browser-check)")
    args = p.parse_args()
    run = Path(args.run) if args.run else _fresh_run(Path(tempfile.mkdtemp(prefix="flint-report-")))
    html = run / "report.html" if run.is_dir() else run
    out = Path(args.out) if args.out else html.parent / "browser-check"
    checks = check_report(html, out)
    for c in checks:
        print(f"{'ok   ' if c.ok else 'EMPTY'} {c.series_pixels:>7} series pixels  {c.title}")
    print(f"screenshots: {out / 'report.png'}, {out / 'plots.png'} (a plot needs >= {MIN_SERIES_PIXELS} pixels)")
    return 0 if checks and all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
