"""CLI: ``explain`` (per-class attribution maps, local RoI importance) and the demo's explain step."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from napari_agg2exp.cli.main import (
    TerminalProgress,
    check_out_dir,
    add_model_args,
    add_window_args,
    model_from_args,
    staged_output,
    window_from_args,
)
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["register", "run_explain", "map_file_name"]


def register(sub) -> None:
    from napari_agg2exp.attribution import METHODS

    p = sub.add_parser("explain", help="per-class voxel attributions (VG, IG, SG, KernelSHAP) and local RoI importance")
    p.add_argument("image", help="input .nii / .nii.gz")
    p.add_argument("--method", required=True, help="attribution method: " + ", ".join(METHODS))
    p.add_argument("--classes", default="all", help="comma-separated class names or ids, or 'all' (default: every predicted class)")
    p.add_argument("--ground-truth", default=None, help="ground-truth labels: also writes quality.csv")
    p.add_argument("--steps", type=int, default=None, help="IG steps (default 20)")
    p.add_argument("--samples", type=int, default=None, help="SG samples (20) / KernelSHAP coalitions (1000 cubes, 200 semantic)")
    p.add_argument("--noise-level", type=float, default=0.1, help="SG noise σ as a fraction of the intensity range (0.1)")
    p.add_argument("--baseline", type=float, default=0.0, help="IG baseline / KernelSHAP removed-feature value (0)")
    p.add_argument("--features", default=None, help="KernelSHAP semantic: label volume of the features (default: prediction)")
    p.add_argument("--spread", default="even", choices=["even", "broadcast"], help="KernelSHAP per-voxel convention")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4, help="IG steps / SG samples / coalitions per batch (4)")
    p.add_argument("--case", default=None, help="case name in the tables (default: the image file name)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    add_model_args(p)
    add_window_args(p)
    p.set_defaults(func=cmd_explain)


def map_file_name(class_name: str) -> str:
    """File stem for a class map: the class name with unsafe characters replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name).strip("._") or "class"


def run_explain(model, image_path, out_dir, *, method: str, classes="all", ground_truth=None, case=None,
                features=None, steps=None, samples=None, noise_level=0.1, baseline=0.0, spread="even", seed=0,
                batch_size=4, window_size=None, overlap=0.25, blend="constant", sw_batch_size=1,
                progress=None, cancel=None, info_image_path=None):
    """Explain one scan and write the case folder (see :mod:`napari_agg2exp.workflows.case_folder`)."""
    from napari_agg2exp.importance.local import local_importance
    from napari_agg2exp.attribution import explain
    from napari_agg2exp.data.labels import label_names_json
    from napari_agg2exp.evaluation.dice import quality_table
    from napari_agg2exp.data.volume import atomic_write_text, load_volume, save_volume

    image = load_volume(image_path, what="image")
    gt = load_volume(ground_truth, what="ground-truth") if ground_truth else None
    if gt is not None and gt.shape != image.shape:
        raise Agg2ExpError(f"ground truth shape {gt.shape} differs from the image's {image.shape} -- they must share a grid")
    targets = None if classes in (None, "all") else classes
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    for t in targets or []:
        model.class_index(t)  # unknown names fail now, before any work
    fmask = load_volume(features, what="features") if features else None
    if fmask is not None and fmask.shape != image.shape:
        raise Agg2ExpError(f"feature volume shape {fmask.shape} differs from the image's {image.shape}")
    e = explain(model, image, method, targets, n_steps=steps, n_samples=samples, noise_level=noise_level,
                baseline=baseline, feature_mask=fmask, spread=spread, seed=seed, window_size=window_size,
                overlap=overlap, blend=blend, sw_batch_size=sw_batch_size, internal_batch_size=batch_size,
                progress=progress, cancel=cancel)
    out = Path(out_dir)
    case = case or image.name
    save_volume(e.prediction, out / "prediction.nii.gz", dtype="uint8")
    atomic_write_text(out / "labels.json", label_names_json(model.class_names))
    maps = {}
    for t in e.targets:
        maps[t] = e.map_on_input(t)
        save_volume(image.like(maps[t]), out / "attributions" / f"{map_file_name(t)}.nii.gz", dtype="float32")
    info = {"case": case, "image": str(info_image_path or Path(image_path).resolve()), "model": model.source,
            **({"ground_truth": str(Path(ground_truth).resolve())} if ground_truth else {}), **e.info()}
    atomic_write_text(out / "attribution_info.json", json.dumps(info, indent=2) + "\n")
    table = local_importance({map_file_name(t): m for t, m in maps.items()}, e.prediction.array,
                             [map_file_name(n) for n in model.class_names], case=case)
    atomic_write_text(out / "local_importance.csv", table.to_csv(index=False))
    quality = None
    if gt is not None:
        quality = quality_table(e.prediction.array, gt.array, model.class_names, case=case)
        atomic_write_text(out / "quality.csv", quality.to_csv(index=False))
    return e, table, quality


def _print_info(e) -> None:
    print(f"{e.method}: {len(e.targets)} class(es) explained in {e.seconds:.1f}s")
    if e.skipped:
        print(f"skipped (absent from the prediction): {', '.join(e.skipped)}")
    if e.completeness:
        worst = max(e.completeness.items(), key=lambda kv: kv[1])
        print(f"IG completeness: max relative error {worst[1]:.4f} ({worst[0]})")


def cmd_explain(args) -> int:
    from napari_agg2exp.attribution.explainer import method_defaults
    from napari_agg2exp.data.volume import load_volume

    method_defaults(args.method)  # unknown method: a one-line error with a suggestion

    check_out_dir(args.out, args.overwrite)
    load_volume(args.image)  # fail fast on bad input, before the model loads
    model = model_from_args(args)
    with staged_output(args.out, args.overwrite) as tmp:
        e, _, _ = run_explain(
            model, args.image, tmp, method=args.method, classes=args.classes, ground_truth=args.ground_truth,
            case=args.case, features=args.features, steps=args.steps, samples=args.samples,
            noise_level=args.noise_level, baseline=args.baseline, spread=args.spread, seed=args.seed,
            batch_size=args.batch_size, window_size=window_from_args(args), overlap=args.overlap, blend=args.blend,
            sw_batch_size=args.sw_batch_size, progress=TerminalProgress(f"explain {args.method}"),
        )
    _print_info(e)
    print(f"wrote {args.out}/attributions/ ({len(e.targets)} maps), local_importance.csv, attribution_info.json")
    return 0


def demo_explain(args, model, out_dir: Path, sample_dir: Path) -> None:
    """Demo step: explain every predicted class (SmoothGrad, paper defaults), aggregate, report."""
    e, table, _ = run_explain(model, sample_dir / "image.nii.gz", out_dir, method=args.method, samples=args.samples,
                              ground_truth=sample_dir / "labels.nii.gz", case="demo",
                              progress=TerminalProgress(f"explain {args.method}"), info_image_path="sample/image.nii.gz")
    _print_info(e)
    from napari_agg2exp.report.html import write_case_report

    abs_mass = table[(table["part"] == "abs") & (table["target"] != table["roi"]) & (table["roi"] != "background")]
    own = table[(table["part"] == "abs") & (table["target"] == table["roi"])].set_index("target")["mass"]
    print("local RoI importance (|a| mass): share inside the class itself, and the largest other organ:")
    for t, g in abs_mass.groupby("target", sort=False):
        top = g.sort_values("mass", ascending=False).iloc[0]
        print(f"  {t:<24} itself {own.get(t, float('nan')):.2f}   <- {top['roi']:<24} {top['mass']:.2f}")
    report = write_case_report(out_dir, progress=TerminalProgress("report"))
    print(f"case report: {Path(args.out) / report.name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
