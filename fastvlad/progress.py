"""Progress bars (rich) for long work, silent when disabled or when not on a terminal."""

from __future__ import annotations

import sys
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


#: Set by the CLI (``--quiet`` / ``--verbose``); ``None`` means "when stderr is a terminal".
ENABLED: bool | None = None
#: The rich display now on screen, if any (innermost last).
_LIVE: list = []


@contextmanager
def bar(total: int, description: str, unit: str = "img") -> Iterator[Progress]:
    """A progress bar over ``total`` items showing items/s; a no-op when disabled."""
    enabled = sys.stderr.isatty() if ENABLED is None else ENABLED
    if not enabled or total <= 0:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
    from rich.progress import Progress as RichProgress
    from rich.progress import TimeElapsedColumn, TimeRemainingColumn
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
