"""A target region: explain a class's score over part of its prediction only.

``f_c(x') = Σ_{v ∈ M_c ∩ R} z_c(x')_v`` with ``R`` a region the user drew (a nodule, a lobe's tip, a
false-positive blob). The region is a label volume (nonzero voxels, or the voxels of one label id) on
the input grid or on any grid with an affine; it is mapped onto the model grid by nearest neighbour,
as every label volume here (:func:`~napari_agg2exp.data.preprocessing.preprocess_labels` for the input
grid, :func:`~napari_agg2exp.data.geometry.resample_labels` through the affines otherwise).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_agg2exp.data.geometry import grid_volume, resample_labels
from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.data.preprocessing import preprocess_labels
from napari_agg2exp.data.volume import Volume, load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.prepared import PreparedCase

__all__ = ["RegionLabels", "RegionLike", "TargetRegion", "split_region_spec", "target_region"]


@dataclass
class RegionLabels:
    """A label volume read once, and the label id that makes the region (``None``: every nonzero voxel)."""

    volume: Volume
    label: int | None = None


RegionLike = Volume | np.ndarray | str | os.PathLike | RegionLabels


@dataclass
class TargetRegion:
    """A region on the model grid.

    Attributes:
        mask: (X', Y', Z') bool on the (padded) model grid of the prepared case.
        source: the file it was read from, if any; ``label``: the label id picked (``None``: every nonzero).
    """

    mask: np.ndarray
    source: str | None = None
    label: int | None = None

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def restrict(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` inside the region, -1 outside (no class), so the class masks become ``M_c ∩ R``."""
        return np.where(self.mask, labels.astype(np.int32), -1).astype(np.int32)

    def record(self) -> dict[str, Any]:
        """As written to ``attribution_info.json``."""
        return {"source": self.source, "label": self.label, "model_voxels": self.voxels}


def split_region_spec(spec: str | os.PathLike) -> tuple[str, int | None]:
    """``"FILE"`` or ``"FILE:ID"`` -> ``(file, id or None)`` (a ``:`` followed by digits picks one label)."""
    s = os.fspath(spec)
    m = re.fullmatch(r"(.+):(\d+)", s)
    if m and not Path(s).exists():
        return m.group(1), int(m.group(2))
    return s, None


def target_region(region: RegionLike | TargetRegion, prepared: PreparedCase, label: int | None = None
                  ) -> TargetRegion:
    """The region on ``prepared``'s model grid.

    Args:
        region: a :class:`Volume` (input grid, or any grid through its affine), an array on the input grid,
            a NIfTI path (``FILE:ID`` picks one label id), :class:`RegionLabels`, or a :class:`TargetRegion`
            already mapped.
        prepared: the prepared scan.
        label: the label id that makes the region (default: every nonzero voxel).

    Raises:
        Agg2ExpError: unreadable file, an array on another grid (no affine to place it), an absent label id,
            or a region that covers no model voxel.
    """
    if isinstance(region, TargetRegion):
        if region.mask.shape != tuple(prepared.labels.shape):
            raise Agg2ExpError(f"target region mask shape {region.mask.shape} differs from the model grid "
                               f"{tuple(prepared.labels.shape)} -- give the region as a label volume")
        return region
    source = None
    if isinstance(region, RegionLabels):
        region, label = region.volume, region.label if label is None else label
    if isinstance(region, (str, os.PathLike)):
        path, picked = split_region_spec(region)
        label = picked if label is None else label
        region = load_volume(path, what="target region")
        source = path
    elif isinstance(region, Volume) and region.source:
        source = str(region.source)
    arr = as_label_array(np.asarray(region.array if isinstance(region, Volume) else region))
    if arr.ndim != 3:
        raise Agg2ExpError(f"target region must be a 3D label volume, got shape {arr.shape}")
    if label is not None and not np.any(arr == label):
        ids = [int(i) for i in np.unique(arr) if i != 0][:10]
        raise Agg2ExpError(f"target region has no voxel with label {label} (its labels: {ids or 'none'}) -- pick one "
                           "of those ids")
    binary = (arr != 0) if label is None else (arr == label)
    if not binary.any():
        raise Agg2ExpError("target region is empty (no nonzero voxel) -- paint or draw the region first")
    binary = binary.astype(np.uint8)
    if tuple(arr.shape) == tuple(prepared.image.shape):  # on the input grid (as layers and label files are)
        model = preprocess_labels(binary, prepared.pre)
    elif isinstance(region, Volume):
        model = resample_labels(Volume(binary, region.affine), grid_volume(prepared.labels.shape, prepared.pre.affine))
    else:
        raise Agg2ExpError(f"target region shape {arr.shape} differs from the image's {prepared.image.shape} and it "
                           "has no affine -- give it on the image's grid or as a NIfTI file with its affine")
    mask = np.asarray(model) != 0
    if not mask.any():
        raise Agg2ExpError("target region covers no voxel of the model grid (it lies outside the scan or is smaller "
                           "than a model voxel) -- draw a larger region inside the scan")
    return TargetRegion(mask, source, label)
