"""The ``agg2exp`` command line: a thin caller of the core.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands; a sub-command's parser sets ``func`` (called with the parsed ``args``).
User errors (:class:`Agg2ExpError`) print one line ``agg2exp: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from napari_agg2exp.errors import Agg2ExpError, Cancelled

__all__ = [
    "main",
    "build_parser",
    "TerminalProgress",
    "prepare_out_dir",
    "staged_output",
    "check_out_dir",
    "add_model_args",
    "add_window_args",
    "model_from_args",
]

#: Modules that register sub-commands (imported lazily so ``agg2exp --help`` is fast).
_COMMAND_MODULES = (
    "napari_agg2exp.cli.segment",
    "napari_agg2exp.cli.explain",
    "napari_agg2exp.cli.analysis",
    "napari_agg2exp.cli.evaluate",
    "napari_agg2exp.cli.cohort",
)


class TerminalProgress:
    """A progress callback that draws a one-line bar on a terminal (plain lines otherwise)."""

    def __init__(self, label: str = "", stream=None, min_interval: float = 0.2):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._last_pct = -1

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.perf_counter()
        final = total and done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        frac = done / total if total else 0.0
        elapsed = now - self._t0
        if self.tty:
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% {elapsed:6.1f}s {message[:40]:<40}")
            if final:
                self.stream.write("\n")
            self.stream.flush()
        else:
            pct = int(frac * 10) * 10
            if pct != self._last_pct or final:
                self._last_pct = pct
                self.stream.write(f"{self.label} {pct:3d}% ({elapsed:.1f}s) {message}\n")
                self.stream.flush()


def prepare_out_dir(path: str | os.PathLike, overwrite: bool, marker_files: tuple[str, ...] = ()) -> "os.PathLike":
    """Create an output folder; refuse one that already holds results unless ``overwrite``."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise Agg2ExpError(f"output path {p} exists and is not a folder -- choose another --out")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise Agg2ExpError(f"output folder {p} already holds results -- choose another --out or pass --overwrite")
    p.mkdir(parents=True, exist_ok=True)
    return p


def check_out_dir(path: str | os.PathLike, overwrite: bool):
    """Refuse an output folder that already holds results (unless ``overwrite``); creates nothing."""
    from pathlib import Path

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise Agg2ExpError(f"output path {out} exists and is not a folder -- choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise Agg2ExpError(f"output folder {out} already holds results -- choose another --out or pass --overwrite")
    return out


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, overwrite: bool):
    """Write a command's outputs into a temporary folder; move them into ``path`` only on success.

    Refuses (before any work) an output folder that already holds results unless ``overwrite``.
    On an error or cancel nothing is left behind: no partial output files.
    """
    import shutil
    import tempfile
    from pathlib import Path

    out = check_out_dir(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            dest = out / entry.name
            if dest.is_dir() and entry.is_dir():
                shutil.rmtree(dest)
            os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="model folder (model.json + weights) or TorchScript file; default: the bundled model")
    g.add_argument("--label-names", default=None, help="labels JSON for a TorchScript model ({\"0\": \"background\", ...})")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that need pickle (runs code from the file!)")


def add_window_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sliding window")
    g.add_argument("--window-size", type=int, nargs="+", default=None, help="window size (1 or 3 ints); default: the model's (96)")
    g.add_argument("--overlap", type=float, default=0.25, help="window overlap in [0, 1) (default 0.25)")
    g.add_argument("--blend", default="constant", help="blending of overlapping windows: constant or gaussian")
    g.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass (default 1)")


def window_from_args(args) -> tuple[int, int, int] | None:
    ws = getattr(args, "window_size", None)
    if ws is None:
        return None
    if len(ws) == 1:
        return (ws[0],) * 3
    if len(ws) != 3:
        raise Agg2ExpError(f"--window-size takes 1 or 3 integers, got {ws}")
    return tuple(ws)


def model_from_args(args):
    import warnings

    from napari_agg2exp.models.loading import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(
            args.model,
            label_names=args.label_names,
            device=args.device,
            trust_checkpoint=args.trust_checkpoint,
        )
    for w in caught:
        print(f"agg2exp: warning: {w.message}", file=sys.stderr)
    return model


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="agg2exp",
        description="Explain 3D segmentation models: voxel attributions aggregated to RoI importance (Agg2Exp).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command group is not part of this build
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from napari_agg2exp.malloc_tuning import tune_malloc

    tune_malloc()  # before any worker thread exists (see _malloc)
    try:
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
