"""CLI: ``phantom`` -- synthetic thorax CT phantoms (image, labels, pathology) for trying the tool.

``--size full`` (512 x 512 x 300 at 0.8 x 0.8 x 1.5 mm) or ``--shape X Y Z --spacing SX SY SZ`` draw the
same anatomy at any grid, so sliding windows, resampling and the inverse mapping run at clinical size.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.data.phantom.cohort import write_phantom_cohort
from napari_agg2exp.data.phantom.grid import PHANTOM_SIZES
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option

__all__ = ["register", "phantom_grid"]

#: Smallest phantom side (voxels) the painters support (see ``make_phantom``).
_MIN_DIM = 24
#: Peak memory of drawing and writing one phantom, bytes per voxel (measured: 5.6 GB for 512 x 512 x 300).
_BYTES_PER_VOXEL = 72


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write synthetic thorax CT phantoms (image, labels, pathology)")
    p.add_argument("--out", required=True, help="output folder (case_XXXX/ sub-folders and labels.json)")
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--size", default=None,
                   help="grid preset: default (96x80x96 at 3 mm) or full (512x512x300 at 0.8x0.8x1.5 mm, "
                        "a clinical CT); --shape / --spacing override its parts")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                   help="grid size in voxels, X Y Z (each >= 24; default 96 80 96)")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                   help="voxel size in mm, 1 or 3 numbers SX SY SZ (default 3)")
    p.add_argument("--no-pathology", action="store_true", help="no nodules / effusions")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_phantom)


def _total_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - platform dependent
        return None


def phantom_grid(size: str | None, shape: list[int] | None,
                 spacing: list[float] | None) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The phantom grid ``(shape, spacing)`` of the ``--size`` / ``--shape`` / ``--spacing`` options.

    Raises:
        Agg2ExpError: an unknown preset, a shape that is not three integers >= 24, a spacing that is
            not 1 or 3 positive numbers, or a grid too large for this machine's memory.
    """
    base_shape, base_spacing = PHANTOM_SIZES[look_up_option(size or "default", PHANTOM_SIZES, what="phantom --size")]
    if shape is None:
        shp = tuple(base_shape)
    elif len(shape) != 3 or min(shape) < _MIN_DIM:
        raise Agg2ExpError(f"--shape needs three integers >= {_MIN_DIM} (X Y Z voxels), got "
                           f"{' '.join(map(str, shape))} -- e.g. --shape 512 512 300")
    else:
        shp = tuple(int(s) for s in shape)
    if spacing is None:
        sp = tuple(float(s) for s in base_spacing)
    elif len(spacing) not in (1, 3) or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise Agg2ExpError(f"--spacing needs 1 or 3 positive numbers in mm, got "
                           f"{' '.join(map(str, spacing))} -- e.g. --spacing 0.8 0.8 1.5")
    else:
        sp = tuple(float(s) for s in (spacing * 3 if len(spacing) == 1 else spacing))
    voxels = int(np.prod(shp, dtype=np.int64))
    need, have = voxels * _BYTES_PER_VOXEL, _total_memory()
    if have is not None and need > have:
        raise Agg2ExpError(f"a {shp[0]}x{shp[1]}x{shp[2]} phantom needs about {need / 2**30:.0f} GiB of memory to draw "
                           f"and this machine has {have / 2**30:.0f} GiB -- use a smaller --shape")
    return shp, sp


def cmd_phantom(args: argparse.Namespace) -> int:
    if args.cases < 1:
        raise Agg2ExpError(f"--cases must be >= 1, got {args.cases}")
    shape, spacing = phantom_grid(args.size, args.shape, args.spacing)
    paths = write_phantom_cohort(
        args.out, args.cases, seed=args.seed, shape=shape, spacing=spacing, pathology=not args.no_pathology,
        overwrite=args.overwrite, progress=TerminalProgress("phantom"),
    )
    sp = "x".join(f"{s:g}" for s in spacing)
    print(f"wrote {len(paths)} case(s) of {shape[0]}x{shape[1]}x{shape[2]} voxels at {sp} mm to {args.out}")
    return 0
