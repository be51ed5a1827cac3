"""The ``agg2exp`` command line: a thin caller of the core.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands; a sub-command's parser sets ``func`` (called with the parsed ``args``).
User errors (:class:`Agg2ExpError`) print one line ``agg2exp: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from napari_agg2exp.cli import analysis, cohort, compare, demo, evaluate, explain, phantom, segment, train
from napari_agg2exp.errors import Agg2ExpError, Cancelled
from napari_agg2exp.malloc_tuning import tune_malloc

__all__ = ["main", "build_parser"]

#: Modules that add sub-commands, in the order of ``agg2exp --help``.
COMMAND_GROUPS = (phantom, segment, train, demo, explain, analysis, evaluate, compare, cohort)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agg2exp",
        description="Explain 3D segmentation models: voxel attributions aggregated to RoI importance (Agg2Exp).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Warnings on one line, ``agg2exp: warning: ...`` (like errors), without source file and line."""
    print(f"agg2exp: warning: {str(message).splitlines()[0] if str(message) else category.__name__}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    tune_malloc()  # only in the CLI process, before any worker thread exists (see malloc_tuning)
    try:
        with warnings.catch_warnings():  # restores the default display afterwards
            warnings.showwarning = _show_warning
            rc = args.func(args)
    except Agg2ExpError as e:
        print(f"agg2exp: error: {e}", file=sys.stderr)
        return 2
    except Cancelled:
        print("agg2exp: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("agg2exp: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
