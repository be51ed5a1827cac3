"""Volume <-> napari layer-data conversion (no napari import: plain LayerData tuples)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_agg2exp.data.volume import Volume

__all__ = ["layer_geometry", "affine_from_layer_meta", "volume_layer_kwargs", "labels_features"]


def layer_geometry(affine: np.ndarray) -> dict[str, Any]:
    """napari geometry keywords for a voxel-to-world affine: scale/translate when it is diagonal,
    else the full ``affine`` (permuted / flipped / oblique axes)."""
    aff = np.asarray(affine, dtype=float)
    lin = aff[:3, :3]
    if np.allclose(lin, np.diag(np.diag(lin))) and np.all(np.diag(lin) > 0):
        return {"scale": tuple(float(v) for v in np.diag(lin)), "translate": tuple(float(v) for v in aff[:3, 3])}
    return {"affine": aff}


def affine_from_layer_meta(meta: dict[str, Any]) -> np.ndarray:
    """The voxel-to-world affine of a layer: the source NIfTI's when known, else from scale/translate."""
    md = meta.get("metadata") or {}
    if "affine" in md:
        return np.asarray(md["affine"], dtype=float)
    aff = np.eye(4)
    if meta.get("affine") is not None:
        a = np.asarray(meta["affine"], dtype=float)
        if a.shape == (4, 4):
            aff = a.copy()
    scale = meta.get("scale")
    translate = meta.get("translate")
    if scale is not None and len(scale) >= 3:
        aff = aff @ np.diag(list(np.asarray(scale, float)[-3:]) + [1.0]) if np.allclose(aff, np.eye(4)) else aff
    if translate is not None and len(translate) >= 3 and np.allclose(aff[:3, 3], 0):
        aff[:3, 3] = np.asarray(translate, float)[-3:]
    return aff


def labels_features(class_names) -> dict[str, list]:
    return {"index": list(range(len(class_names))), "class_name": list(class_names)}


def volume_layer_kwargs(volume: Volume, name: str | None = None, **extra) -> dict[str, Any]:
    kw = {"name": name or volume.name, **layer_geometry(volume.affine),
          "metadata": {"affine": volume.affine.tolist(), "source_name": volume.name}}
    kw.update(extra)
    return kw
