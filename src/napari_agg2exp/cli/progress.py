"""Terminal progress for the command line: a tqdm bar with elapsed time and ETA on stderr."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """A ``progress(done, total, message)`` callback that draws a tqdm bar (ETA included).

    Args:
        label: text in front of the bar.
        min_interval: seconds between redraws.
        stream: where to draw (default: stderr).
    """

    def __init__(self, label: str = "", min_interval: float = 0.2, stream: TextIO | None = None):
        self.label = label
        self.min_interval = min_interval
        self.stream = stream or sys.stderr
        self._bar: tqdm | None = None
        self._finished: int | None = None  # total of the bar last completed (late "done" calls are dropped)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self._bar is None and self._finished == total and done >= total:
            return
        if self._bar is None or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total, desc=self.label, file=self.stream, mininterval=self.min_interval,
                             dynamic_ncols=True, leave=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                             "[{elapsed}<{remaining}] {postfix}")
        bar = self._bar
        if message:
            bar.set_postfix_str(message[:40], refresh=False)
        bar.update(max(0, int(done) - bar.n))
        if total and done >= total:
            self.close()
            self._finished = total

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
