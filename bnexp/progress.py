"""Progress display: a rich bar per epoch on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Progress:
    """``mode``: bar | plain | none | auto (bar when stdout is a terminal, else plain)."""

    def __init__(self, mode: str, total_epochs: int, steps_per_epoch: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode, self.total_epochs, self.steps_per_epoch = mode, total_epochs, steps_per_epoch
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.fields[info]}"), transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def start_epoch(self, epoch: int, steps: int | None = None) -> None:
        """``steps``: this epoch's steps (the last may be cut short by trainer.steps)."""
        if self._bar is not None:
            self._task = self._bar.add_task(f"epoch {epoch}/{self.total_epochs}",
                                            total=steps or self.steps_per_epoch, info="")

    def update(self, done: int, loss: float) -> None:
        """``done`` steps of the epoch are finished (absolute, so the bar never overshoots)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=f"loss {loss:.4f}")

    def end_epoch(self, line: str) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
            self._bar.console.print(line, highlight=False)
        elif self.mode == "plain":
            print(line, flush=True)
