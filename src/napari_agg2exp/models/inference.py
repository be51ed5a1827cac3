"""Sliding-window inference (SPEC §2) shared by segmentation and attribution.

``z = Σ_w (b_w · z_w) / count`` with ``count = Σ_w b_w``. Window positions and blend weights are
MONAI's (``dense_patch_slices``, ``compute_importance_map``), so the stitched logits equal
``monai.inferers.sliding_window_inference`` on the same input; the loop is our own because the
attribution engine needs per-window vector-Jacobian products through the same stitching.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = [
    "BLEND_MODES",
    "PLACEMENTS",
    "SlidingWindow",
    "window_slices",
    "nnunet_window_slices",
    "sliding_window_logits",
    "check_window_options",
    "forward_logits",
    "window_size_3d",
]

BLEND_MODES = ("constant", "gaussian")
PLACEMENTS = ("monai", "nnunet")


def window_size_3d(window_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``N`` or ``(X, Y, Z)`` -> three positive ints (the one place window sizes are normalised)."""
    try:
        ws = (int(window_size),) * 3 if np.isscalar(window_size) else tuple(int(v) for v in window_size)
    except (TypeError, ValueError) as e:
        raise Agg2ExpError(f"window size must be 1 or 3 positive integers, got {window_size!r}") from e
    if len(ws) == 1:
        ws = ws * 3
    if len(ws) != 3 or min(ws) < 1:
        raise Agg2ExpError(f"window size must be 1 or 3 positive integers, got {window_size}")
    return ws


def check_window_options(window_size: int | Sequence[int], overlap: float | None,
                         blend: str | None) -> tuple[tuple[int, int, int], float | None, str | None]:
    """Normalised ``(window_size, overlap, blend)``; bad values raise :class:`Agg2ExpError`.

    ``None`` for ``overlap`` or ``blend`` passes through (it means "the model's default").
    """
    ws = window_size_3d(window_size)
    if overlap is not None:
        try:
            ok = 0.0 <= float(overlap) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise Agg2ExpError(f"overlap must be a number in [0, 1), got {overlap}")
        overlap = float(overlap)
    return ws, overlap, None if blend is None else look_up_option(blend, BLEND_MODES, what="blend mode")


def window_slices(shape: Sequence[int], window_size: Sequence[int], overlap: float) -> list[tuple[slice, slice, slice]]:
    """Window positions covering ``shape`` (MONAI's scan interval and ``dense_patch_slices``)."""
    shape = tuple(int(s) for s in shape)
    ws = tuple(min(w, s) for w, s in zip(window_size, shape))
    interval = tuple(max(1, int(w * (1 - overlap))) if w < s else w for w, s in zip(ws, shape))
    return [tuple(sl) for sl in dense_patch_slices(shape, ws, interval)]


def nnunet_window_slices(shape: Sequence[int], window_size: Sequence[int],
                         step: float = 0.5) -> list[tuple[slice, slice, slice]]:
    """Window positions as nnU-Net v2 places them (``compute_steps_for_sliding_window``, tile step ``step``)."""
    shape = tuple(int(s) for s in shape)
    steps = []
    for n, w in zip(shape, window_size):
        w = min(int(w), n)
        num = int(np.ceil((n - w) / (w * step))) + 1
        actual = (n - w) / (num - 1) if num > 1 else 0.0
        steps.append([(int(np.round(actual * i)), w) for i in range(num)])
    return [tuple(slice(b, b + w) for b, w in pos) for pos in itertools.product(*steps)]


@dataclass
class SlidingWindow:
    """Windows over a padded model-grid volume with blend weights and overlap counts.

    Attributes:
        shape: (X, Y, Z) of the model-grid volume.
        slices: one (sx, sy, sz) per window.
        weight: (wx, wy, wz) blend weight ``b`` of one window (torch tensor).
        count: (X, Y, Z) summed blend weights (torch tensor).
    """

    shape: tuple[int, int, int]
    window_size: tuple[int, int, int]
    overlap: float
    blend: str
    slices: list
    weight: Any
    count: Any

    @classmethod
    def plan(cls, shape: Sequence[int], window_size: int | Sequence[int] = (96, 96, 96), overlap: float = 0.25,
             blend: str = "constant", device: torch.device | str = "cpu", placement: str = "monai") -> SlidingWindow:
        """Plan windows; ``placement`` is ``"monai"`` (MONAI's ``dense_patch_slices``) or ``"nnunet"``."""
        ws, overlap, blend = check_window_options(window_size, overlap, blend)
        placement = look_up_option(placement, PLACEMENTS, what="window placement")
        shape = tuple(int(s) for s in shape)
        if any(s < w for s, w in zip(shape, ws)):
            raise Agg2ExpError(f"volume {shape} is smaller than the window {ws}; pad it first (preprocess pads to the window)")
        slices = window_slices(shape, ws, overlap) if placement == "monai" else nnunet_window_slices(shape, ws, 1 - overlap)
        weight = compute_importance_map(ws, mode=blend, sigma_scale=0.125, device=device, dtype=torch.float32)
        count = torch.zeros(shape, dtype=torch.float32, device=device)
        for sl in slices:
            count[sl] += weight
        return cls(shape, ws, overlap, blend, slices, weight, count)

    def __len__(self) -> int:
        return len(self.slices)


def _batches(n: int, size: int):
    for i in range(0, n, max(1, size)):
        yield list(range(i, min(n, i + max(1, size))))


def forward_logits(network: torch.nn.Module, batch: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """The network's logits of a window batch, checked to be (B, C, X, Y, Z) with C = ``n_classes``."""
    out = network(batch)
    if isinstance(out, (list, tuple)):  # deep supervision heads: first is the prediction
        out = out[0]
    if out.ndim != 5:
        raise Agg2ExpError(f"the model returned shape {tuple(out.shape)}; a 3D segmentation model must return (B, C, X, Y, Z)")
    if n_classes is not None and out.shape[1] != n_classes:
        raise Agg2ExpError(
            f"the model outputs {out.shape[1]} channels but {n_classes} label names were given -- "
            "give one name per output channel"
        )
    return out


def sliding_window_logits(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    plan: SlidingWindow,
    *,
    n_classes: int | None = None,
    sw_batch_size: int = 1,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> torch.Tensor:
    """Stitched logits of a model over a whole volume (no gradients).

    Args:
        network: maps (B, 1, *window) -> (B, C, *window).
        inputs: (1, X, Y, Z) or (X, Y, Z) torch tensor on the model's device.
        plan: windows from :meth:`SlidingWindow.plan`.

    Returns:
        (C, X, Y, Z) float32 tensor on the inputs' device.
    """
    x = inputs if inputs.ndim == 4 else inputs[None]
    out = None
    with torch.no_grad():
        for k, idx in enumerate(_batches(len(plan), sw_batch_size)):
            check_cancel(cancel)
            batch = torch.stack([x[(slice(None),) + plan.slices[i]] for i in idx])
            z = forward_logits(network, batch, n_classes).float()
            if out is None:
                out = torch.zeros((z.shape[1],) + plan.shape, dtype=torch.float32, device=x.device)
            for j, i in enumerate(idx):
                out[(slice(None),) + plan.slices[i]] += z[j] * plan.weight
            report(progress, idx[-1] + 1, len(plan), "segmenting")
    return out / plan.count
