"""CLI: ``explain`` -- per-class attribution maps and local RoI importance of one scan (a case folder)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_agg2exp.attribution.explainer import Explainer, Explanation
from napari_agg2exp.attribution.methods import METHODS, look_up_method
from napari_agg2exp.attribution.region import RegionLabels, split_region_spec
from napari_agg2exp.cli.arguments import (
    add_method_args,
    add_model_args,
    add_window_args,
    method_settings,
    model_from_args,
    window_from_args,
)
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import check_out_dir, staged_output
from napari_agg2exp.workflows.case import read_case_inputs, run_case
from napari_agg2exp.workflows.case_folder import CaseFolder

__all__ = ["register", "explainer_from_args", "print_explanation"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="per-class voxel attributions (VG, IG, SG, KernelSHAP) and local RoI importance")
    p.add_argument("image", help="input .nii / .nii.gz")
    p.add_argument("--method", required=True, help="attribution method: " + ", ".join(METHODS))
    p.add_argument("--classes", default="all",
                   help="comma-separated class names or ids, or 'all' (default: every predicted class)")
    p.add_argument("--ground-truth", default=None, help="ground-truth labels: also writes quality.csv")
    add_method_args(p)
    p.add_argument("--features", default=None,
                   help="features of kernelshap-semantic, feature-ablation and shapley-sampling: a label volume on "
                        "the image grid, or 'prediction' / 'cubes' (feature-ablation, shapley-sampling)")
    p.add_argument("--spread", default=None, choices=["even", "broadcast"], help="KernelSHAP per-voxel convention")
    p.add_argument("--target-region", default=None, metavar="LABELS[:ID]",
                   help="explain each class's score over its prediction inside this region only: a label volume "
                        "(nonzero voxels, or label ID) on the image grid or any grid with an affine")
    p.add_argument("--class-batch", type=int, default=None, metavar="N",
                   help="classes per pass while maps are streamed to disk (memory holds N maps; default: as many "
                        "as fit in 1 GiB for vg/ig/sg, all classes for the perturbation methods)")
    p.add_argument("--case", default=None, help="case name in the tables (default: the image file name)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--maps-on", default="model", choices=["model", "input"],
                   help="grid of the written maps: the model's (default; its own affine, every viewer places it) or "
                        "the input's (resampled)")
    p.add_argument("--overwrite", action="store_true")
    add_model_args(p)
    add_window_args(p)
    p.set_defaults(func=cmd_explain)


def explainer_from_args(method: str, args: argparse.Namespace, **settings: Any) -> Explainer:
    """The method's explainer from the generic flags (each method reads the ones it takes)."""
    m = look_up_method(method)
    given = {**method_settings(args), **settings}
    if given.get("features") not in (None, "cubes", "prediction"):
        given["features"] = load_volume(given["features"], what="features volume")
        as_label_array(given["features"].array, what="features volume")  # the one label check
    class_batch = getattr(args, "class_batch", None)
    if class_batch is not None and class_batch < 1:
        raise Agg2ExpError(f"--class-batch must be at least 1, got {class_batch}")
    return Explainer(m, class_batch=class_batch, **m.parameters_from_settings(given))


def print_explanation(e: Explanation) -> None:
    print(f"{e.method}: {len(e.targets)} class(es) explained in {e.seconds:.1f}s")
    if e.skipped:
        print(f"skipped (absent from the prediction): {', '.join(e.skipped)}")
    if e.completeness:
        worst = max(e.completeness.items(), key=lambda kv: kv[1])
        print(f"IG completeness: max relative error {worst[1]:.4f} ({worst[0]})")


def cmd_explain(args: argparse.Namespace) -> int:
    look_up_method(args.method)  # unknown method: a one-line error with a suggestion
    check_out_dir(args.out, args.overwrite)
    image, gt = read_case_inputs(args.image, args.ground_truth)  # read once, before the model loads
    explainer = explainer_from_args(args.method, args)
    for key in ("feature_mask", "features"):
        fm = explainer.parameters.get(key)
        if hasattr(fm, "shape") and fm.shape != image.shape:
            raise Agg2ExpError(f"feature volume shape {fm.shape} differs from the image's {image.shape} -- give the "
                               "features on the image's grid")
    region = None
    if args.target_region is not None:  # read (and its label id checked) before the model loads
        path, label = split_region_spec(args.target_region)
        region = RegionLabels(load_volume(path, what="target region"), label)
        if label is not None and not (region.volume.array == label).any():
            raise Agg2ExpError(f"--target-region {args.target_region}: no voxel has label {label} -- pick a label id "
                               "present in the file")
    model = model_from_args(args)
    with staged_output(args.out, args.overwrite) as tmp:
        res = run_case(model, image, case=args.case, ground_truth=gt, explainer=explainer,
                       targets=None if args.classes in (None, "all") else args.classes,
                       target_region=region,
                       out=CaseFolder(tmp, final=args.out), window_size=window_from_args(args), overlap=args.overlap,
                       blend=args.blend, sw_batch_size=args.sw_batch_size, maps_on=args.maps_on,
                       progress=TerminalProgress(f"explain {args.method}"))
    print_explanation(res.explanation)
    if res.explanation.region is not None:
        print(f"target region: {res.explanation.region.voxels} model voxels ({args.target_region})")
    print(f"wrote {Path(args.out)}/attributions/ ({len(res.explanation.targets)} maps), local_importance.csv, "
          "attribution_info.json")
    return 0
