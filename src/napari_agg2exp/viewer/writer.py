"""napari writers: Image and Labels layers to NIfTI with the source affine (atomic writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_agg2exp.data.volume import save_volume
from napari_agg2exp.viewer.layers import affine_from_layer_meta

__all__ = ["write_image", "write_labels"]


def _target(path: str) -> Path:
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        p = p.with_name(p.name + ".nii.gz")
    return p


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    arr = np.asarray(data, dtype=np.float32)
    return [str(save_volume(arr, _target(path), affine_from_layer_meta(meta)))]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    arr = np.asarray(data)
    dtype = np.uint8 if arr.size and arr.max() < 256 and arr.min() >= 0 else np.int32
    return [str(save_volume(arr.astype(dtype), _target(path), affine_from_layer_meta(meta)))]
