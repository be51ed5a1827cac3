"""Arguments shared by several commands: model, sliding window, output folders, method settings."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import check_out_dir
from napari_agg2exp.models.inference import window_size_3d
from napari_agg2exp.models.loading import SegmentationModel, load_model

__all__ = [
    "add_method_args",
    "add_model_args",
    "add_window_args",
    "method_settings",
    "model_from_args",
    "prepare_out_dir",
    "print_warnings",
    "window_from_args",
]


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="model folder (model.json + weights), MONAI bundle folder, nnU-Net v2 result folder or TorchScript file; "
                        "default: the bundled model")
    g.add_argument("--label-names", default=None,
                   help="labels JSON for a TorchScript model ({\"0\": \"background\", ...})")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoints that need pickle (runs code from the file!)")
    g.add_argument("--trust-bundle", action="store_true",
                   help="evaluate a MONAI bundle's Python expressions (runs code from the bundle!)")
    g.add_argument("--tta", action="store_true",
                   help="nnU-Net folders: mirroring test-time augmentation (nnU-Net's default; off here, 2-8x slower)")


def add_window_args(p: argparse.ArgumentParser, *, batch: bool = True) -> None:
    g = p.add_argument_group("sliding window")
    g.add_argument("--window-size", type=int, nargs="+", default=None,
                   help="window size (1 or 3 ints); default: the model's (96)")
    g.add_argument("--overlap", type=float, default=None,
                   help="window overlap in [0, 1) (default: the model's, else 0.25)")
    g.add_argument("--blend", default=None,
                   help="blending of overlapping windows: constant or gaussian (default: the model's, else constant)")
    if batch:
        g.add_argument("--sw-batch-size", type=int, default=None,
                       help="windows per forward pass (default: the model's, else 1)")


def add_method_args(p: argparse.ArgumentParser) -> None:
    """The attribution settings every method reads what it needs from (see the method registry)."""
    p.add_argument("--steps", type=int, default=None, help="IG steps (default 20)")
    p.add_argument("--samples", type=int, default=None,
                   help="SG samples (20) / KernelSHAP coalitions (1000 cubes, 200 semantic) / "
                        "Shapley sampling permutations (25)")
    p.add_argument("--noise-level", type=float, default=None,
                   help="SG noise σ as a fraction of the intensity range (0.1)")
    p.add_argument("--baseline", type=float, default=None,
                   help="IG baseline / value of removed features and occluded patches (0)")
    p.add_argument("--occlusion-window", type=int, nargs="+", default=None, metavar="N",
                   help="occlusion: patch size on the model grid, 1 or 3 ints (16)")
    p.add_argument("--occlusion-stride", type=int, nargs="+", default=None, metavar="N",
                   help="occlusion: patch step, 1 or 3 ints (half the patch)")
    p.add_argument("--cubes-per-axis", type=int, default=None,
                   help="cube features per axis (KernelSHAP cubes 8, feature ablation 8, Shapley sampling 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4,
                   help="IG steps / SG samples / coalitions / perturbations per batch (4)")


def method_settings(args: argparse.Namespace) -> dict:
    """The generic method settings of :func:`add_method_args` (``None`` = the method's default)."""
    keys = ("steps", "samples", "noise_level", "baseline", "seed", "batch_size", "spread", "features",
            "occlusion_window", "occlusion_stride", "cubes_per_axis")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def window_from_args(args: argparse.Namespace) -> tuple[int, int, int] | None:
    ws = getattr(args, "window_size", None)
    if ws is None:
        return None
    if len(ws) not in (1, 3):
        raise Agg2ExpError(f"--window-size takes 1 or 3 integers, got {ws}")
    return window_size_3d(ws)


def print_warnings(caught: Iterable[warnings.WarningMessage]) -> None:
    """Print caught warnings once each as ``agg2exp: warning: ...`` (deprecations left out)."""
    seen = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            print(f"agg2exp: warning: {msg}", file=sys.stderr)


def model_from_args(args: argparse.Namespace, path: str | None = None) -> SegmentationModel:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path if path is not None else args.model, label_names=args.label_names,
                           device=args.device, trust_checkpoint=args.trust_checkpoint,
                           trust_bundle=getattr(args, "trust_bundle", False),
                           tta=getattr(args, "tta", False))
    print_warnings(caught)
    return model


def prepare_out_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Check an output folder before any work (not a file, no results unless ``overwrite``, not in use by
    another run, writable); creates nothing -- write it with :func:`~napari_agg2exp.files.staged_output`."""
    return check_out_dir(path, overwrite)
