"""User-facing errors.

Every problem a user can cause (bad file, bad option, wrong model) raises :class:`Agg2ExpError`
with a message naming the problem and what to do. The CLI prints it on one line and exits with
status 2; the napari widgets show it as a notification.
"""

from __future__ import annotations

__all__ = ["Agg2ExpError", "Cancelled"]


class Agg2ExpError(ValueError):
    """A problem with the user's input, with a message that says how to fix it."""


class Cancelled(RuntimeError):
    """Raised inside a core function when its cancel flag is set."""
