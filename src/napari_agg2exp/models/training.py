"""Training of baseline segmentation models (SPEC §9, appendix B.3).

Loss Dice + λ·cross-entropy (λ = 1), AdamW (lr 1e-4, weight decay 1e-5), cosine annealing, random
patches. The best checkpoint (by mean foreground validation Dice) is the model folder itself
(``model.json`` + ``weights.safetensors``); ``last/`` holds the last one and ``train_state.pt`` the
optimiser, scheduler and step, so ``resume=True`` continues where a run stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from monai.losses import DiceCELoss

from napari_agg2exp.data.dice import dice_iou
from napari_agg2exp.data.labels import as_label_array, read_label_names
from napari_agg2exp.data.preprocessing import PreprocessingSpec, preprocess, preprocess_labels
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write
from napari_agg2exp.models.inference import SlidingWindow, sliding_window_segment
from napari_agg2exp.models.loading import (
    ARCHITECTURES,
    ModelSpec,
    SegmentationModel,
    build_network,
    check_window_size,
    resolve_device,
    save_model,
)
from napari_agg2exp.options import did_you_mean
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = ["TrainConfig", "find_cases", "load_training_cases", "train"]


@dataclass
class TrainConfig:
    """Training settings (paper defaults; smaller values suit a CPU)."""

    architecture: str = "UNet"
    arguments: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    window_size: tuple[int, int, int] = (96, 96, 96)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 4
    iterations: int = 1000
    val_fraction: float = 0.2
    val_every: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lambda_ce: float = 1.0
    seed: int = 0
    device: str = "auto"

    def check(self, n_classes: int = 2) -> None:
        """Refuse settings training cannot use, each with its own line (before any case is read).

        Raises:
            Agg2ExpError: an unknown architecture, non-positive sizes or counts, a window or patch the
                network cannot take, a learning rate or fraction out of range.
        """
        if self.architecture not in ARCHITECTURES:
            raise Agg2ExpError(f"unknown architecture {self.architecture!r}{did_you_mean(self.architecture, ARCHITECTURES)}"
                               f" -- use one of {', '.join(ARCHITECTURES)}")
        if not isinstance(self.arguments, dict):
            raise Agg2ExpError(f"architecture arguments must be a JSON object, got {type(self.arguments).__name__}")
        for name, v in (("--spacing", self.spacing), ("--window-size", self.window_size),
                        ("--patch-size", self.patch_size)):
            if len(v) != 3 or not all(np.isfinite(x) and x > 0 for x in v):
                raise Agg2ExpError(f"{name} must be 1 or 3 positive numbers, got {list(v)}")
        for name, v in (("--batch-size", self.batch_size), ("--iterations", self.iterations),
                        ("--val-every", self.val_every)):
            if v < 1:
                raise Agg2ExpError(f"{name} must be at least 1, got {v}")
        if not 0 < self.val_fraction < 1:
            raise Agg2ExpError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise Agg2ExpError(f"--lr must be a positive number, got {self.lr}")
        for name, v in (("--weight-decay", self.weight_decay), ("--lambda-ce", self.lambda_ce)):
            if not (np.isfinite(v) and v >= 0):
                raise Agg2ExpError(f"{name} must be a number >= 0, got {v}")
        spec = ModelSpec(self.architecture, ["c"] * max(2, n_classes), dict(self.arguments),
                         window_size=tuple(int(v) for v in self.window_size))
        check_window_size(spec, spec.window_size, n_classes)
        try:  # patches go through the same network
            check_window_size(spec, tuple(int(v) for v in self.patch_size), n_classes)
        except Agg2ExpError as e:
            raise Agg2ExpError(f"--patch-size: {e}") from e


def find_cases(data_dir: str | os.PathLike) -> list[Path]:
    """Case folders ``case_*/`` holding ``image.nii.gz`` and ``labels.nii.gz``."""
    d = Path(data_dir)
    if not d.is_dir():
        raise Agg2ExpError(f"data folder not found: {d} -- give a folder of case_*/image.nii.gz + labels.nii.gz")
    cases = sorted(p for p in d.iterdir() if p.is_dir() and (p / "image.nii.gz").exists())
    if not cases:
        raise Agg2ExpError(f"no cases in {d}: expected case_*/image.nii.gz (+ labels.nii.gz); make some with `agg2exp phantom`")
    return cases


def load_training_cases(cases: list[Path], preprocessing: PreprocessingSpec, window_size: tuple[int, int, int] | None,
                        progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                        n_classes: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Preprocess every case once: (image, labels) arrays on the model grid (labels checked against
    ``n_classes``)."""
    out = []
    for i, c in enumerate(cases):
        check_cancel(cancel)
        lab_path = c / "labels.nii.gz"
        if not lab_path.exists():
            raise Agg2ExpError(f"case {c.name} has no labels.nii.gz -- training needs ground truth")
        img = load_volume(c / "image.nii.gz")
        lab = load_volume(lab_path, what="labels")
        as_label_array(lab.array, n_classes, what=f"labels of case {c.name}")
        pre = preprocess(img, preprocessing, window_size)
        out.append((pre.array, preprocess_labels(lab, pre)))
        report(progress, i + 1, len(cases), f"loading {c.name}")
    return out


def _random_patches(data, idx, patch, batch, rng):
    xs, ys = [], []
    for _ in range(batch):
        img, lab = data[idx[rng.integers(len(idx))]]
        starts = [rng.integers(0, max(1, s - p) + 1) for s, p in zip(img.shape, patch)]
        sl = tuple(slice(a, a + p) for a, p in zip(starts, patch))
        im, lb = img[sl], lab[sl]
        if im.shape != tuple(patch):  # volume smaller than the patch: pad
            padw = [(0, p - s) for s, p in zip(im.shape, patch)]
            im, lb = np.pad(im, padw), np.pad(lb, padw)
        xs.append(im)
        ys.append(lb)
    return np.stack(xs)[:, None], np.stack(ys)[:, None].astype(np.int64)


def _validate(model, data, idx, plan_cache, n_classes):
    dices = []
    model.network.eval()
    for i in idx:
        img, lab = data[i]
        plan = plan_cache.setdefault(img.shape, SlidingWindow.plan(img.shape, model.window_size, 0.25, "constant", model.device))
        seg = sliding_window_segment(model.network, torch.from_numpy(img)[None].to(model.device), plan)
        d, _ = dice_iou(seg.labels.long().cpu().numpy(), lab, n_classes)
        dices.append(d)
    model.network.train()
    return np.nanmean(np.array(dices), axis=0)


def train(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    log: Callable[[str], Any] = print,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> dict[str, Any]:
    """Train a segmentation model on ``data_dir`` and save it to ``out_dir``.

    Returns:
        A summary: best mean foreground Dice, per-class validation Dice, iterations, seconds.
    """
    cfg = config or TrainConfig()
    cfg.check()
    out = Path(out_dir)
    state_path = out / "train_state.pt"
    if out.exists() and any(out.iterdir()) and not resume:
        raise Agg2ExpError(f"output folder {out} already holds a model -- pass --resume to continue it or choose another --out")
    if resume and not state_path.exists():
        raise Agg2ExpError(f"nothing to resume in {out}: train_state.pt is missing")
    cases = find_cases(data_dir)
    names_file = Path(data_dir) / "labels.json"
    if not names_file.exists():
        raise Agg2ExpError(f"{names_file} is missing -- the data folder needs labels.json ({{\"0\": \"background\", ...}})")
    class_names = read_label_names(names_file)
    if len(cases) < 2:
        raise Agg2ExpError("training needs at least 2 cases (one for validation)")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    spec = ModelSpec(
        architecture=cfg.architecture,
        class_names=class_names,
        arguments=dict(cfg.arguments),
        preprocessing=PreprocessingSpec(spacing=tuple(cfg.spacing)),
        window_size=tuple(cfg.window_size),
    )
    net = build_network(spec).to(device)
    model = SegmentationModel(net, class_names, spec.preprocessing, spec.window_size, device, str(out), spec)

    order = rng.permutation(len(cases))
    n_val = max(1, int(round(cfg.val_fraction * len(cases))))
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    log(f"{len(train_idx)} training and {len(val_idx)} validation cases; {sum(p.numel() for p in net.parameters()):,} parameters")
    data = load_training_cases(cases, spec.preprocessing, spec.window_size, cancel=cancel, n_classes=len(class_names))

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.iterations))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=cfg.lambda_ce)
    step, best, history = 0, -1.0, []
    if resume:
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        net.load_state_dict(st["network"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, best = int(st["step"]), float(st["best"])
        history = json.loads(st.get("history", "[]"))
        rng = np.random.default_rng([cfg.seed, step])
        log(f"resumed at step {step} (best mean Dice {best:.4f})")

    plan_cache: dict = {}
    t0 = time.perf_counter()
    net.train()
    last_dice = None
    while step < cfg.iterations:
        check_cancel(cancel)
        x, y = _random_patches(data, train_idx, cfg.patch_size, cfg.batch_size, rng)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        report(progress, step, cfg.iterations, f"loss {loss.item():.4f}")
        if step % cfg.val_every == 0 or step == cfg.iterations:
            dice = _validate(model, data, val_idx, plan_cache, len(class_names))
            last_dice = dice
            mean_fg = float(np.nanmean(dice[1:]))
            history.append({"step": step, "loss": float(loss.item()), "val_dice": mean_fg})
            log(f"step {step}/{cfg.iterations} loss {loss.item():.4f} val mean Dice {mean_fg:.4f} "
                f"min {np.nanmin(dice[1:]):.3f} ({time.perf_counter() - t0:.0f}s)")
            log("  " + " ".join(f"{n[:12]}={d:.2f}" for n, d in zip(class_names[1:], dice[1:])))
            spec.extra = {"val_dice": {n: float(d) for n, d in zip(class_names, dice)}, "step": step}
            if mean_fg > best:
                best = mean_fg
                save_model(net, spec, out)
            save_model(net, spec, out / "last")
            state = {"network": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "best": best, "history": json.dumps(history)}
            atomic_write(state_path, lambda tmp, state=state: torch.save(state, tmp))
    return {
        "best_mean_dice": best,
        "last_val_dice": None if last_dice is None else {n: float(d) for n, d in zip(class_names, last_dice)},
        "iterations": step,
        "seconds": time.perf_counter() - t0,
    }
