"""CLI: ``demo`` -- the main job on the bundled sample and the bundled model, end to end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from napari_agg2exp.cli.explain import explainer_from_args, print_explanation
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.cli.segment import print_quality
from napari_agg2exp.data.phantom.cases import make_phantom
from napari_agg2exp.data.volume import save_volume
from napari_agg2exp.files import staged_output
from napari_agg2exp.models.loading import load_model
from napari_agg2exp.workflows.case import run_case
from napari_agg2exp.workflows.case_folder import CaseFolder
from napari_agg2exp.workflows.reports import write_case_report

__all__ = ["register", "DEMO_SEED"]

#: Seed of the demo phantom: outside the training seeds of the bundled model.
DEMO_SEED = 90210


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the bundled sample and the bundled model")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--method", default="sg", help="attribution method for the demo (default sg)")
    p.add_argument("--samples", type=int, default=None, help="SmoothGrad samples (default: paper's 20)")
    p.set_defaults(func=cmd_demo)


def print_local_summary(table: pd.DataFrame) -> None:
    abs_mass = table[(table["part"] == "abs") & (table["target"] != table["roi"]) & (table["roi"] != "background")]
    own = table[(table["part"] == "abs") & (table["target"] == table["roi"])].set_index("target")["mass"]
    print("local RoI importance (|a| mass): share inside the class itself, and the largest other organ:")
    for t, g in abs_mass.groupby("target", sort=False):
        top = g.sort_values("mass", ascending=False).iloc[0]
        print(f"  {t:<24} itself {own.get(t, float('nan')):.2f}   <- {top['roi']:<24} {top['mass']:.2f}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Phantom -> one case run (segmentation once, attributions, RoI importance, quality) -> report."""
    t0 = time.perf_counter()
    explainer = explainer_from_args(args.method, argparse.Namespace(samples=args.samples))
    with staged_output(args.out, args.overwrite) as tmp:
        image, labels, pathology = make_phantom(DEMO_SEED).volumes()
        sample = tmp / "sample"
        save_volume(image, sample / "image.nii.gz", dtype="float32")
        save_volume(labels, sample / "labels.nii.gz", dtype="uint8")
        save_volume(pathology, sample / "pathology.nii.gz", dtype="uint8")
        model = load_model(None, device=args.device)
        print(f"model: bundled {model.spec.architecture if model.spec else ''} on {model.device}; "
              f"sample: phantom seed {DEMO_SEED}, shape {image.shape}")
        res = run_case(model, sample / "image.nii.gz", case="demo", ground_truth=sample / "labels.nii.gz",
                       explainer=explainer, out=CaseFolder(tmp, final=args.out),
                       progress=TerminalProgress(f"demo ({args.method})"))
        print_quality(res.quality)
        print_explanation(res.explanation)
        print_local_summary(res.local_importance)
        report = write_case_report(tmp, progress=TerminalProgress("report"))
    print(f"case report: {Path(args.out) / report.name}")
    print(f"demo finished in {time.perf_counter() - t0:.1f}s; results in {args.out}/")
    return 0
