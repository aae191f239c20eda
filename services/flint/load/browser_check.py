"""Check an HTML load report in a real headless browser: every plot renders, and none is empty.

Chromium renders two pages: the report itself (a full-page screenshot for a
human, `report.png`) and a contact sheet that places each of the report's
SVG plots at a known spot (`plots.png`). Each plot's drawing area is then
cropped from that screenshot and its pixels in the series colours counted:
a plot whose lines, steps or bars did not render has (almost) none. A panel
that says "no data" instead of a plot is reported too.

Used by `loadtests/check_report_in_browser.py` and tests/load/test_load_report_browser.py.
Needs the `chromium` binary (Debian package `chromium`) and Pillow (test extra).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flint.load.svg import PALETTE

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
CELL_W, CELL_H = 640, 440          # px: every plot of svg.py is 640 wide and at most ~420 high
MIN_SERIES_PIXELS = 150            # a drawn line of a 560 px wide plot covers well over this
_PLOT_AREA = (62, 34, 624, 272)    # svg.line_chart's frame (_L, _T, _W - _R, _H - _B): legend above excluded
_COLOUR_TOLERANCE = 40


@dataclass
class PlotCheck:
    index: int
    title: str
    series_pixels: int

    @property
    def ok(self) -> bool:
        return self.series_pixels >= MIN_SERIES_PIXELS


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(chromium: str, html: Path, png: Path, width: int, height: int, timeout_s: float = 120.0) -> None:
    with tempfile.TemporaryDirectory(prefix="flint-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-800:]}")


def _plots(report_html: str) -> tuple[str, list[tuple[str, str]]]:
    """The report's CSS and its (panel title, svg) pairs in page order."""
    css = re.search(r"<style>(.*?)</style>", report_html, re.S)
    plots = []
    for panel in re.finditer(r'<div class="panel"><h3>(.*?)</h3>(.*?)</div>', report_html, re.S):
        title, body = panel.group(1), panel.group(2)
        svg = re.search(r"<svg.*?</svg>", body, re.S)
        if svg is None and "no data" not in body:
            continue                                    # a table panel (outcomes), not a plot
        plots.append((title, svg.group(0) if svg else ""))
    return (css.group(1) if css else ""), plots


def _contact_sheet(css: str, plots: list[tuple[str, str]]) -> str:
    cells = "".join(f'<div style="position:absolute;left:0;top:{i * CELL_H}px;width:{CELL_W}px;height:{CELL_H}px;'
                    f'overflow:hidden">{svg}</div>' for i, (_, svg) in enumerate(plots))
    return (f'<!doctype html><html><head><meta charset="utf-8"><style>{css}'
            f'body{{margin:0;background:#fff}}svg.chart{{width:{CELL_W}px;height:auto}}</style></head>'
            f'<body>{cells}</body></html>')


def _series_pixels(image, box: tuple[int, int, int, int]) -> int:
    import numpy as np

    pixels = np.asarray(image.crop(box).convert("RGB"), dtype=np.int32)            # [h, w, 3]
    colours = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in PALETTE if c != "#4b5563"])  # grey: text
    saturated = pixels.max(axis=2) - pixels.min(axis=2) >= 40                        # not grid, frame or text
    distance = np.abs(pixels[:, :, None, :] - colours[None, None, :, :]).sum(axis=3)  # [h, w, colours]
    return int((saturated & (distance.min(axis=2) <= _COLOUR_TOLERANCE * 3 // 2)).sum())


def check_report(report_html: Path, out_dir: Path, chromium: str | None = None) -> list[PlotCheck]:
    """Screenshot the report and its plots into out_dir; one PlotCheck per plot panel, in page order."""
    from PIL import Image

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = report_html.read_text()
    screenshot(chromium, report_html, out_dir / "report.png", 1400, 3200)
    css, plots = _plots(text)
    sheet = out_dir / "plots.html"
    sheet.write_text(_contact_sheet(css, plots))
    screenshot(chromium, sheet, out_dir / "plots.png", CELL_W, CELL_H * max(1, len(plots)))
    image = Image.open(out_dir / "plots.png")
    checks = []
    for i, (title, svg) in enumerate(plots):
        top = i * CELL_H
        if not svg:
            checks.append(PlotCheck(i, title, 0))
            continue
        if 'class="frame"' in svg:
            x0, y0, x1, y1 = _PLOT_AREA
        else:                                       # stacked bars: everything above their legend rows
            height = int(re.search(r'viewBox="0 0 \d+ (\d+)"', svg).group(1))
            x0, y0, x1, y1 = 0, 0, CELL_W, height - 48
        checks.append(PlotCheck(i, title, _series_pixels(image, (x0, top + y0, x1, top + y1))))
    return checks
