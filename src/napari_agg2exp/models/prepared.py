"""One scan prepared for a model, segmented once: :class:`PreparedCase` and :func:`segment`.

Everything later steps need is computed here once and passed on -- the preprocessed input on the
model grid, the sliding-window plan, the clean prediction (on the model grid, which fixes every class
mask ``M_c`` of SPEC §1, and mapped back to the input grid) and the clean scores ``f_c(x)`` -- so
explaining, evaluating and the napari widgets never segment the same scan twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_agg2exp.data.preprocessing import Preprocessed, preprocess, to_input_grid
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.inference import SlidingWindow, check_window_options, sliding_window_segment
from napari_agg2exp.models.loading import SegmentationModel, check_model_window
from napari_agg2exp.progress import CancelFlag, ProgressCallback

__all__ = ["PreparedCase", "prepare_case", "segment", "frozen"]


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
        prediction: the clean prediction on the input grid (uint8, the input's affine).
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
    try:
        with frozen(model.network), torch.no_grad():
            # labels and f_c(x) of the clean input in one streaming sweep: never C full logit volumes
            seg = sliding_window_segment(model.network, x[None], plan, n_classes=model.num_classes,
                                         sw_batch_size=sw_batch_size, progress=progress, cancel=cancel)
    except torch.OutOfMemoryError as e:  # pragma: no cover - device dependent
        raise Agg2ExpError(f"out of memory on {model.device}: try a smaller --window-size or --device cpu") from e
    scores = seg.scores
    dtype = torch.uint8 if model.num_classes <= 256 else torch.int32
    labels_np = seg.labels.to(dtype).cpu().numpy()
    del seg
    pred = to_input_grid(labels_np, pre, mode="nearest").astype(labels_np.dtype)
    return PreparedCase(model, image, pre, x, plan, labels_np, image.like(pred, name=f"{image.name}_prediction"),
                        scores, max(1, int(sw_batch_size)))


def segment(model: SegmentationModel, image: Volume, **kwargs: Any) -> PreparedCase:
    """Segment ``image``: :func:`prepare_case` (``.prediction`` is the input-grid label volume)."""
    return prepare_case(model, image, **kwargs)

