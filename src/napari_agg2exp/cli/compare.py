"""CLI: ``compare`` -- segmentation models' Dice per class with one-way ANOVA (SPEC §9)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from napari_agg2exp.cli.arguments import add_window_args, print_warnings, window_from_args
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.compare import (
    anova_table,
    comparison_markdown,
    dice_table,
    find_labelled_cases,
)
from napari_agg2exp.files import atomic_write_text, check_out_dir, staged_output
from napari_agg2exp.models.inference import check_window_options
from napari_agg2exp.models.loading import check_model_window, load_model

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare segmentation models: mean Dice per class and one-way ANOVA (p < 0.05)",
        description="Segment every case of --data with each model; writes dice.csv (case,model,class,dice), "
                    "anova.csv and comparison.md (mean Dice per class and overall, ANOVA p-values).",
    )
    p.add_argument("models", nargs="+", help="model folders or TorchScript files ('bundled' = the bundled model)")
    p.add_argument("--data", required=True, help="folder of case_*/image.nii.gz + labels.nii.gz (and labels.json)")
    p.add_argument("--names", default=None, help="comma-separated display names of the models (default: folder names)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the ANOVA (0.05)")
    p.add_argument("--out", default=None, help="output folder (default: print the table only)")
    p.add_argument("--overwrite", action="store_true")
    g = p.add_argument_group("model")
    g.add_argument("--label-names", default=None, help="labels JSON for TorchScript models")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that need pickle (runs code from the file!)")
    add_window_args(p)
    p.set_defaults(func=cmd_compare)


def _model_names(paths: list[str], names: str | None) -> list[str]:
    if names is not None:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(paths) or any(not n for n in out):
            raise Agg2ExpError(f"--names gives {len(out)} name(s) for {len(paths)} model(s) -- give one name per model")
        if len(set(out)) != len(out):
            raise Agg2ExpError("--names must be unique")
        return out
    out = []
    for p in paths:
        base = "bundled" if p == "bundled" else (Path(p).name if Path(p).name not in ("", "model.json") else Path(p).parent.name)
        name, k = base or "model", 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise Agg2ExpError(f"--alpha must be in (0, 1), got {args.alpha}")
    names = _model_names(args.models, args.names)
    cases, data_names = find_labelled_cases(args.data)
    if args.out is not None:
        check_out_dir(args.out, args.overwrite)
    window = window_from_args(args)
    check_window_options(window or (1, 1, 1), args.overlap, args.blend)
    models = {}
    for name, path in zip(names, args.models):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            models[name] = load_model(None if path == "bundled" else path, label_names=args.label_names,
                                      device=args.device, trust_checkpoint=args.trust_checkpoint)
        print_warnings(caught)
        check_model_window(models[name], window)  # a window each network can take, before any case runs
    if data_names is None:
        print(f"agg2exp: warning: {args.data} has no labels.json; assuming the label ids of model {names[0]}",
              file=sys.stderr)
    if len(models) < 2:
        print("agg2exp: note: one model -- the Dice table only (ANOVA needs two or more models)", file=sys.stderr)
    dice = dice_table(models, cases, data_names, window_size=window, overlap=args.overlap, blend=args.blend,
                      sw_batch_size=args.sw_batch_size, progress=TerminalProgress("compare"))
    anova = anova_table(dice, args.alpha)
    md = comparison_markdown(dice, anova, args.alpha)
    if args.out is not None:
        with staged_output(args.out, args.overwrite) as tmp:
            atomic_write_text(tmp / "dice.csv", dice.to_csv(index=False))
            atomic_write_text(tmp / "anova.csv", anova.to_csv(index=False))
            atomic_write_text(tmp / "comparison.md", "# Model comparison\n\n" + "\n".join(
                f"- {n}: {m.source}" for n, m in models.items()) + f"\n- data: {Path(args.data).resolve()}\n\n" + md)
    print(md, end="")
    if args.out is not None:
        print(f"wrote {Path(args.out) / 'dice.csv'}, anova.csv and comparison.md")
    return 0
