"""The shared front of every attribution method: inputs, targets and output shapes (captum style).

Every method is a class holding its ``forward_func`` (a
:class:`~napari_agg2exp.attribution.target.SlidingWindowTarget`: the stitched, masked class
scores) with one ``attribute(inputs, target=..., ...)``:

- ``inputs``: one model-grid volume, shaped (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z);
- ``target``: a class id (the model's output channel, as captum's ``target``) among the forward's
  classes, a sequence of them, or ``None`` for all of them;
- the result is shaped like ``inputs`` for one class id, and ``(K,) + inputs.shape`` otherwise,
  one map per class in the order asked.

Extra outputs come only behind flags (``return_convergence_delta``, ``return_details``); nothing is
read back from attributes afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["Attribution", "TargetType", "as_volume"]

TargetType = int | Sequence[int] | None


def as_volume(inputs: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One (X, Y, Z) float tensor from (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z) input."""
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    x = x.float()
    while x.ndim > 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise Agg2ExpError(f"inputs must be one 3D volume (X, Y, Z) on the model grid, got shape {tuple(inputs.shape)}")
    return x


class Attribution:
    """Base of the attribution methods (captum's ``Attribution``).

    Args:
        forward_func: the stitched, masked class scores of one clean prediction.
    """

    def __init__(self, forward_func: SlidingWindowTarget):
        if not isinstance(forward_func, SlidingWindowTarget):
            raise TypeError(f"forward_func must be a SlidingWindowTarget, got {type(forward_func).__name__}")
        self.forward_func = forward_func

    def _forward_for(self, target: TargetType) -> tuple[SlidingWindowTarget, bool]:
        """The forward restricted to ``target`` and whether one class id was asked (single map out)."""
        fwd = self.forward_func
        if target is None:
            return fwd, False
        single = isinstance(target, (int, np.integer))
        ids = [int(target)] if single else [int(t) for t in target]
        unknown = [c for c in ids if c not in fwd.classes]
        if unknown:
            raise Agg2ExpError(f"target class id(s) {unknown} are not among the forward's classes {fwd.classes}")
        return (fwd if ids == fwd.classes else fwd.subset(ids)), single

    @staticmethod
    def _shaped(maps: torch.Tensor, inputs, single: bool) -> torch.Tensor:
        """(K, X, Y, Z) maps -> ``inputs.shape`` (one class) or ``(K,) + inputs.shape``."""
        shape = tuple(inputs.shape)
        return maps[0].reshape(shape) if single else maps.reshape((maps.shape[0],) + shape)
