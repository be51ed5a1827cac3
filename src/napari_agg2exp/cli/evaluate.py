"""CLI: ``evaluate`` (explanation quality, SPEC §6) and ``compare`` (models' Dice with ANOVA, SPEC §9).

Thin callers of :mod:`napari_agg2exp.evaluation`. Every input is checked before the work starts; outputs
are written to a staging folder and moved into ``--out`` only on success, so a failed or cancelled run
leaves no partial results.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from napari_agg2exp.cli.main import (
    TerminalProgress,
    add_model_args,
    add_window_args,
    check_out_dir,
    model_from_args,
    staged_output,
    window_from_args,
)
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["register", "read_manifest", "parse_samples", "run_evaluate"]

DEFAULT_METHODS = "vg,ig,sg,kernelshap-cubes,kernelshap-semantic"
DEFAULT_METRICS = "faithfulness,sensitivity,complexity,randomisation"


def register(sub) -> None:
    from napari_agg2exp.evaluation.metrics import PAPER_SUBSET_SIZE

    p = sub.add_parser(
        "evaluate",
        help="explanation quality of attribution methods: faithfulness, sensitivity, complexity, randomisation",
        description="Score attribution methods on one scan (IMAGE) or several (--manifest) with the metrics of the "
                    "paper (appendix B.2). Writes metrics.csv (case,method,target,metric,value) and metrics.md "
                    "(mean ± sd per method and metric). The same voxel subsets, noise and random weights are used "
                    "for every method.",
    )
    p.add_argument("image", nargs="?", default=None, help="input .nii / .nii.gz (or use --manifest)")
    p.add_argument("--manifest", default=None,
                   help="CSV with columns case,image[,labels] (paths relative to the CSV) to evaluate several cases")
    p.add_argument("--labels", default=None, help="ground-truth labels of IMAGE: also writes quality.csv (Dice)")
    p.add_argument("--case", default=None, help="case name of IMAGE in the tables (default: the file name)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated attribution methods (default {DEFAULT_METHODS})")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated metrics (default {DEFAULT_METRICS})")
    p.add_argument("--classes", default="all", help="comma-separated class names or ids, or 'all' (default: every predicted class)")
    g = p.add_argument_group("metric settings (paper defaults)")
    g.add_argument("--subsets", type=int, default=100, help="faithfulness: random voxel subsets (100)")
    g.add_argument("--subset-size", type=int, default=PAPER_SUBSET_SIZE,
                   help=f"faithfulness: voxels per subset ({PAPER_SUBSET_SIZE} = 224²; at most a quarter of the volume)")
    g.add_argument("--noise-samples", type=int, default=3, help="sensitivity: noise samples (3)")
    g.add_argument("--noise-bound", type=float, default=0.1, help="sensitivity: uniform noise in [-b, b], preprocessed units (0.1)")
    g.add_argument("--threshold", type=float, default=0.1, help="complexity: threshold θ on |a|/max|a| (0.1)")
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
    g = p.add_argument_group("sliding window")
    g.add_argument("--window-size", type=int, nargs="+", default=None, help="window size (1 or 3 ints); default: the model's")
    g.add_argument("--overlap", type=float, default=0.25, help="window overlap in [0, 1) (default 0.25)")
    g.add_argument("--blend", default="constant", help="blending of overlapping windows: constant or gaussian")
    p.set_defaults(func=cmd_evaluate)

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


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def read_manifest(path) -> list[dict]:
    """Rows ``{case, image, labels}`` of a manifest CSV (``case,image[,labels]``), paths resolved and checked.

    Raises:
        Agg2ExpError: missing / unreadable file, missing columns, duplicate case names, missing files.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise Agg2ExpError(f"manifest not found: {p} -- give a CSV with columns case,image[,labels]")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types
        raise Agg2ExpError(f"cannot read manifest {p} ({type(e).__name__}) -- give a CSV with columns case,image[,labels]") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("case", "image") if c not in df.columns]
    if missing:
        raise Agg2ExpError(f"manifest {p} lacks column(s) {', '.join(missing)} -- columns must be case,image[,labels]")
    if len(df) == 0:
        raise Agg2ExpError(f"manifest {p} lists no cases")
    rows = []
    for i, r in df.iterrows():
        case = str(r["case"]).strip()
        if not case:
            raise Agg2ExpError(f"manifest {p}, row {i + 2}: empty case name")
        image = (p.parent / str(r["image"]).strip()).resolve() if str(r["image"]).strip() else None
        if image is None or not image.is_file():
            raise Agg2ExpError(f"manifest {p}, case {case}: image file not found: {r['image']!r}")
        labels = str(r["labels"]).strip() if "labels" in df.columns else ""
        lab = (p.parent / labels).resolve() if labels else None
        if lab is not None and not lab.is_file():
            raise Agg2ExpError(f"manifest {p}, case {case}: labels file not found: {labels!r}")
        rows.append({"case": case, "image": image, "labels": lab})
    dup = sorted({r["case"] for r in rows if sum(q["case"] == r["case"] for q in rows) > 1})
    if dup:
        raise Agg2ExpError(f"manifest {p}: duplicate case names {', '.join(dup)} -- case names must be unique")
    return rows


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


def _method_params(args, methods: list[str]) -> dict[str, dict]:
    samples = parse_samples(args.samples, methods)
    if args.steps is not None and args.steps < 1:
        raise Agg2ExpError(f"--steps must be at least 1, got {args.steps}")
    params: dict[str, dict] = {}
    for m in methods:
        d: dict = {}
        if m == "ig":
            d.update(n_steps=args.steps, baseline=args.baseline)
        if m == "sg":
            d.update(noise_level=args.noise_level)
        if m in samples:
            d.update(n_samples=samples[m])
        if m.startswith("kernelshap"):
            d.update(baseline=args.baseline)
        params[m] = {k: v for k, v in d.items() if v is not None}
    return params


def _print_warnings(caught) -> None:
    seen = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            print(f"agg2exp: warning: {msg}", file=sys.stderr)


def run_evaluate(model, cases: list[dict], out_dir, *, methods: list[str], metrics: list[str], classes="all",
                 method_params=None, settings=None, progress_label="evaluate", cancel=None, **kwargs):
    """Evaluate every case and write ``metrics.csv``, ``metrics.md``, ``evaluation_info.json`` (and ``quality.csv``).

    Args:
        model: loaded segmentation model.
        cases: ``{case, image, labels}`` rows (see :func:`read_manifest`).
        out_dir: output folder (normally a staging folder).
        methods, metrics, classes, method_params: see :func:`~napari_agg2exp.evaluation.evaluate.evaluate_case`.
        settings: recorded in ``evaluation_info.json`` and listed under the Markdown table.
        **kwargs: further :func:`~napari_agg2exp.evaluation.evaluate.evaluate_case` settings.

    Returns:
        (metrics DataFrame, Markdown summary).
    """
    import pandas as pd

    from napari_agg2exp.evaluation.evaluate import evaluate_case, summary_markdown
    from napari_agg2exp.evaluation.dice import quality_table
    from napari_agg2exp.data.volume import atomic_write_text, load_volume

    out = Path(out_dir)
    tables, quality, info_cases = [], [], []
    targets = None if classes in (None, "all") else classes
    for i, c in enumerate(cases):
        image = load_volume(c["image"], what="image")
        gt = load_volume(c["labels"], what="labels") if c.get("labels") else None
        if gt is not None and gt.shape != image.shape:
            raise Agg2ExpError(f"case {c['case']}: labels shape {gt.shape} differs from the image's {image.shape}")
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = evaluate_case(model, image, methods, metrics, targets, case=c["case"], method_params=method_params,
                               progress=TerminalProgress(f"{progress_label} {c['case']} ({i + 1}/{len(cases)})"),
                               cancel=cancel, **kwargs)
        _print_warnings(caught)
        tables.append(df)
        info_cases.append({"case": c["case"], "image": str(c["image"]), "seconds": round(time.perf_counter() - t0, 1),
                           "seconds_per_method": {k: round(v, 1) for k, v in df.attrs["seconds"].items()},
                           "targets": df.attrs["targets"], "skipped": df.attrs["skipped"],
                           "model_grid": df.attrs["model_grid"], "subset_size": df.attrs["subset_size"]})
        if gt is not None:
            from napari_agg2exp.models.inference import segment

            pred = segment(model, image, window_size=kwargs.get("window_size"), overlap=kwargs.get("overlap", 0.25),
                           blend=kwargs.get("blend", "constant")).prediction
            quality.append(quality_table(pred.array, gt.array, model.class_names, case=c["case"]))
    table = pd.concat(tables, ignore_index=True)
    atomic_write_text(out / "metrics.csv", table.to_csv(index=False))
    md = summary_markdown(table, settings)
    atomic_write_text(out / "metrics.md", md)
    info = {"model": model.source, "methods": methods, "metrics": metrics, "settings": settings or {},
            "method_parameters": method_params or {}, "cases": info_cases}
    atomic_write_text(out / "evaluation_info.json", json.dumps(info, indent=2, default=str) + "\n")
    if quality:
        atomic_write_text(out / "quality.csv", pd.concat(quality, ignore_index=True).to_csv(index=False))
    return table, md


def cmd_evaluate(args) -> int:
    from napari_agg2exp.evaluation.evaluate import _check_settings, _look_up_metrics, look_up_methods
    from napari_agg2exp.data.volume import load_volume

    methods = look_up_methods(args.methods)
    metrics = _look_up_metrics(args.metrics)
    _check_settings(args.subsets, args.subset_size, args.noise_samples, args.noise_bound, args.threshold)
    if args.batch_size < 1:
        raise Agg2ExpError(f"--batch-size must be at least 1, got {args.batch_size}")
    method_params = _method_params(args, methods)
    if (args.image is None) == (args.manifest is None):
        raise Agg2ExpError("give either IMAGE or --manifest CASES.csv (exactly one)")
    if args.manifest is not None:
        if args.labels or args.case:
            raise Agg2ExpError("--labels and --case are for a single IMAGE; put them in the manifest (case,image,labels)")
        cases = read_manifest(args.manifest)
    else:
        image = load_volume(args.image, what="image")  # fail fast on bad input, before the model loads
        if args.labels:
            gt = load_volume(args.labels, what="labels")
            if gt.shape != image.shape:
                raise Agg2ExpError(f"labels shape {gt.shape} differs from the image's {image.shape} -- they must share a grid")
        cases = [{"case": args.case or image.name, "image": Path(args.image), "labels": args.labels}]
    check_out_dir(args.out, args.overwrite)
    window = window_from_args(args)
    from napari_agg2exp.models.inference import check_window_options

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
                **{f"{m} parameters": ", ".join(f"{k}={v}" for k, v in p.items()) or "paper defaults"
                   for m, p in method_params.items()}}
    t0 = time.perf_counter()
    with staged_output(args.out, args.overwrite) as tmp:
        table, md = run_evaluate(
            model, cases, tmp, methods=methods, metrics=metrics, classes=classes, method_params=method_params,
            settings=settings, n_subsets=args.subsets, subset_size=args.subset_size, n_noise=args.noise_samples,
            noise_bound=args.noise_bound, threshold=args.threshold, baseline=args.baseline, seed=args.seed,
            window_size=window, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
        )
    print(md, end="")
    print(f"evaluated {len(cases)} case(s) in {time.perf_counter() - t0:.0f}s; wrote {Path(args.out) / 'metrics.csv'} "
          f"({len(table)} rows) and metrics.md")
    return 0


# ----------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------


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


def cmd_compare(args) -> int:
    import warnings as _w

    from napari_agg2exp.evaluation.compare import (
        anova_table,
        comparison_markdown,
        dice_table,
        find_labelled_cases,
    )
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.data.volume import atomic_write_text

    if not 0 < args.alpha < 1:
        raise Agg2ExpError(f"--alpha must be in (0, 1), got {args.alpha}")
    names = _model_names(args.models, args.names)
    cases, data_names = find_labelled_cases(args.data)
    if args.out is not None:
        check_out_dir(args.out, args.overwrite)
    window = window_from_args(args)
    from napari_agg2exp.models.inference import check_window_options

    check_window_options(window or (1, 1, 1), args.overlap, args.blend)
    models = {}
    for name, path in zip(names, args.models):
        with _w.catch_warnings(record=True) as caught:
            _w.simplefilter("always")
            models[name] = load_model(None if path == "bundled" else path, label_names=args.label_names,
                                      device=args.device, trust_checkpoint=args.trust_checkpoint)
        _print_warnings(caught)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
