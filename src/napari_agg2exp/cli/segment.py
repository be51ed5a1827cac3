"""CLI: ``phantom``, ``segment``, ``train``, ``demo``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from napari_agg2exp.cli.main import (
    TerminalProgress,
    add_model_args,
    add_window_args,
    model_from_args,
    check_out_dir,
    staged_output,
    window_from_args,
)
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["register", "run_segment"]

#: Seed of the demo phantom: outside the training seeds of the bundled model.
DEMO_SEED = 90210


def register(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic thorax CT phantoms (image, labels, pathology)")
    p.add_argument("--out", required=True, help="output folder (case_XXXX/ sub-folders and labels.json)")
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--no-pathology", action="store_true", help="no nodules / effusions")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("segment", help="segment a CT scan (sliding-window inference)")
    p.add_argument("image", help="input .nii / .nii.gz")
    p.add_argument("--ground-truth", default=None, help="ground-truth labels (.nii.gz) to write quality.csv")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    add_model_args(p)
    add_window_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("train", help="train a baseline segmentation model (Dice + CE, AdamW, cosine)")
    p.add_argument("data", help="folder of case_*/image.nii.gz + labels.nii.gz and labels.json")
    p.add_argument("--arch", default="UNet", help="SwinUNETR, SwinUNETRv2, UNETR, UNet, BasicUNet, DynUNet")
    p.add_argument("--arguments", default="{}", help="architecture arguments as JSON, e.g. '{\"channels\": [16,32,64]}'")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--spacing", type=float, nargs="+", default=[1.5], help="model voxel spacing in mm (default 1.5)")
    p.add_argument("--window-size", type=int, default=96, help="sliding-window size (default 96)")
    p.add_argument("--patch-size", type=int, nargs="+", default=[96], help="training patch size (default 96)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--iterations", type=int, default=None, help="optimiser steps (default: from --epochs)")
    p.add_argument("--epochs", type=int, default=100, help="passes over the training cases (default 100)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-every", type=int, default=100, help="validate and checkpoint every N steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--lambda-ce", type=float, default=1.0, help="weight of cross-entropy in Dice + λ·CE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from --out/train_state.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the main job on the bundled sample and the bundled model")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--method", default="sg", help="attribution method for the demo (default sg)")
    p.add_argument("--samples", type=int, default=None, help="SmoothGrad samples (default: paper's 20)")
    p.set_defaults(func=cmd_demo)


def cmd_phantom(args) -> int:
    from napari_agg2exp.data.phantom.builder import write_phantom_cohort

    if args.cases < 1:
        raise Agg2ExpError(f"--cases must be >= 1, got {args.cases}")
    paths = write_phantom_cohort(
        args.out, args.cases, seed=args.seed, pathology=not args.no_pathology, overwrite=args.overwrite,
        progress=TerminalProgress("phantom"),
    )
    print(f"wrote {len(paths)} case(s) to {args.out}")
    return 0


def _print_quality(table) -> None:
    rows = table.dropna(subset=["dice"])
    width = max(len(c) for c in rows["class"]) if len(rows) else 10
    print(f"{'class':<{width}}  dice    iou")
    for _, r in rows.iterrows():
        print(f"{r['class']:<{width}}  {r['dice']:.3f}  {r['iou']:.3f}")
    fg = rows[rows["class"] != "background"]
    if len(fg):
        print(f"{'mean (foreground)':<{width}}  {fg['dice'].mean():.3f}  {fg['iou'].mean():.3f}")


def run_segment(model, image_path, out_dir, *, ground_truth=None, window_size=None, overlap=0.25, blend="constant",
                sw_batch_size=1, progress=None, cancel=None, case=None):
    """Segment one file and write prediction.nii.gz, labels.json and (with ground truth) quality.csv into ``out_dir``.

    Returns (SegmentationResult, quality DataFrame or None).
    """
    from napari_agg2exp.models.inference import segment
    from napari_agg2exp.data.labels import label_names_json
    from napari_agg2exp.evaluation.dice import quality_table
    from napari_agg2exp.data.volume import atomic_write_text, load_volume, save_volume

    image = load_volume(image_path, what="image")
    gt = load_volume(ground_truth, what="ground-truth") if ground_truth else None
    if gt is not None and gt.shape != image.shape:
        raise Agg2ExpError(f"ground truth shape {gt.shape} differs from the image's {image.shape} -- they must share a grid")
    res = segment(model, image, window_size=window_size, overlap=overlap, blend=blend, sw_batch_size=sw_batch_size,
                  progress=progress, cancel=cancel)
    out = Path(out_dir)
    save_volume(res.prediction, out / "prediction.nii.gz", dtype="uint8")
    atomic_write_text(out / "labels.json", label_names_json(model.class_names))
    table = None
    if gt is not None:
        table = quality_table(res.prediction.array, gt.array, model.class_names, case=case or image.name)
        atomic_write_text(out / "quality.csv", table.to_csv(index=False))
    return res, table


def cmd_segment(args) -> int:
    ws = window_from_args(args)
    from napari_agg2exp.data.volume import load_volume

    check_out_dir(args.out, args.overwrite)
    load_volume(args.image)  # fail fast on bad input, before the model loads
    model = model_from_args(args)
    with staged_output(args.out, args.overwrite) as tmp:
        _, table = run_segment(model, args.image, tmp, ground_truth=args.ground_truth, window_size=ws,
                               overlap=args.overlap, blend=args.blend, sw_batch_size=args.sw_batch_size,
                               progress=TerminalProgress("segment"))
    print(f"wrote {Path(args.out) / 'prediction.nii.gz'}")
    if table is not None:
        _print_quality(table)
    return 0


def cmd_train(args) -> int:
    import torch

    from napari_agg2exp.models.training import TrainConfig, find_cases, train

    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as e:
        raise Agg2ExpError(f"--arguments is not valid JSON ({e})") from e
    if args.threads:
        torch.set_num_threads(args.threads)
    sp = args.spacing * 3 if len(args.spacing) == 1 else args.spacing
    ps = args.patch_size * 3 if len(args.patch_size) == 1 else args.patch_size
    iterations = args.iterations
    if iterations is None:
        n = len(find_cases(args.data))
        iterations = max(1, args.epochs * max(1, round(n * (1 - args.val_fraction)) // args.batch_size))
    cfg = TrainConfig(
        architecture=args.arch, arguments=arguments, spacing=tuple(sp), window_size=(args.window_size,) * 3,
        patch_size=tuple(ps), batch_size=args.batch_size, iterations=iterations, val_fraction=args.val_fraction,
        val_every=args.val_every, lr=args.lr, weight_decay=args.weight_decay, lambda_ce=args.lambda_ce,
        seed=args.seed, device=args.device,
    )
    summary = train(args.data, args.out, cfg, resume=args.resume, log=lambda m: print(m, flush=True),
                    progress=TerminalProgress("train", min_interval=2.0))
    print(json.dumps({k: v for k, v in summary.items() if k != "last_val_dice"}, indent=None))
    return 0


def cmd_demo(args) -> int:
    """Phantom -> segmentation -> (attributions, RoI importance, report when available)."""
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.data.phantom.builder import make_phantom
    from napari_agg2exp.data.volume import save_volume

    t0 = time.perf_counter()
    with staged_output(args.out, args.overwrite) as tmp:
        case = make_phantom(DEMO_SEED)
        image, labels, pathology = case.volumes()
        sample = tmp / "sample"
        save_volume(image, sample / "image.nii.gz", dtype="float32")
        save_volume(labels, sample / "labels.nii.gz", dtype="uint8")
        save_volume(pathology, sample / "pathology.nii.gz", dtype="uint8")
        model = load_model(None, device=args.device)
        print(f"model: bundled {model.spec.architecture if model.spec else ''} on {model.device}; "
              f"sample: phantom seed {DEMO_SEED}, shape {image.shape}")
        res, table = run_segment(model, sample / "image.nii.gz", tmp, ground_truth=sample / "labels.nii.gz",
                                 progress=TerminalProgress("segment"), case="demo")
        _print_quality(table)
        extra = _demo_extensions()
        for step in extra:
            step(args, model, tmp, sample)
    print(f"demo finished in {time.perf_counter() - t0:.1f}s; results in {args.out}/")
    return 0


def _demo_extensions():
    """Later stages of the demo (explain, aggregate, report), added as the modules exist."""
    steps = []
    try:
        from napari_agg2exp.cli.explain import demo_explain
    except ModuleNotFoundError:
        return steps
    steps.append(demo_explain)
    return steps


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
