"""Volume <-> napari layer conversion: layer data tuples of volumes, volumes of layers, layer geometry.

No napari import: the functions build plain LayerData tuples / keyword dicts, or read the public
attributes of a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "affine_from_layer_meta",
    "grid_kwargs",
    "labels_features",
    "layer_affine",
    "layer_geometry",
    "layer_volume",
    "volume_layer_kwargs",
]


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


def labels_features(class_names: Sequence[str]) -> dict[str, list]:
    return {"index": list(range(len(class_names))), "class_name": list(class_names)}


def volume_layer_kwargs(volume: Volume, name: str | None = None, **extra: Any) -> dict[str, Any]:
    kw = {"name": name or volume.name, **layer_geometry(volume.affine),
          "metadata": {"affine": volume.affine.tolist(), "source_name": volume.name}}
    kw.update(extra)
    return kw


def layer_affine(layer: napari.layers.Layer) -> np.ndarray:
    """Voxel-to-world affine of a layer: the source file's when known, else the layer's transform."""
    return affine_from_layer_meta({"metadata": layer.metadata, "scale": list(layer.scale),
                                   "translate": list(layer.translate), "affine": layer.affine.affine_matrix})


def layer_volume(layer: napari.layers.Layer) -> Volume:
    """A layer's data as a :class:`~napari_agg2exp.data.volume.Volume` (no copy for numpy data).

    Raises:
        Agg2ExpError: multiscale, RGB, or not 3D data.
    """
    if getattr(layer, "multiscale", False):
        raise Agg2ExpError(f"layer {layer.name!r} is multiscale -- open the full-resolution scan as a single volume")
    if getattr(layer, "rgb", False):
        raise Agg2ExpError(f"layer {layer.name!r} is an RGB image -- a 3D scan is needed")
    data = np.asarray(layer.data)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise Agg2ExpError(f"layer {layer.name!r} has {data.ndim}D data of shape {data.shape} -- a 3D volume is needed")
    return Volume(data, layer_affine(layer), layer.name)


def grid_kwargs(layer: napari.layers.Layer) -> dict[str, Any]:
    """napari keywords putting a new layer exactly on ``layer``'s grid."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "rotate": layer.rotate,
            "shear": layer.shear, "affine": layer.affine.affine_matrix}
