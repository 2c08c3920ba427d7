"""Progress for long work: rich bars on a terminal, plain lines for batch jobs, or nothing.

The library is silent by default off a terminal (it never prints); the command line asks for
plain lines there (``MODE = "auto"``), so a batch job's log (SLURM, nohup) shows how far it got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


class _Rich:
    def __init__(self, bar, task) -> None:  # type: ignore[no-untyped-def]
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)


class _Lines:
    """One plain line on stderr per ``STEP`` of the total, at least every ``EVERY`` seconds, and at
    the end: no control characters, so a log file stays readable. The time bound keeps a long job's
    log alive (a tenth of 100,000 images is minutes)."""

    STEP = 0.1
    EVERY = 60.0

    def __init__(self, total: int, description: str, unit: str) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self.t0 = self._last = time.perf_counter()
        self._next = 0.0  # the fraction at which the next line is due

    def advance(self, n: int = 1) -> None:
        self.done += n
        fraction = self.done / self.total
        now = time.perf_counter()
        if fraction + 1e-12 < self._next and self.done < self.total and now - self._last < self.EVERY:
            return
        self._last = now
        self._next = max(self._next, (int(fraction / self.STEP) + 1) * self.STEP)
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", about {(self.total - self.done) / rate:.0f} s left" if rate and self.done < self.total else ""
        sys.stderr.write(f"{self.description}: {self.done}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, "
                         f"{elapsed:.0f} s{left})\n")
        sys.stderr.flush()


#: Set by the CLI (``--quiet`` / ``--no-progress``: False; ``--progress``: True); ``None`` means
#: "when stderr is a terminal". Kept for callers that only switch progress on or off.
ENABLED: bool | None = None
#: What to show when ``ENABLED`` is not False: "bar" (rich, on a terminal; plain lines
#: otherwise), or ``None`` (the library's default: bars on a terminal, nothing otherwise).
MODE: str | None = None
#: The rich display now on screen, if any (innermost last).
_LIVE: list = []


def _kind() -> str:
    """'bar', 'lines' or 'off' for the next progress display."""
    tty = sys.stderr.isatty()
    if ENABLED is False or (ENABLED is None and MODE is None and not tty):
        return "off"
    return "bar" if tty else "lines"


@contextmanager
def bar(total: int, description: str, unit: str = "img") -> Iterator[Progress]:
    """Progress over ``total`` items showing items/s; a no-op when disabled."""
    kind = _kind()
    if kind == "off" or total <= 0:
        yield _Silent()
        return
    if kind == "lines":
        yield _Lines(total, description, unit)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task) -> Text:  # type: ignore[no-untyped-def]
            return Text(f"{task.speed:6.1f} {unit}/s" if task.speed else f"     ? {unit}/s")

    if _LIVE:  # rich allows one live display: a nested bar becomes a line of the outer one
        rp = _LIVE[-1]
        task = rp.add_task(description, total=total)
        try:
            yield _Rich(rp, task)
        finally:
            rp.remove_task(task)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with RichProgress(*columns, console=Console(stderr=True)) as rp:
        task = rp.add_task(description, total=total)
        _LIVE.append(rp)
        try:
            yield _Rich(rp, task)
        finally:
            _LIVE.pop()
