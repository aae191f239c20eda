"""Small inline-SVG charts for the HTML report (no JavaScript, no external files)."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")
_W, _H, _L, _R, _T, _B = 640, 316, 62, 16, 34, 44


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    lo, hi = max(lo, 1e-3), max(hi, lo * 10)
    ticks = []
    mantissas = (1, 2, 5) if math.log10(hi / lo) <= 3 else (1,)
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in mantissas:
            v = m * 10 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks or [lo, hi]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}" if abs(v) >= 0.01 else f"{v:.1e}"


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], *, x_label: str, y_label: str,
               log_x: bool = False, y_min: float | None = 0.0, hlines: list[tuple[float, str]] = (),
               vlines: list[tuple[float, str]] = (), markers: bool = False, step: bool = False,
               x_ticks: list[tuple[float, str]] | None = None, marks: list[tuple[float, float, str]] = ()) -> str:
    """Lines of (x, y) points; hlines/vlines are dashed reference lines with labels (SLO limits, the knee).

    A point with y None breaks its line (no line drawn across an empty second). Series are told apart by
    colour, dash pattern and width: the first is drawn widest, so a later series on the same values runs
    inside it instead of hiding it. `x_ticks` replaces the computed ticks with (value, label) pairs;
    `marks` are labelled points (an SLO target on a percentile spectrum).
    """
    pts = [p for _, s in series for p in s if p[1] is not None]
    if not pts:
        return '<p class="empty">no data</p>'
    xs = [p[0] for p in pts] + [v for v, _ in vlines] + [m[0] for m in marks]
    ys = [p[1] for p in pts] + [v for v, _ in hlines] + [m[1] for m in marks]
    if log_x:
        positive = [x for x in xs if x > 0] or [1.0]
        x_hi = max(positive)
        x_lo = max(min(positive), x_hi / 1e4)      # zeros and tiny values sit at the left edge
    else:
        x_lo, x_hi = min(xs), max(xs)
    y_lo = min(ys) if y_min is None else y_min
    y_hi = max(ys) * 1.05 if max(ys) > y_lo else y_lo + 1
    tick_labels = dict(x_ticks) if x_ticks else {}
    x_ticks = list(tick_labels) if x_ticks else (_log_ticks(x_lo, x_hi) if log_x else _nice_ticks(x_lo, x_hi))
    y_ticks = _nice_ticks(y_lo, y_hi)
    if not log_x:
        x_lo, x_hi = min(x_lo, x_ticks[0]), max(x_hi, x_ticks[-1])
    y_hi = max(y_hi, y_ticks[-1])
    pw, ph = _W - _L - _R, _H - _T - _B

    def sx(x):
        if log_x:
            x = max(x, x_lo)
            return _L + pw * (math.log(x / x_lo) / math.log(x_hi / x_lo) if x_hi > x_lo else 0.5)
        return _L + pw * ((x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5)

    def sy(y):
        return _T + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    out = [f'<svg viewBox="0 0 {_W} {_H}" class="chart" role="img" xmlns="http://www.w3.org/2000/svg">']
    for t in y_ticks:
        out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{_L - 6}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        if x_lo <= t <= x_hi:
            out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{_T}" y2="{_T + ph}" class="grid"/>'
                       f'<text x="{sx(t):.1f}" y="{_T + ph + 16}" class="tick" text-anchor="middle">'
                       f'{escape(tick_labels.get(t, _fmt(t)))}</text>')
    out.append(f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" class="frame"/>')
    out.append(f'<text x="{_L + pw / 2}" y="{_H - 6}" class="axis" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="14" y="{_T + ph / 2}" class="axis" text-anchor="middle" '
               f'transform="rotate(-90 14 {_T + ph / 2})">{escape(y_label)}</text>')
    for value, label in hlines:
        out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{sy(value):.1f}" y2="{sy(value):.1f}" class="ref"/>'
                   f'<text x="{_W - _R - 4}" y="{sy(value) - 4:.1f}" class="reflabel" text-anchor="end">'
                   f'{escape(label)}</text>')
    for value, label in vlines:
        out.append(f'<line x1="{sx(value):.1f}" x2="{sx(value):.1f}" y1="{_T}" y2="{_T + ph}" class="ref knee"/>'
                   + (f'<text x="{sx(value) - 4:.1f}" y="{_T + 12}" class="reflabel" text-anchor="end">'
                      if sx(value) > _W - 160 else f'<text x="{sx(value) + 4:.1f}" y="{_T + 12}" class="reflabel">')
                   + f'{escape(label)}</text>')
    for i, (name, points) in enumerate(series):
        color, dash, width = _style(i, len(series))
        for run in _runs(points):
            coords = []
            for j, (x, y) in enumerate(run):
                if step and j:
                    coords.append(f"{sx(x):.1f},{sy(run[j - 1][1]):.1f}")
                coords.append(f"{sx(x):.1f},{sy(y):.1f}")
            if len(coords) > 1:
                out.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{color}" '
                           f'stroke-width="{width}"{dash} stroke-linejoin="round"/>')
            if markers or len(coords) == 1:     # a lone point between gaps still shows
                out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{1.2 + width:.1f}" fill="{color}"/>'
                           for x, y in run)
    for x, y, label in marks:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6" class="mark"/>'
                   f'<text x="{sx(x) - 9:.1f}" y="{sy(y) - 9:.1f}" class="reflabel" text-anchor="end">'
                   f'{escape(label)}</text>')
    lx = float(_L)
    for i, (name, _) in enumerate(series):       # legend in a row above the plot, clear of the curves
        color, dash, _width = _style(i, len(series))
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{_T - 17}" y2="{_T - 17}" stroke="{color}" '
                   f'stroke-width="3"{dash}/>'
                   f'<text x="{lx + 22:.1f}" y="{_T - 13}" class="legend">{escape(name)}</text>')
        lx += 36 + 6.4 * len(name)
    out.append("</svg>")
    return "".join(out)


def nines(fraction: float, n: int) -> float:
    """x position of a percentile on a spectrum: -log10(1 - fraction), the largest of n samples at log10(n)."""
    return -math.log10(max(1.0 - fraction, 1.0 / max(n, 1)))


def spectrum_chart(series: list[tuple[str, list[tuple[float, float]], int]], *, y_label: str,
                   marks: list[tuple[float, float, str]] = ()) -> str:
    """Latency by percentile with a log-scale tail: x = 50%, 90%, 99%, 99.9% ... equally spaced.

    `series` are (name, CDF points (value, fraction <= value), sample count); `marks` are (percentile
    0-100, value, label), e.g. the SLO target, drawn as a ringed point.
    """
    top = max((n for _, _, n in series), default=1)
    decades = max(2, min(5, math.ceil(math.log10(max(top, 10)))))
    ticks = [(nines(0.5, top), "50%")] + [(float(d), _percent_label(1 - 10.0 ** -d))
                                                        for d in range(1, decades + 1)]
    lines = [(name, _spectrum_points(cdf, n)) for name, cdf, n in series]
    return line_chart(lines, x_label="percentile (log scale of the tail)", y_label=y_label, step=True,
                      x_ticks=ticks, marks=[(nines(p / 100.0, 10 ** decades), v, label) for p, v, label in marks])


def _spectrum_points(cdf: list[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    """Value v of a CDF step (f_prev, f] holds from x(f_prev) to x(f): one point at each step's start."""
    points, f_prev = [], 0.0
    for v, f in cdf:
        points.append((nines(f_prev, n), v))
        f_prev = f
    if cdf:
        points.append((nines(f_prev, n), cdf[-1][0]))
    return points


def _percent_label(fraction: float) -> str:
    return f"{fraction * 100:.10g}%"


_DASHES = ("", "7 4", "2 3", "10 3 2 3")


def _style(i: int, n: int) -> tuple[str, str, float]:
    """Colour, dash attribute and width of series i of n: earlier series wider, so none hides another."""
    dash = _DASHES[i % len(_DASHES)]
    return PALETTE[i % len(PALETTE)], (f' stroke-dasharray="{dash}"' if dash else ""), 1.5 + 1.0 * (n - 1 - i)


def _runs(points: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The points split where y is None: each run is drawn as its own line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [r for r in runs if r]


def stacked_bars(rows: list[tuple[str, list[tuple[str, float]]]], *, unit: str = "ms") -> str:
    """Horizontal bars, each split into named segments (same segment names share colours)."""
    names: list[str] = []
    for _, segs in rows:
        names.extend(n for n, _ in segs if n not in names)
    total = max((sum(max(v, 0) for _, v in segs) for _, segs in rows), default=0) or 1.0
    w, label_w, bar_h = _W, 150, 26
    h = 18 + len(rows) * (bar_h + 14) + 64
    out = [f'<svg viewBox="0 0 {w} {h}" class="chart" role="img" xmlns="http://www.w3.org/2000/svg">']
    pw = w - label_w - 70
    for i, (label, segs) in enumerate(rows):
        y = 18 + i * (bar_h + 14)
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4}" class="tick" text-anchor="end">'
                   f'{escape(label)}</text>')
        x = float(label_w)
        for name, value in segs:
            width = pw * max(value, 0) / total
            color = PALETTE[names.index(name) % len(PALETTE)]
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="{color}">'
                       f'<title>{escape(name)}: {value:.2f} {unit}</title></rect>')
            if width > 34:
                out.append(f'<text x="{x + width / 2:.1f}" y="{y + bar_h / 2 + 4}" class="barlabel" '
                           f'text-anchor="middle">{value:.1f}</text>')
            x += width
        out.append(f'<text x="{x + 6:.1f}" y="{y + bar_h / 2 + 4}" class="tick">'
                   f'{sum(v for _, v in segs):.1f} {unit}</text>')
    ly = h - 36
    lx = float(label_w)
    for i, name in enumerate(names):
        if lx + 30 + 7 * len(name) > w:
            lx, ly = float(label_w), ly + 18
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{lx + 16:.1f}" y="{ly + 1}" class="legend">{escape(name)}</text>')
        lx += 30 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)
