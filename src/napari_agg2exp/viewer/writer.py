"""napari writers: Image and Labels layers to NIfTI in their source file's geometry (atomic writes).

A layer read by this plugin (or made on such a layer's grid: predictions, attribution maps) holds
its data in canonical (RAS+) order; the writer puts it back in the source file's axis order with the
source file's affine, so a prediction saved from the viewer overlays its scan voxel for voxel in any
tool. An attribution layer's class axis becomes the fourth NIfTI axis, ``(X, Y, Z, K)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_agg2exp.data.volume import save_volume
from napari_agg2exp.viewer.layers import affine_from_layer_meta, to_source_orientation

__all__ = ["source_geometry", "write_image", "write_labels"]


def _target(path: str) -> Path:
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        p = p.with_name(p.name + ".nii.gz")
    return p


def source_geometry(data: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(data in the source file's axis order, the source affine) of a layer's data and attributes;
    data without a recorded source stays as it is, with the layer's affine."""
    md = meta.get("metadata") or {}
    arr = np.asarray(data)
    if "source_affine" in md and "source_ornt" in md and arr.ndim >= 3:
        out = to_source_orientation(arr, md["source_ornt"])
        affine = np.asarray(md["source_affine"], float)
    else:
        out, affine = arr, affine_from_layer_meta(meta)
    if out.ndim == 4:  # (K, X, Y, Z) -> NIfTI's (X, Y, Z, K)
        out = np.moveaxis(out, 0, -1)
    return out, affine


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write an Image layer as float32 NIfTI (source axis order and affine)."""
    arr, affine = source_geometry(np.asarray(data, dtype=np.float32), meta)
    return [str(save_volume(arr, _target(path), affine))]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer as uint8 (or int32) NIfTI (source axis order and affine)."""
    arr = np.asarray(data)
    dtype = np.uint8 if arr.size and arr.max() < 256 and arr.min() >= 0 else np.int32
    arr, affine = source_geometry(arr.astype(dtype), meta)
    return [str(save_volume(arr, _target(path), affine))]
