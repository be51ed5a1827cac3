"""CLI: ``segment`` -- one scan through the case pipeline, segmentation only."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from napari_agg2exp.cli.arguments import add_model_args, add_window_args, model_from_args, window_from_args
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.files import check_out_dir, staged_output
from napari_agg2exp.workflows.case import read_case_inputs, run_case
from napari_agg2exp.workflows.case_folder import CaseFolder

__all__ = ["register", "print_quality"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a CT scan (sliding-window inference)")
    p.add_argument("image", help="input .nii / .nii.gz")
    p.add_argument("--ground-truth", default=None, help="ground-truth labels (.nii.gz) to write quality.csv")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    add_model_args(p)
    add_window_args(p)
    p.set_defaults(func=cmd_segment)


def print_quality(table: pd.DataFrame) -> None:
    rows = table.dropna(subset=["dice"])
    width = max(len(c) for c in rows["class"]) if len(rows) else 10
    print(f"{'class':<{width}}  dice    iou")
    for _, r in rows.iterrows():
        print(f"{r['class']:<{width}}  {r['dice']:.3f}  {r['iou']:.3f}")
    fg = rows[rows["class"] != "background"]
    if len(fg):
        print(f"{'mean (foreground)':<{width}}  {fg['dice'].mean():.3f}  {fg['iou'].mean():.3f}")


def cmd_segment(args: argparse.Namespace) -> int:
    ws = window_from_args(args)
    check_out_dir(args.out, args.overwrite)
    image, gt = read_case_inputs(args.image, args.ground_truth)  # read once, before the model loads
    model = model_from_args(args)
    with staged_output(args.out, args.overwrite) as tmp:
        res = run_case(model, image, ground_truth=gt, out=CaseFolder(tmp, final=args.out),
                       window_size=ws, overlap=args.overlap, blend=args.blend, sw_batch_size=args.sw_batch_size,
                       progress=TerminalProgress("segment"))
    print(f"wrote {Path(args.out) / 'prediction.nii.gz'}")
    if res.quality is not None:
        print_quality(res.quality)
    return 0
