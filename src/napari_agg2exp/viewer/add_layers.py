"""Adding layers to a viewer: the sample data, prediction Labels and attribution Image layers (on
their scan's grid, with their provenance), and RoI importance written into a Labels layer's features.

A re-run updates the plugin's existing layer in place (the user's layer order stays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_agg2exp.viewer.display import (
    attribution_colormap,
    class_colours,
    hex_colour,
    labels_colormap,
    lock_symmetric,
    radiology_view,
)
from napari_agg2exp.viewer.layer_lookup import (
    META,
    feature_names,
    find_layer,
    layer_kind,
    provenance,
)
from napari_agg2exp.viewer.layers import grid_kwargs, layer_affine
from napari_agg2exp.viewer.sample import make_phantom_sample

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "add_attribution",
    "add_prediction",
    "attribution_kwargs",
    "open_sample",
    "prediction_kwargs",
    "set_or_add",
    "write_features",
]


def open_sample(viewer: napari.Viewer, seed: int = 90210) -> list:
    """Add the synthetic thorax phantom (CT, labels, pathology) to the viewer; returns the layers."""
    from napari.layers import Layer

    layers = []
    for data, kwargs, layer_type in make_phantom_sample(seed):
        layers.append(viewer.add_layer(Layer.create(data, kwargs, layer_type)))
    viewer.layers.selection.active = layers[0]
    radiology_view(viewer)
    return layers


def set_or_add(viewer: napari.Viewer, existing: napari.layers.Layer | None, layer_type: str, data: np.ndarray,
               kwargs: dict) -> napari.layers.Layer:
    """Update ``existing`` in place (re-runs keep the user's layer order), else add a new layer."""
    if existing is not None and type(existing).__name__.lower() == layer_type and existing.data.shape == data.shape:
        existing.data = data
        for key in ("metadata", "features", "colormap", "contrast_limits", "scale", "translate"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def prediction_kwargs(image: napari.layers.Image, class_names: Sequence[str], source: str) -> dict[str, Any]:
    """napari keywords of the prediction Labels layer of ``image`` (class names and colours in its
    features, ``source`` -- the model -- in its provenance, the image's grid and source geometry)."""
    colours = class_colours(len(class_names))
    features = {"index": list(range(len(class_names))), "class_name": list(class_names),
                "color": [hex_colour(c) for c in colours]}
    colormap = labels_colormap(colours)
    colormap.map(np.arange(len(class_names), dtype=np.uint8))  # napari JIT-compiles its mapping here, not in the GUI
    return {
        "name": f"{image.name} prediction",
        "features": features,
        "colormap": colormap,
        "opacity": 0.5,
        "metadata": {**_geometry_meta(image),
                     META: {"kind": "prediction", "image": image.name, "class_names": list(class_names),
                            "model": source}},
        **grid_kwargs(image),
    }


def _geometry_meta(image: napari.layers.Image) -> dict[str, Any]:
    """The image's affine and source geometry (what the writer restores) for a layer on its grid."""
    md = {"affine": layer_affine(image).tolist()}
    for key in ("source_affine", "source_ornt", "oblique"):
        if key in image.metadata:
            md[key] = image.metadata[key]
    return md


def add_prediction(viewer: napari.Viewer, image: napari.layers.Image, prediction: np.ndarray,
                   class_names: Sequence[str], source: str,
                   kwargs: dict[str, Any] | None = None) -> napari.layers.Labels:
    """Add (or update) the Labels layer ``"<image> prediction"`` (``kwargs``: from
    :func:`prediction_kwargs`, e.g. built in a worker)."""
    kwargs = prediction_kwargs(image, class_names, source) if kwargs is None else kwargs
    return set_or_add(viewer, find_layer(viewer, "prediction", image.name), "labels",
                      np.asarray(prediction, dtype=np.uint8), kwargs)


def attribution_kwargs(image: napari.layers.Image, method: str, targets: Sequence[str], limits: Sequence[float],
                       transparent_below: Sequence[float], info: dict[str, Any], shown: int = 0,
                       visible: bool = True) -> dict[str, Any]:
    """napari keywords of a run's attribution layer (data ``(K, X, Y, Z)``, class axis first): the
    diverging colormap and symmetric limits ``(-limits[k], limits[k])`` of the shown class ``k``
    (transparent below ``transparent_below[k]``, same unit), translucent 3D rendering (both signs
    show), blended over the scan. Safe to call in a worker thread (the colormaps are built here)."""
    cmaps = [attribution_colormap(c / v if v > 0 else 0.0) for v, c in zip(limits, transparent_below)]
    vlim = float(limits[shown])
    return {
        "name": f"{image.name} {method}",
        "colormap": cmaps[shown],
        "contrast_limits": (-vlim, vlim),
        "rgb": False,
        "blending": "translucent",
        "rendering": "translucent",
        "opacity": 0.9,
        "visible": visible,
        "metadata": {**_geometry_meta(image),
                     META: {"kind": "attribution", "image": image.name, "targets": list(targets), "method": method,
                            "limits": [float(v) for v in limits],
                            "transparent_below": [float(c) for c in transparent_below], "info": info}},
        **grid_kwargs(image, leading=1),
    }


def add_attribution(viewer: napari.Viewer, image: napari.layers.Image, data: np.ndarray,
                    kwargs: dict[str, Any]) -> napari.layers.Image:
    """Add (or update in place) a run's attribution Image layer (``data`` ``(K, X, Y, Z)``, ``kwargs``
    from :func:`attribution_kwargs`): one ``add_layer`` call; its limits stay symmetric."""
    info = kwargs["metadata"][META]
    old = find_layer(viewer, "attribution", image.name, method=info["method"])
    layer = set_or_add(viewer, old, "image", data, kwargs)
    if layer.visible != kwargs.get("visible", True):
        layer.visible = kwargs.get("visible", True)
    if layer is not old:
        lock_symmetric(layer)
    top = float(max(info["limits"]) if info["limits"] else 1.0)
    if tuple(layer.contrast_limits_range) != (-top, top):
        layer.contrast_limits_range = (-top, top)
    return layer


def write_features(layer: napari.layers.Labels, table: pd.DataFrame, target: str) -> None:
    """Write one target's importance into a Labels layer's ``features`` (re-assigned, one row per
    label): columns ``importance_target``, ``mass_<part>`` and ``mean_<part>``."""
    if layer_kind(layer) == "prediction":
        names = dict(enumerate(provenance(layer)["class_names"]))
    else:
        names = feature_names(layer)
    old = layer.features
    n = max([int(np.max(layer.data)) if np.asarray(layer.data).size else 0, len(old) - 1, *names]) + 1
    feats = pd.DataFrame({"index": np.arange(n)})
    for col in old.columns:
        if col != "index" and not col.startswith(("mass_", "mean_", "importance_")) and len(old) == n:
            feats[col] = old[col].to_numpy()
    if "class_name" not in feats.columns:
        feats["class_name"] = [names.get(i, f"label_{i}") for i in range(n)]
    feats["importance_target"] = target
    rows = table[table["target"] == target]
    by_name = {v: k for k, v in names.items()}
    for part in sorted(rows["part"].unique()):
        sub = rows[rows["part"] == part]
        for measure in ("mass", "mean"):
            col = np.full(n, np.nan)
            for roi, val in zip(sub["roi"], sub[measure]):
                i = by_name.get(roi, int(roi[6:]) if roi.startswith("label_") and roi[6:].isdigit() else None)
                if i is not None and i < n:
                    col[i] = val
            feats[f"{measure}_{part}"] = col
    layer.features = feats  # re-assigned: fires the features event
