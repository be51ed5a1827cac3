"""CLI: ``evaluate`` -- explanation quality of attribution methods (SPEC §6) on one scan or a manifest.

Every input is checked before the work starts; outputs are written to a staging folder and moved
into ``--out`` only on success, so a failed or cancelled run leaves no partial results.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from napari_agg2exp.attribution.methods import look_up_method
from napari_agg2exp.cli.arguments import (
    add_model_args,
    add_window_args,
    model_from_args,
    print_warnings,
    window_from_args,
)
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.evaluate import (
    CURVE_METRICS,
    check_settings,
    look_up_methods,
    look_up_metrics,
)
from napari_agg2exp.evaluation.metrics import PAPER_SUBSET_SIZE
from napari_agg2exp.files import check_out_dir, staged_output
from napari_agg2exp.models.inference import check_window_options
from napari_agg2exp.workflows.case import read_case_inputs
from napari_agg2exp.workflows.evaluation import evaluate_cases
from napari_agg2exp.workflows.manifest import read_manifest

__all__ = ["register", "parse_samples", "parse_curve_step", "method_parameters"]

DEFAULT_METHODS = "vg,ig,sg,kernelshap-cubes,kernelshap-semantic"
DEFAULT_METRICS = "faithfulness,sensitivity,complexity,randomisation"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="explanation quality of attribution methods: faithfulness, sensitivity, complexity, randomisation, "
             "deletion, insertion",
        description="Score attribution methods on one scan (IMAGE) or several (--manifest) with the metrics of the "
                    "paper (appendix B.2), and optionally the deletion (AOPC) / insertion (AUC) curves. Writes "
                    "metrics.csv (case,method,target,metric,value), metrics.md (mean ± sd per method and metric) "
                    "and, with deletion or insertion, curves.csv (case,method,target,metric,step,fraction,score). "
                    "The same voxel subsets, noise and random weights are used for every method.",
    )
    p.add_argument("image", nargs="?", default=None, help="input .nii / .nii.gz (or use --manifest)")
    p.add_argument("--manifest", default=None,
                   help="CSV with columns case,image[,labels] (paths relative to the CSV) to evaluate several cases")
    p.add_argument("--labels", default=None, help="ground-truth labels of IMAGE: also writes quality.csv (Dice)")
    p.add_argument("--case", default=None, help="case name of IMAGE in the tables (default: the file name)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated attribution methods (default {DEFAULT_METHODS})")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help=f"comma-separated metrics (default {DEFAULT_METRICS}; also deletion, insertion)")
    p.add_argument("--classes", default="all", help="comma-separated class names or ids, or 'all' (default: every predicted class)")
    g = p.add_argument_group("metric settings (paper defaults)")
    g.add_argument("--subsets", type=int, default=100, help="faithfulness: random voxel subsets (100)")
    g.add_argument("--subset-size", type=int, default=PAPER_SUBSET_SIZE,
                   help=f"faithfulness: voxels per subset ({PAPER_SUBSET_SIZE} = 224²; at most a quarter of the volume)")
    g.add_argument("--noise-samples", type=int, default=3, help="sensitivity: noise samples (3)")
    g.add_argument("--noise-bound", type=float, default=0.1, help="sensitivity: uniform noise in [-b, b], preprocessed units (0.1)")
    g.add_argument("--threshold", type=float, default=0.1, help="complexity: threshold θ on |a|/max|a| (0.1)")
    g.add_argument("--curve-step", default=str(PAPER_SUBSET_SIZE),
                   help=f"deletion/insertion: voxels per step ({PAPER_SUBSET_SIZE} = 224²; at most a tenth of the "
                        "volume) or a fraction of the volume, e.g. 0.05 or 5%%")
    g.add_argument("--curve-steps", type=int, default=None,
                   help="deletion/insertion: at most this many steps (default: until the whole volume is perturbed)")
    g.add_argument("--seed", type=int, default=0, help="seed of subsets, noise, random weights and the methods (0)")
    g = p.add_argument_group("attribution settings (paper defaults)")
    g.add_argument("--steps", type=int, default=None, help="IG steps (20)")
    g.add_argument("--samples", default=None,
                   help="SG samples (20) and KernelSHAP coalitions (1000 cubes, 200 semantic): one number for all, "
                        "or per method, e.g. sg=10,kernelshap-cubes=200,kernelshap-semantic=50")
    g.add_argument("--noise-level", type=float, default=0.1, help="SG noise σ as a fraction of the intensity range (0.1)")
    g.add_argument("--baseline", type=float, default=0.0,
                   help="IG baseline, KernelSHAP removed-feature value and faithfulness replacement value (0)")
    g.add_argument("--batch-size", type=int, default=4, help="perturbed inputs per forward pass (4)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    add_model_args(p)
    add_window_args(p, batch=False)
    p.set_defaults(func=cmd_evaluate)


def parse_samples(text: str | None, methods: list[str]) -> dict[str, int]:
    """``--samples``: ``N`` (every sampling method) or ``method=N,...`` -> {method: N}."""
    if text is None or str(text).strip() == "":
        return {}
    sampling = [m for m in methods if m == "sg" or m.startswith("kernelshap")]
    usage = f"--samples must be a number or method=N pairs (e.g. sg=10,kernelshap-cubes=200), got {text!r}"
    out: dict[str, int] = {}
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if len(parts) == 1 and "=" not in parts[0]:
        if not parts[0].isdigit():
            raise Agg2ExpError(usage)
        out = {m: int(parts[0]) for m in sampling}
    for part in parts if not out else []:
        k, sep, v = (s.strip() for s in part.partition("="))
        if not sep or not v.isdigit():
            raise Agg2ExpError(usage)
        if k not in ("sg", "kernelshap-cubes", "kernelshap-semantic"):
            raise Agg2ExpError(f"--samples: {k!r} takes no samples; use sg, kernelshap-cubes or kernelshap-semantic")
        out[k] = int(v)
    if any(v < 1 for v in out.values()):
        raise Agg2ExpError(f"--samples must be at least 1, got {text!r}")
    return out


def parse_curve_step(text: str | float) -> int | float:
    """``--curve-step``: a voxel count (``50176``) or a fraction of the volume (``0.05`` or ``5%``)."""
    t = str(text).strip()
    usage = (f"--curve-step must be a whole number of voxels >= 1 or a fraction in (0, 1) (e.g. 0.05 or 5%), "
             f"got {text!r}")
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise Agg2ExpError(usage) from None
    if not (0 < value < 1 or (value >= 1 and value.is_integer())):
        raise Agg2ExpError(usage)
    return value if value < 1 else int(value)


def method_parameters(args: argparse.Namespace, methods: list[str]) -> dict[str, dict]:
    """Each method's parameters from the shared flags (``--samples`` may differ per method)."""
    samples = parse_samples(args.samples, methods)
    out = {}
    for m in methods:
        settings = {"steps": args.steps, "noise_level": args.noise_level, "baseline": args.baseline,
                    "samples": samples.get(m)}
        out[m] = look_up_method(m).parameters_from_settings(settings)
        look_up_method(m).build_parameters(out[m])  # invalid values fail now
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    methods = look_up_methods(args.methods)
    metrics = look_up_metrics(args.metrics)
    curve_step = parse_curve_step(args.curve_step)
    check_settings(args.subsets, args.subset_size, args.noise_samples, args.noise_bound, args.threshold,
                   curve_step, args.curve_steps)
    if args.batch_size < 1:
        raise Agg2ExpError(f"--batch-size must be at least 1, got {args.batch_size}")
    method_params = method_parameters(args, methods)
    if (args.image is None) == (args.manifest is None):
        raise Agg2ExpError("give either IMAGE or --manifest CASES.csv (exactly one)")
    if args.manifest is not None:
        if args.labels or args.case:
            raise Agg2ExpError("--labels and --case are for a single IMAGE; put them in the manifest (case,image,labels)")
        cases = read_manifest(args.manifest, columns=("labels",))
    else:
        image, _ = read_case_inputs(args.image, args.labels)  # fail fast on bad input, before the model loads
        cases = [{"case": args.case or image.name, "image": args.image, "labels": args.labels}]
    check_out_dir(args.out, args.overwrite)
    window = window_from_args(args)
    check_window_options(window or (1, 1, 1), args.overlap, args.blend)
    model = model_from_args(args)
    classes = args.classes
    if classes not in (None, "all"):
        classes = [t.strip() for t in classes.split(",") if t.strip()]
        for t in classes:
            model.class_index(t)  # unknown names fail now, before any work
    settings = {"cases": len(cases), "classes": args.classes, "subsets": args.subsets,
                "subset size (asked)": args.subset_size, "noise samples": args.noise_samples,
                "noise bound": args.noise_bound, "complexity threshold": args.threshold, "seed": args.seed,
                **({"curve step (asked)": curve_step, "curve steps": args.curve_steps or "whole volume"}
                   if any(m in CURVE_METRICS for m in metrics) else {}),
                **{f"{m} parameters": ", ".join(f"{k}={v}" for k, v in p.items()) or "paper defaults"
                   for m, p in method_params.items()}}
    t0 = time.perf_counter()
    with staged_output(args.out, args.overwrite) as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, md = evaluate_cases(
            model, cases, tmp, methods=methods, metrics=metrics, targets=classes, method_params=method_params,
            settings=settings, window={"window_size": window, "overlap": args.overlap, "blend": args.blend},
            progress_for=lambda case, i: TerminalProgress(f"evaluate {case} ({i + 1}/{len(cases)})"),
            n_subsets=args.subsets, subset_size=args.subset_size, n_noise=args.noise_samples,
            noise_bound=args.noise_bound, threshold=args.threshold, baseline=args.baseline, seed=args.seed,
            batch_size=args.batch_size, curve_step=curve_step, curve_steps=args.curve_steps,
        )
    print_warnings(caught)
    print(md, end="")
    curves = ", curves.csv" if any(m in CURVE_METRICS for m in metrics) else ""
    print(f"evaluated {len(cases)} case(s) in {time.perf_counter() - t0:.0f}s; wrote {Path(args.out) / 'metrics.csv'} "
          f"({len(table)} rows){curves} and metrics.md")
    return 0
