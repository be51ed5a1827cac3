"""napari reader for NIfTI (``.nii``, ``.nii.gz``): images as Image layers, label files as Labels.

Every file is shown in its closest canonical (RAS+) axis order with a positive scale and a
translate (:func:`~napari_agg2exp.viewer.layers.volume_layer`), so any axis order, flip or spacing
renders and files on different grids overlay in world (RAS+ mm) coordinates. An oblique file is
shown axis-aligned, with a notification. Images read as CT (a Hounsfield-unit range) open in the
mediastinum window; the viewer switches to the radiology defaults (axial view, mm) on the next
event-loop turn (:func:`~napari_agg2exp.viewer.display.radiology_view`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from napari_agg2exp.data.volume import Volume, check_affine, load_volume
from napari_agg2exp.viewer.display import default_contrast, schedule_radiology_view
from napari_agg2exp.viewer.layers import volume_layer

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
    return name.endswith((".nii", ".nii.gz")) and Path(name).is_file()


def _looks_like_labels(name: str, data: np.ndarray) -> bool:
    if not np.issubdtype(data.dtype, np.integer) and not np.all(np.mod(data[:: max(1, data.shape[0] // 8)], 1) == 0):
        return False
    if _LABEL_NAME.search(name):
        return True
    return np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize == 1


def read_nifti(path: str | Path | list[str | Path]) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Read one or more NIfTI files into napari LayerData tuples (canonical axis order)."""
    from napari.utils.notifications import show_warning

    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        if _is_map_stack(p):  # an attribution layer saved by the writer: (X, Y, Z, K), K classes
            layers.append(_read_map_stack(p))
            continue
        vol = load_volume(p)
        if _looks_like_labels(Path(p).name, vol.array):
            data, kw = volume_layer(vol)
            layers.append((np.asarray(data).astype(np.int32), kw, "labels"))
        else:
            data, kw = volume_layer(vol, colormap="gray")
            data = np.asarray(data, dtype=np.float32)
            contrast = default_contrast(data)
            kw["metadata"]["ct_window"] = contrast.pop("ct_window")
            kw.update(contrast)
            layers.append((data, kw, "image"))
        if kw["metadata"]["oblique"]:
            show_warning(f"{Path(p).name}: the affine is oblique -- shown axis-aligned (voxel sizes and origin "
                         "kept, rotation ignored); results are computed with the full affine")
    schedule_radiology_view()
    return layers


def _is_map_stack(path: str | Path) -> bool:
    img = nib.load(str(path))
    return len(img.shape) == 4 and img.shape[3] > 1 and np.issubdtype(img.get_data_dtype(), np.floating)


def _read_map_stack(path: str | Path) -> tuple[np.ndarray, dict[str, Any], str]:
    """A float ``(X, Y, Z, K)`` NIfTI (the writer's form of an attribution layer) as one Image layer
    ``(K, X, Y, Z)`` with a class axis, a diverging colormap and symmetric limits."""
    img = nib.load(str(path))
    affine = check_affine(img.affine if img.affine is not None else np.eye(4), f"file {path}")
    name = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    stack, kw = [], {}
    for k in range(img.shape[3]):
        data, kw = volume_layer(Volume(np.asarray(img.dataobj[..., k], dtype=np.float32), affine, name=name))
        stack.append(np.asarray(data, dtype=np.float32))
    data = np.stack(stack)
    lim = float(np.percentile(np.abs(data), 99.5)) or 1.0
    kw.update(scale=(1.0, *kw["scale"]), translate=(0.0, *kw["translate"]), units=("pixel", *kw["units"]),
              colormap="bwr", contrast_limits=(-lim, lim), blending="translucent",
              axis_labels=("class", "x", "y", "z"))
    return data, kw, "image"

