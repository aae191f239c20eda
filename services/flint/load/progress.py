"""A live progress line during long runs (rich), silent when nobody watches.

Quiet when stderr is not a terminal or when CI is set (`flint.env.ci()`), so
logs of CI jobs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time

from flint import env


def should_show(quiet: bool | None) -> bool:
    if quiet is not None:
        return not quiet
    return sys.stderr.isatty() and not env.ci()


class Progress:
    """`with Progress(total_s, label, show) as p: p.update(sent=..., done=..., errors=..., tokens=...)`."""

    def __init__(self, total_s: float, label: str, show: bool):
        self.total_s, self.label, self.show = total_s, label, show
        self._t0 = time.perf_counter()
        self._live = None

    def __enter__(self) -> "Progress":
        if self.show:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render({}), console=Console(stderr=True), refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def _render(self, counts: dict):
        from rich.text import Text

        elapsed = time.perf_counter() - self._t0
        frac = min(1.0, elapsed / self.total_s) if self.total_s else 1.0
        bar = "█" * int(frac * 30) + "░" * (30 - int(frac * 30))
        rate = counts.get("done", 0) / elapsed if elapsed > 0 else 0.0
        return Text(f"{self.label} {bar} {elapsed:5.1f}/{self.total_s:.0f}s  sent {counts.get('sent', 0)}  "
                    f"done {counts.get('done', 0)} ({rate:.1f}/s)  errors {counts.get('errors', 0)}  "
                    f"tokens {counts.get('tokens', 0)}")

    def update(self, **counts) -> None:
        if self._live is not None:
            self._live.update(self._render(counts))

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)


class CountProgress:
    """`with CountProgress(label, show) as p: work(progress=p.update)` where `p.update(done, total)`."""

    def __init__(self, label: str, show: bool):
        self.label, self.show = label, show
        self._bar = None

    def __enter__(self) -> "CountProgress":
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TimeElapsedColumn

            self._bar = RichProgress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
