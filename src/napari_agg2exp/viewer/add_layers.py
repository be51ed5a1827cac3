"""Adding layers to a viewer: the sample data, prediction Labels and attribution Image layers (on
their scan's grid, with their provenance), and RoI importance written into a Labels layer's features.

A re-run updates the plugin's existing layer in place (the user's layer order stays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_agg2exp.viewer.display import attribution_colormap, class_colours, hex_colour, labels_colormap
from napari_agg2exp.viewer.layer_lookup import META, feature_names, find_layer, layer_kind, provenance
from napari_agg2exp.viewer.layers import grid_kwargs, layer_affine
from napari_agg2exp.viewer.sample import make_phantom_sample

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd

__all__ = ["add_attribution", "add_prediction", "open_sample", "set_or_add", "write_features"]


def open_sample(viewer: napari.Viewer, seed: int = 90210) -> list:
    """Add the synthetic thorax phantom (CT, labels, pathology) to the viewer; returns the layers."""
    from napari.layers import Layer

    layers = []
    for data, kwargs, layer_type in make_phantom_sample(seed):
        layers.append(viewer.add_layer(Layer.create(data, kwargs, layer_type)))
    viewer.layers.selection.active = layers[0]
    return layers


def set_or_add(viewer: napari.Viewer, existing: napari.layers.Layer | None, layer_type: str, data: np.ndarray,
               kwargs: dict) -> napari.layers.Layer:
    """Update ``existing`` in place (re-runs keep the user's layer order), else add a new layer."""
    if existing is not None and type(existing).__name__.lower() == layer_type and existing.data.shape == data.shape:
        existing.data = data
        for key in ("metadata", "features", "colormap", "contrast_limits"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def add_prediction(viewer: napari.Viewer, image: napari.layers.Image, prediction: np.ndarray,
                   class_names: Sequence[str], source: str) -> napari.layers.Labels:
    """Add (or update) the Labels layer ``"<image> prediction"``: class names and colours in its
    features, ``source`` (the model) in its provenance."""
    colours = class_colours(len(class_names))
    features = {"index": list(range(len(class_names))), "class_name": list(class_names),
                "color": [hex_colour(c) for c in colours]}
    kwargs = {
        "name": f"{image.name} prediction",
        "features": features,
        "colormap": labels_colormap(colours),
        "opacity": 0.5,
        "metadata": {"affine": layer_affine(image).tolist(),
                     META: {"kind": "prediction", "image": image.name, "class_names": list(class_names),
                            "model": source}},
        **grid_kwargs(image),
    }
    return set_or_add(viewer, find_layer(viewer, "prediction", image.name), "labels",
                      np.asarray(prediction, dtype=np.uint8), kwargs)


def add_attribution(viewer: napari.Viewer, image: napari.layers.Image, method: str, target: str, data: np.ndarray,
                    limit: float, transparent_below: float, info: dict[str, Any],
                    visible: bool) -> napari.layers.Image:
    """Add (or update) the attribution Image layer ``"<image> <method> <target>"``: diverging
    colormap with contrast limits ``(-limit, limit)``, transparent below ``transparent_below``
    (same unit as ``limit``), blended over the scan."""
    kwargs = {
        "name": f"{image.name} {method} {target}",
        "colormap": attribution_colormap(transparent_below / limit),
        "contrast_limits": (-limit, limit),
        "blending": "translucent",
        "opacity": 0.9,
        "visible": visible,
        "metadata": {"affine": layer_affine(image).tolist(),
                     META: {"kind": "attribution", "image": image.name, "target": target, "method": method,
                            "limit": limit, "transparent_below": transparent_below, "info": info}},
        **grid_kwargs(image),
    }
    old = find_layer(viewer, "attribution", image.name, target=target, method=method)
    layer = set_or_add(viewer, old, "image", data, kwargs)
    layer.visible = visible
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
