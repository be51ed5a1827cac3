"""CLI: ``train`` -- a baseline segmentation model (Dice + CE, AdamW, cosine annealing)."""

from __future__ import annotations

import argparse
import json

import torch

from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import OutputLock
from napari_agg2exp.models.training import TrainConfig, find_cases, train

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
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


def cmd_train(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as e:
        raise Agg2ExpError(f"--arguments is not valid JSON ({e})") from e
    if not isinstance(arguments, dict):
        raise Agg2ExpError(f"--arguments must be a JSON object like '{{\"channels\": [16, 32]}}', got {args.arguments}")
    if args.threads is not None and args.threads < 1:
        raise Agg2ExpError(f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sp = args.spacing * 3 if len(args.spacing) == 1 else args.spacing
    ps = args.patch_size * 3 if len(args.patch_size) == 1 else args.patch_size
    if args.epochs < 1:
        raise Agg2ExpError(f"--epochs must be at least 1, got {args.epochs}")
    cfg = TrainConfig(
        architecture=args.arch, arguments=arguments, spacing=tuple(sp), window_size=(args.window_size,) * 3,
        patch_size=tuple(ps), batch_size=args.batch_size, iterations=1 if args.iterations is None else args.iterations,
        val_fraction=args.val_fraction, val_every=args.val_every, lr=args.lr, weight_decay=args.weight_decay,
        lambda_ce=args.lambda_ce, seed=args.seed, device=args.device,
    )
    cfg.check()  # every setting, before the cases are read
    if args.iterations is None:
        n = len(find_cases(args.data))
        cfg.iterations = max(1, args.epochs * max(1, round(n * (1 - args.val_fraction)) // args.batch_size))
    with OutputLock(args.out):  # one run per model folder (a second would interleave checkpoints)
        summary = train(args.data, args.out, cfg, resume=args.resume, log=lambda m: print(m, flush=True),
                        progress=TerminalProgress("train", min_interval=2.0))
    print(json.dumps({k: v for k, v in summary.items() if k != "last_val_dice"}, indent=None))
    return 0
