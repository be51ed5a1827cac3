"""CLI: ``phantom`` -- synthetic thorax CT phantoms (image, labels, pathology) for trying the tool."""

from __future__ import annotations

import argparse

from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.data.phantom.cohort import write_phantom_cohort
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write synthetic thorax CT phantoms (image, labels, pathology)")
    p.add_argument("--out", required=True, help="output folder (case_XXXX/ sub-folders and labels.json)")
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--no-pathology", action="store_true", help="no nodules / effusions")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_phantom)


def cmd_phantom(args: argparse.Namespace) -> int:
    if args.cases < 1:
        raise Agg2ExpError(f"--cases must be >= 1, got {args.cases}")
    paths = write_phantom_cohort(
        args.out, args.cases, seed=args.seed, pathology=not args.no_pathology, overwrite=args.overwrite,
        progress=TerminalProgress("phantom"),
    )
    print(f"wrote {len(paths)} case(s) to {args.out}")
    return 0
