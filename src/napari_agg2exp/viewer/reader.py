"""napari reader for NIfTI (``.nii``, ``.nii.gz``): images as Image layers, label files as Labels."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.viewer.layers import volume_layer_kwargs

__all__ = ["napari_get_reader", "read_nifti"]

_LABEL_NAME = re.compile(r"(label|seg|mask|pred|prediction|pathology|roi)", re.IGNORECASE)


def napari_get_reader(
    path: str | Path | list[str | Path],
) -> Callable[[str | Path | list[str | Path]], list[tuple[np.ndarray, dict[str, Any], str]]] | None:
    """Return a reader for a NIfTI path, or ``None`` (never raises)."""
    if isinstance(path, list):
        if not path or not all(isinstance(p, (str, Path)) for p in path):
            return None
        return read_nifti if all(_is_nifti(p) for p in path) else None
    return read_nifti if _is_nifti(path) else None


def _is_nifti(path) -> bool:
    name = str(path)
    return (name.endswith(".nii") or name.endswith(".nii.gz")) and Path(name).is_file()


def _looks_like_labels(name: str, data: np.ndarray) -> bool:
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.mod(data[:: max(1, data.shape[0] // 8)], 1) == 0):
            return False
    if _LABEL_NAME.search(name):
        return True
    return np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize == 1


def read_nifti(path: str | Path | list[str | Path]) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Read one or more NIfTI files into napari LayerData tuples."""
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        vol = load_volume(p)
        if _looks_like_labels(Path(p).name, vol.array):
            layers.append((np.asarray(vol.array).astype(np.int32), volume_layer_kwargs(vol), "labels"))
        else:
            data = np.asarray(vol.array, dtype=np.float32)
            kw = volume_layer_kwargs(vol, colormap="gray")
            lo, hi = float(np.percentile(data, 0.5)), float(np.percentile(data, 99.5))
            if hi > lo:
                kw["contrast_limits"] = (lo, hi)
            layers.append((data, kw, "image"))
    return layers
