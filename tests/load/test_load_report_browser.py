"""The HTML report in real headless Chromium: every plot renders with data, and the check can fail."""

import re

import pytest

from flint.load.browser_check import check_report, find_chromium
from flint.load.cli import main as load_main
from flint.load.mock_server import MockConfig, MockProcess

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (apt-get install -y chromium): the report was NOT checked in a browser")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with MockProcess(MockConfig(tokens_per_s=300, ttft_ms=3, coalesce=2, max_streams=2)) as mock:
        assert load_main(["run", "--scenario", "short-fim", "--param", "prompt_tokens=[64,128]", "--param",
                          "max_tokens=[8,16]", "--arrival", "poisson", "--rate", "20", "--duration-s", "3",
                          "--drain-s", "5", "--address", mock.address, "--out", str(out), "--quiet"]) == 0
    return out / "report.html"


def test_every_plot_of_the_report_renders_with_data_in_chromium(report_html, tmp_path):
    checks = check_report(report_html, tmp_path)
    titles = [c.title for c in checks]
    assert "Time to first token and end-to-end" in titles and "Request rate" in titles and len(checks) >= 5
    assert all(c.ok for c in checks), [(c.title, c.series_pixels) for c in checks]
    assert (tmp_path / "report.png").stat().st_size > 50_000      # the whole page, for a human


def test_a_plot_whose_series_did_not_draw_is_reported_empty(report_html, tmp_path):
    html = report_html.read_text()
    first_svg = re.search(r"<svg.*?</svg>", html, re.S).group(0)
    blank = re.sub(r"<polyline[^>]*/>|<circle[^>]*/>", "", first_svg)
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace(first_svg, blank, 1))
    checks = check_report(broken, tmp_path / "shots")
    assert not checks[0].ok and all(c.ok for c in checks[1:])
