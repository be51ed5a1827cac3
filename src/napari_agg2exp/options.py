"""One option look-up for every named choice (methods, metrics, parts, blend modes, ...).

Like MONAI's ``look_up_option``: the canonical value, or an :class:`Agg2ExpError` that names what
was given, lists the choices and suggests the closest one ("did you mean ...?").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from napari_agg2exp.errors import Agg2ExpError

__all__ = ["look_up_option", "did_you_mean"]


def did_you_mean(value: Any, options: Iterable[Any], cutoff: float = 0.3) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or ``""``."""
    names = [str(o) for o in options]
    match = difflib.get_close_matches(str(value), names, n=1, cutoff=cutoff)
    return f" (did you mean {match[0]!r}?)" if match else ""


def look_up_option(value: Any, options: Iterable[Any] | Mapping[str, Any], *, what: str = "option",
                   aliases: Mapping[str, str] | None = None, normalise: bool = False) -> Any:
    """The canonical choice for ``value``.

    Args:
        value: what the user gave (a string or an enum member).
        options: the valid choices (a sequence, an enum class, or a mapping whose keys are the choices).
        what: what the option is, for the message (``"method"``, ``"blend mode"``, ...).
        aliases: other spellings -> canonical choice.
        normalise: compare lower-cased, with ``-`` and ``_`` equal.

    Returns:
        The matching choice (the key for a mapping, the member's value for an enum).

    Raises:
        Agg2ExpError: ``value`` is not a choice; the message lists them and suggests the closest.
    """
    if isinstance(options, type) and issubclass(options, Enum):
        choices = [m.value for m in options]
    else:
        choices = list(options.keys()) if isinstance(options, Mapping) else list(options)
    if isinstance(value, Enum):
        value = value.value
    if value in choices:
        return value
    key = str(value).strip()

    def canon(s: str) -> str:
        return s.lower().replace("-", "_") if normalise else s

    table = {canon(str(c)): c for c in choices}
    for alias, target in (aliases or {}).items():
        table.setdefault(canon(alias), target)
    if canon(key) in table:
        return table[canon(key)]
    raise Agg2ExpError(f"unknown {what} {value!r}; use one of {', '.join(str(c) for c in choices)}"
                       + did_you_mean(key, choices))
