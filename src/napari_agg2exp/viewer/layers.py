"""Volume <-> napari layer conversion: layer data tuples of volumes, volumes of layers, layer geometry.

Layers hold their data in the closest canonical (RAS+) axis order, like
``nibabel.as_closest_canonical``: axis 0 runs to the patient's right, axis 1 to anterior, axis 2 to
superior, whatever the file's axis order or flips. napari then only ever gets a positive ``scale``
and a ``translate`` (never a permuted ``affine=``, which vispy cannot invert), and every layer's
world coordinates are RAS+ millimetres, so files on different grids overlay. ``metadata["affine"]``
is the voxel-to-world affine of the layer's (canonical) data; ``metadata["source_affine"]`` and
``metadata["source_ornt"]`` record the file's own geometry, which the writer restores.

An oblique affine (axes not parallel to the world axes) is shown axis-aligned: voxel sizes from
its columns, origin at its translation (``metadata["oblique"]`` is True).

No napari import: the functions build plain LayerData tuples / keyword dicts, or read the public
attributes of a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nibabel.orientations as nio
import numpy as np

from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "OBLIQUE_TOLERANCE",
    "affine_from_layer_meta",
    "canonical_volume",
    "grid_kwargs",
    "is_oblique",
    "labels_features",
    "layer_affine",
    "layer_geometry",
    "layer_volume",
    "to_source_orientation",
    "volume_layer",
]

#: Largest off-diagonal part (relative to the voxel size) of a canonical affine still shown as is.
OBLIQUE_TOLERANCE = 1e-3


def canonical_volume(volume: Volume) -> tuple[Volume, np.ndarray]:
    """The volume in its closest canonical (RAS+) axis order, and the nibabel orientation transform
    from the source axes to it (``nibabel.as_closest_canonical`` on a :class:`Volume`)."""
    shape = volume.array.shape[:3]
    ornt = nio.io_orientation(volume.affine)
    if np.array_equal(ornt, nio.axcodes2ornt("RAS")):
        return volume, ornt
    array = np.ascontiguousarray(nio.apply_orientation(volume.array, ornt))
    affine = volume.affine @ nio.inv_ornt_aff(ornt, shape)
    return Volume(array, affine, volume.name, volume.source), ornt


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform undoing ``ornt`` (canonical axes -> source axes)."""
    ornt = np.asarray(ornt, float)
    inv = np.zeros_like(ornt)
    for src, (dst, flip) in enumerate(ornt):
        inv[int(dst)] = (src, flip)
    return inv


def to_source_orientation(data: np.ndarray, ornt: np.ndarray | Sequence) -> np.ndarray:
    """Canonical-order data (3D, or with leading channel axes) back in the source file's axis order."""
    data = np.asarray(data)
    inv = _inverse_ornt(np.asarray(ornt, float))
    if data.ndim == 3:
        return np.ascontiguousarray(nio.apply_orientation(data, inv))
    flat = data.reshape((-1, *data.shape[-3:]))
    out = np.stack([nio.apply_orientation(c, inv) for c in flat])
    return np.ascontiguousarray(out.reshape((*data.shape[:-3], *out.shape[-3:])))


def is_oblique(affine: np.ndarray) -> bool:
    """Whether a voxel-to-world affine has axes not parallel to the world axes (after canonical reorder)."""
    lin = np.asarray(affine, float)[:3, :3]
    size = np.sqrt((lin ** 2).sum(axis=0))
    size[size == 0] = 1.0
    off = lin - np.diag(np.diag(lin))
    return bool(np.max(np.abs(off) / size[None, :]) > OBLIQUE_TOLERANCE)


def layer_geometry(affine: np.ndarray) -> dict[str, Any]:
    """napari ``scale`` / ``translate`` of a canonical-order voxel-to-world affine: voxel sizes along
    the axes (always positive: never a singular or permuted transform) and the origin. Exact for an
    axis-aligned affine; an oblique one is shown axis-aligned."""
    aff = np.asarray(affine, dtype=float)
    size = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    size = np.where(size > 0, size, 1.0)
    return {"scale": tuple(float(v) for v in size), "translate": tuple(float(v) for v in aff[:3, 3])}


def volume_layer(volume: Volume, name: str | None = None, **extra: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(data in canonical order, napari keywords) of a volume: ``scale``/``translate`` (mm) from its
    affine and the source geometry in ``metadata`` (see the module docstring)."""
    canon, ornt = canonical_volume(volume)
    metadata = {"affine": canon.affine.tolist(), "source_name": volume.name,
                "source_affine": np.asarray(volume.affine, float).tolist(), "source_ornt": ornt.tolist(),
                "oblique": is_oblique(canon.affine)}
    metadata.update(extra.pop("metadata", {}))
    kw = {"name": name or volume.name, **layer_geometry(canon.affine), "units": ("mm", "mm", "mm"),
          "metadata": metadata}
    kw.update(extra)
    return canon.array, kw


def affine_from_layer_meta(meta: dict[str, Any]) -> np.ndarray:
    """The voxel-to-world affine of a layer's (last three) data axes: the plugin's record when known,
    else from the layer's scale/translate/affine."""
    md = meta.get("metadata") or {}
    if "affine" in md:
        return np.asarray(md["affine"], dtype=float)
    aff = np.eye(4)
    if meta.get("affine") is not None:
        a = np.asarray(meta["affine"], dtype=float)
        if a.shape[0] >= 4 and a.shape == (a.shape[0], a.shape[0]):
            n = a.shape[0] - 1
            aff[:3, :3] = a[n - 3:n, n - 3:n]
            aff[:3, 3] = a[n - 3:n, n]
    scale = meta.get("scale")
    translate = meta.get("translate")
    lin = np.diag(list(np.asarray(scale, float)[-3:]) + [1.0]) if scale is not None and len(scale) >= 3 else np.eye(4)
    shift = np.eye(4)
    if translate is not None and len(translate) >= 3:
        shift[:3, 3] = np.asarray(translate, float)[-3:]
    return aff @ shift @ lin  # napari: world = affine(translate + scale * index)


def labels_features(class_names: Sequence[str]) -> dict[str, list]:
    """Features of a Labels layer naming its labels: ``index`` and ``class_name``."""
    return {"index": list(range(len(class_names))), "class_name": list(class_names)}


def layer_affine(layer: napari.layers.Layer) -> np.ndarray:
    """Voxel-to-world affine of a layer's data: the plugin's record when known, else the layer's transform."""
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


def grid_kwargs(layer: napari.layers.Layer, leading: int = 0) -> dict[str, Any]:
    """napari keywords putting a new layer exactly on ``layer``'s grid (``leading`` extra axes in front,
    e.g. a class axis: unit scale, no shift)."""
    scale, translate = tuple(layer.scale[-3:]), tuple(layer.translate[-3:])
    units = tuple(str(u) for u in layer.units[-3:])
    kw: dict[str, Any] = {"scale": (1.0,) * leading + scale, "translate": (0.0,) * leading + translate,
                          "units": ("pixel",) * leading + units}
    aff = np.asarray(layer.affine.affine_matrix, float)
    if not np.allclose(aff, np.eye(aff.shape[0])):  # a layer made elsewhere with its own affine
        n = aff.shape[0] - 1
        full = np.eye(4 + leading)
        full[leading:leading + 3, leading:leading + 3] = aff[n - 3:n, n - 3:n]
        full[leading:leading + 3, -1] = aff[n - 3:n, n]
        kw["affine"] = full
    if leading == 0:
        kw["rotate"], kw["shear"] = layer.rotate, layer.shear
    return kw
