"""One scan prepared for a model, segmented once: :class:`PreparedCase` and :func:`segment`.

Everything later steps need is computed here once and passed on -- the preprocessed input on the
model grid, the sliding-window plan, the clean prediction (on the model grid, which fixes every class
mask ``M_c`` of SPEC §1, and on the input grid, mapped back as the model's format does) and the clean scores ``f_c(x)`` -- so
explaining, evaluating and the napari widgets never segment the same scan twice.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_agg2exp.data.preprocessing import Preprocessed, preprocess, to_input_grid
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.inference import (
    SlidingWindow,
    check_window_options,
    sliding_window_segment,
)
from napari_agg2exp.models.loading import SegmentationModel, check_model_window
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = ["PREDICTION_FROM", "PreparedCase", "frozen", "prepare_case", "segment"]

#: how a model format maps its prediction back to the input grid (a preprocessor's ``prediction_from``):
#: ``labels`` -- model-grid argmax, labels by nearest neighbour (model folders); ``probabilities`` -- softmax,
#: each class resampled, argmax on the input grid (MONAI bundles: Activationsd, Invertd, AsDiscreted);
#: ``logits`` -- each class's logits resampled, argmax on the input grid (nnU-Net's predictor)
PREDICTION_FROM = ("labels", "probabilities", "logits")


@contextlib.contextmanager
def frozen(network: torch.nn.Module) -> Iterator:
    """Eval mode and no weight gradients inside the block; the network's own state is restored after."""
    flags = [(p, p.requires_grad) for p in network.parameters()]
    was_training = network.training
    for p, _ in flags:
        p.requires_grad_(False)  # input gradients only: no graph through the weights
    network.eval()
    try:
        yield network
    finally:
        network.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class PreparedCase:
    """A scan on the model grid with its clean segmentation.

    Attributes:
        model: the segmentation model.
        image: the input scan (input grid).
        pre: the preprocessing mapping; ``pre.array`` is the model input.
        inputs: (X', Y', Z') float32 model input on ``model.device``.
        plan: the sliding-window plan of the model grid.
        labels: (X', Y', Z') clean prediction on the model grid (argmax of the stitched logits).
        prediction: the clean prediction on the input grid (uint8, the input's affine), mapped back in the
            model format's own order (``model.preprocessing.prediction_from``, :data:`PREDICTION_FROM`).
        scores: ``f_c(x)`` (logit sum over ``M_c``) of every class present in ``labels``.
        sw_batch_size: windows per forward pass.
    """

    model: SegmentationModel
    image: Volume
    pre: Preprocessed
    inputs: torch.Tensor
    plan: SlidingWindow
    labels: np.ndarray
    prediction: Volume
    scores: dict[int, float] = field(default_factory=dict)
    sw_batch_size: int = 1

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def present(self) -> list[int]:
        """Class ids present in the clean prediction."""
        return sorted(self.scores)

    @property
    def crop(self) -> tuple[slice, slice, slice]:
        """The model grid without the padding to the window: the part of it that holds the scan."""
        return self.pre.crop

    @property
    def crop_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the cropped model grid (:attr:`crop`)."""
        shift = np.eye(4)
        shift[:3, 3] = [s.start for s in self.crop]
        return self.pre.affine @ shift

    @property
    def window(self) -> dict:
        """The sliding-window settings, as recorded in outputs."""
        return {"window_size": list(self.plan.window_size), "overlap": self.plan.overlap, "blend": self.plan.blend}

    def resolve_targets(self, targets: Sequence[str | int] | str | None) -> tuple[list[int], list[str]]:
        """``(present ids, skipped names)``: names/ids asked for; ``None``/``"all"`` = every present class.

        Raises:
            Agg2ExpError: an unknown class name or id (with a suggestion).
        """
        if targets is None or targets == "all" or (isinstance(targets, (list, tuple)) and list(targets) == ["all"]):
            ids = self.present
        else:
            if isinstance(targets, str):
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            ids = [self.model.class_index(t) for t in targets]
        keep = [i for i in ids if i in self.scores]
        skipped = [self.model.class_names[i] for i in ids if i not in self.scores]
        return keep, skipped


def prepare_case(
    model: SegmentationModel,
    image: Volume,
    *,
    window_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    sw_batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> PreparedCase:
    """Preprocess ``image`` for ``model`` and segment it once (SPEC §2, §9).

    Args:
        model: a loaded model.
        image: the input scan (any axis-aligned orientation and spacing).
        window_size: sliding window (default: the model's); overlap, blend: ``None`` = the model's
            (SPEC §2 defaults 0.25, constant, unless the model's format sets them).
        sw_batch_size: windows per forward pass (``None`` = the model's, 1 unless its format sets it).
        progress, cancel: progress callback and cancel flag.

    The input-grid prediction follows the model format (:data:`PREDICTION_FROM`): model folders map the
    model-grid labels back by nearest neighbour; MONAI bundles (softmax, ``Invertd``, argmax) and nnU-Net
    (logits resampled, argmax) take the argmax on the input grid. For those the streamed logits (or their
    softmax) are spilled slab by slab to one raw float32 file per class in a temporary folder, and read
    back one class at a time, resampled and folded into a running max/argmax: memory stays one class's
    volume on each grid, never C of them; the folder is removed at the end (also on errors and cancel).

    Raises:
        Agg2ExpError: bad window options or a model whose outputs do not fit its class names.
    """
    ws, overlap, blend = check_window_options(model.window_size if window_size is None else window_size, overlap, blend)
    check_model_window(model, ws)  # a window the network can take and the memory can hold
    overlap = model.overlap if overlap is None else overlap
    blend = model.blend if blend is None else blend
    sw_batch_size = model.sw_batch_size if sw_batch_size is None else sw_batch_size
    pre = preprocess(image, model.preprocessing, ws)
    x = torch.from_numpy(pre.array).to(model.device)
    plan = SlidingWindow.plan(pre.array.shape, ws, overlap, blend, device=model.device, placement=model.placement)
    mapping = getattr(model.preprocessing, "prediction_from", "labels")
    spill = None if mapping == "labels" else _ClassSpill(pre.array.shape, softmax=mapping == "probabilities")
    try:
        try:
            with frozen(model.network), torch.no_grad():
                # labels and f_c(x) of the clean input in one streaming sweep: never C full logit volumes
                seg = sliding_window_segment(model.network, x[None], plan, n_classes=model.num_classes,
                                             sw_batch_size=sw_batch_size, on_rows=spill, progress=progress,
                                             cancel=cancel)
        except torch.OutOfMemoryError as e:  # pragma: no cover - device dependent
            raise Agg2ExpError(f"out of memory on {model.device}: try a smaller --window-size or --device cpu") from e
        scores = seg.scores
        dtype = torch.uint8 if model.num_classes <= 256 else torch.int32
        labels_np = seg.labels.to(dtype).cpu().numpy()
        del seg
        if spill is None:
            pred = to_input_grid(labels_np, pre, mode="nearest").astype(labels_np.dtype)
        else:
            pred = _argmax_on_input_grid(spill, pre, labels_np.dtype, progress, cancel)
    finally:
        if spill is not None:
            spill.close()
    return PreparedCase(model, image, pre, x, plan, labels_np, image.like(pred, name=f"{image.name}_prediction"),
                        scores, max(1, int(sw_batch_size)))


class _ClassSpill:
    """Per-class model-grid maps (logits or softmax), written slab by slab to raw float32 files.

    Passed to :func:`sliding_window_segment` as ``on_rows``: every finished slab of (C, rows, ...)
    logits is appended to one file per class (rows along the sweep axis first), so only one class's
    model-grid volume is ever read back at a time (:meth:`read`).
    """

    def __init__(self, shape: Sequence[int], softmax: bool) -> None:
        self.shape, self.softmax = tuple(int(s) for s in shape), softmax
        self.folder = Path(tempfile.mkdtemp(prefix="agg2exp-classes-"))
        self.axis, self.n_classes = 0, 0

    def __call__(self, axis: int, row_lo: int, row_hi: int, logits: torch.Tensor) -> None:
        self.axis, self.n_classes = axis, int(logits.shape[0])
        z = (torch.softmax(logits, 0) if self.softmax else logits).float().cpu().numpy()
        try:
            for c in range(self.n_classes):
                with open(self.folder / f"{c}.f32", "ab") as f:
                    np.moveaxis(z[c], axis, 0).tofile(f)  # C order: the sweep axis outermost
        except OSError as e:
            raise Agg2ExpError(f"cannot write the per-class maps to {self.folder} ({e.strerror or e}) -- free disk "
                               "space there or point TMPDIR to a larger disk") from e

    def read(self, c: int) -> np.ndarray:
        """Class ``c``'s (X, Y, Z) map on the model grid."""
        a = self.axis
        rest = tuple(s for i, s in enumerate(self.shape) if i != a)
        arr = np.fromfile(self.folder / f"{c}.f32", dtype=np.float32).reshape((self.shape[a],) + rest)
        return np.ascontiguousarray(np.moveaxis(arr, 0, a))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _argmax_on_input_grid(spill: _ClassSpill, pre: Preprocessed, dtype: Any, progress: ProgressCallback | None,
                          cancel: CancelFlag | None) -> np.ndarray:
    """Argmax over classes of the per-class maps resampled to the input grid, one class at a time.

    Memory: one class on the model grid and on the input grid, plus the running maximum and argmax.
    Ties keep the lower class id, as ``argmax`` does.
    """
    best = arg = None
    for c in range(spill.n_classes):
        check_cancel(cancel)
        vol = to_input_grid(spill.read(c), pre, mode="trilinear").astype(np.float32, copy=False)
        if best is None:
            best, arg = vol.copy(), np.zeros(vol.shape, dtype=dtype)
        else:
            better = vol > best
            best[better] = vol[better]
            arg[better] = c
        report(progress, c + 1, spill.n_classes, "mapping back")
    return arg


def segment(model: SegmentationModel, image: Volume, **kwargs: Any) -> PreparedCase:
    """Segment ``image``: :func:`prepare_case` (``.prediction`` is the input-grid label volume)."""
    return prepare_case(model, image, **kwargs)

