"""Progress callbacks and cancel flags shared by all long-running core functions.

Core functions take ``progress: ProgressCallback | None`` called as ``progress(done, total, message)``
and ``cancel: CancelFlag | None`` -- anything with ``is_set()`` (e.g. :class:`threading.Event`) or a
zero-argument callable returning ``True`` to stop. They call :func:`check_cancel` between units of
work (one window, one batch) and raise :class:`~napari_agg2exp.errors.Cancelled`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from napari_agg2exp.errors import Cancelled

__all__ = ["ProgressCallback", "CancelFlag", "check_cancel", "report", "SubProgress"]

ProgressCallback = Callable[[int, int, str], Any]


class _HasIsSet(Protocol):
    def is_set(self) -> bool: ...


CancelFlag = _HasIsSet | Callable[[], bool]


def is_cancelled(cancel: CancelFlag | None) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def check_cancel(cancel: CancelFlag | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set."""
    if is_cancelled(cancel):
        raise Cancelled("cancelled by the user")


def report(progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(int(done), int(total), message)


class SubProgress:
    """Maps the progress of a sub-task into a slice ``[start, start + span)`` of a parent's total."""

    def __init__(self, progress: ProgressCallback | None, start: int, span: int, total: int):
        self.progress, self.start, self.span, self.total = progress, start, span, total

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.progress is None:
            return
        frac = done / total if total else 1.0
        self.progress(self.start + int(round(frac * self.span)), self.total, message)
