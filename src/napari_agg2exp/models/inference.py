"""Sliding-window inference (SPEC §2) shared by segmentation and attribution.

``z = Σ_w (b_w · z_w) / count`` with ``count = Σ_w b_w``. Window positions and blend weights are
MONAI's (``dense_patch_slices``, ``compute_importance_map``), so the stitched logits equal
``monai.inferers.sliding_window_inference`` on the same input; the loop is our own because the
attribution engine needs per-window vector-Jacobian products through the same stitching.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from scipy.ndimage import gaussian_filter

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = [
    "BLEND_MODES",
    "PLACEMENTS",
    "SlidingWindow",
    "window_slices",
    "nnunet_window_slices",
    "nnunet_gaussian",
    "sliding_window_logits",
    "sliding_window_segment",
    "StreamedSegmentation",
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


def nnunet_gaussian(window_size: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """nnU-Net v2's blend weight (``compute_gaussian(sigma_scale=1/8, value_scaling_factor=10)``, float16).

    A unit impulse at ``size // 2`` filtered with ``scipy.ndimage.gaussian_filter`` (sigma = size / 8,
    constant mode), scaled to a maximum of 10, rounded to float16 as nnU-Net's predictor does, zeros
    replaced by the smallest nonzero weight; returned as float32.
    """
    ws = tuple(int(w) for w in window_size)
    impulse = np.zeros(ws)
    impulse[tuple(w // 2 for w in ws)] = 1
    g = gaussian_filter(impulse, [w / 8 for w in ws], 0, mode="constant", cval=0)
    g = torch.from_numpy(g / (g.max() / 10)).to(torch.float16)
    g[g == 0] = g[g != 0].min()
    return g.to(device=device, dtype=torch.float32)


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
        if placement == "nnunet" and blend == "gaussian":  # nnU-Net's own gaussian (not MONAI's: up to 14% apart)
            weight = nnunet_gaussian(ws, device=device)
        else:
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

    This holds all C stitched logit volumes at once (105 classes at 273 x 273 x 300 voxels are 9.4 GB);
    where only the labels and the scores ``f_c`` are needed, use :func:`sliding_window_segment`.
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



@dataclass
class StreamedSegmentation:
    """The argmax of the stitched logits and the clean scores, from :func:`sliding_window_segment`.

    Attributes:
        labels: (X, Y, Z) argmax of the stitched logits (uint8 for up to 256 classes, else int32).
        scores: ``f_c = Σ_{v: labels_v = c} z_c(v)`` of every class present in ``labels``.
        voxels: number of voxels of every class present in ``labels``.
        sweep_axis: the axis the windows were swept along.
        buffer_shape: shape of the rolling logit buffer, (C, ...) with the sweep axis cut to one window.
    """

    labels: torch.Tensor
    scores: dict[int, float]
    voxels: dict[int, int]
    sweep_axis: int
    buffer_shape: tuple[int, ...]


def _sweep_axis(plan: SlidingWindow) -> int:
    """The axis whose window extent is the smallest fraction of the volume (smallest rolling buffer)."""
    fractions = [min(w, s) / s for w, s in zip(plan.window_size, plan.shape)]
    return int(np.argmin(fractions))  # ties -> the first axis: MONAI's own window order, bit-identical sums


def _along(index: tuple, axis: int, sl: slice) -> tuple:
    """``index`` with its entry for ``axis`` replaced by ``sl``."""
    out = list(index)
    out[axis] = sl
    return tuple(out)


def _ring_pieces(lo: int, hi: int, length: int) -> list[tuple[int, int, int, int]]:
    """Rows ``[lo, hi)`` (``hi - lo <= length``) of a ring buffer of ``length`` rows.

    Returns:
        ``(row_lo, row_hi, ring_lo, ring_hi)`` pieces: at most two, split where the ring wraps.
    """
    out = []
    while lo < hi:
        p = lo % length
        n = min(hi - lo, length - p)
        out.append((lo, lo + n, p, p + n))
        lo += n
    return out


def sliding_window_segment(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    plan: SlidingWindow,
    *,
    n_classes: int | None = None,
    sw_batch_size: int = 1,
    sweep_axis: int | None = None,
    on_rows: Callable[[int, int, int, torch.Tensor], None] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> StreamedSegmentation:
    """Labels and clean scores of the stitched logits, without holding C full logit volumes.

    Exactly the argmax of :func:`sliding_window_logits` and ``f_c`` = the sum of logit c over the
    voxels predicted c, computed in one sweep: windows are run in order of their start along
    ``sweep_axis``, their blended logits are added into a ring buffer one window deep along that
    axis (C x window x the other two sides), and rows are finished -- divided by the blend counts,
    reduced to the argmax and the per-class score sums, cleared -- as soon as no later window reaches
    them. Peak memory: that buffer plus one window batch, whatever the number of windows.

    Args:
        network: maps (B, 1, *window) -> (B, C, *window).
        inputs: (1, X, Y, Z) or (X, Y, Z) torch tensor on the model's device.
        plan: windows from :meth:`SlidingWindow.plan`.
        n_classes: expected number of output channels (checked), or ``None``.
        sw_batch_size: windows per forward pass.
        sweep_axis: 0, 1 or 2; ``None`` picks the axis with the smallest buffer.
        on_rows: called as ``on_rows(axis, row_lo, row_hi, logits)`` for every finished slab, in order
            along the sweep axis (together they tile the volume once): ``logits`` is the (C, ...) stitched
            logits of rows ``[row_lo, row_hi)`` along spatial axis ``axis`` (the other two axes whole), a
            view into the ring buffer that is valid only during the call -- copy or write it out.
        progress, cancel: progress callback and cancel flag (checked before every batch).
    """
    x = inputs if inputs.ndim == 4 else inputs[None]
    a = _sweep_axis(plan) if sweep_axis is None else int(sweep_axis)
    if a not in (0, 1, 2):
        raise ValueError(f"sweep_axis must be 0, 1 or 2, got {sweep_axis}")
    order = sorted(range(len(plan)), key=lambda i: plan.slices[i][a].start)  # stable: MONAI order within a row
    depth = max(plan.slices[i][a].stop - plan.slices[i][a].start for i in order)
    full = (slice(None),) * 3
    ch = (slice(None),)
    buf = labels = sums = counts = None
    done = 0  # rows [0, done) along the sweep axis are finished

    def finish(upto: int) -> None:
        """Rows ``[done, upto)`` are complete: reduce them and clear their ring rows."""
        nonlocal done
        for r0, r1, p0, p1 in _ring_pieces(done, upto, depth):
            seg = buf[ch + _along(full, a, slice(p0, p1))]
            seg /= plan.count[_along(full, a, slice(r0, r1))]
            if on_rows is not None:
                on_rows(a, r0, r1, seg)
            vals, idx = seg.max(0)  # first maximum on ties, like argmax
            labels[_along(full, a, slice(r0, r1))] = idx.to(labels.dtype)
            flat = idx.flatten()
            sums.index_add_(0, flat, vals.flatten().double())
            counts.index_add_(0, flat, torch.ones_like(flat))
            seg.zero_()
        done = upto

    with torch.no_grad():
        done_windows = 0
        for idx_batch in _batches(len(order), sw_batch_size):
            check_cancel(cancel)
            ids = [order[j] for j in idx_batch]
            batch = torch.stack([x[ch + plan.slices[i]] for i in ids])
            z = forward_logits(network, batch, n_classes).float()
            z.mul_(plan.weight)
            if buf is None:
                c = z.shape[1]
                bshape = list(plan.shape)
                bshape[a] = depth
                buf = torch.zeros((c, *bshape), dtype=torch.float32, device=x.device)
                labels = torch.zeros(plan.shape, dtype=torch.uint8 if c <= 256 else torch.int32, device=x.device)
                sums = torch.zeros(c, dtype=torch.float64, device=x.device)
                counts = torch.zeros(c, dtype=torch.int64, device=x.device)
            for j, i in enumerate(ids):
                sl = plan.slices[i]
                if sl[a].start > done:
                    finish(sl[a].start)
                for r0, r1, p0, p1 in _ring_pieces(sl[a].start, sl[a].stop, depth):
                    local = slice(r0 - sl[a].start, r1 - sl[a].start)
                    buf[ch + _along(sl, a, slice(p0, p1))] += z[j][ch + _along(full, a, local)]
            done_windows += len(ids)
            report(progress, done_windows, len(plan), "segmenting")
        finish(plan.shape[a])
    present = torch.nonzero(counts).flatten().tolist()
    return StreamedSegmentation(labels, {c: float(sums[c]) for c in present}, {c: int(counts[c]) for c in present},
                                a, tuple(buf.shape))
