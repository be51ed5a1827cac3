"""Finding the plugin's layers in a viewer: scans, predictions, attribution maps, RoI names.

Layers made by the plugin carry their provenance in ``layer.metadata[META]`` (``kind``:
``prediction`` or ``attribution``, the ``image`` they belong to, ``target``, ``method``, ...);
scans are the Image layers without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.session import session

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "META",
    "all_attribution_layers",
    "attribution_layer",
    "attribution_layers",
    "attribution_maps",
    "feature_names",
    "find_layer",
    "get_image_layer",
    "image_layers",
    "layer_kind",
    "map_targets",
    "prediction_layer",
    "provenance",
    "roi_label_ids",
]

#: Key of the provenance dict in ``layer.metadata``.
META = "agg2exp"


def provenance(layer: napari.layers.Layer) -> dict:
    """The provenance dict of a layer made by the plugin (empty for other layers)."""
    md = getattr(layer, "metadata", None) or {}
    info = md.get(META)
    return info if isinstance(info, dict) else {}


def layer_kind(layer: napari.layers.Layer) -> str | None:
    """``"prediction"`` or ``"attribution"`` for layers made by the plugin, else None."""
    return provenance(layer).get("kind")


def image_layers(viewer: napari.Viewer) -> list:
    """3D scans: Image layers that are not attribution maps made by this plugin."""
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and layer_kind(ly) is None and not ly.rgb]


def get_image_layer(viewer: napari.Viewer, image: napari.layers.Image | str | None = None) -> napari.layers.Image:
    """Resolve an image argument: a layer, a layer name, or None (the active scan, else the first).

    Raises:
        Agg2ExpError: no such layer, or no scan open.
    """
    from napari.layers import Image

    if image is None:
        active = viewer.layers.selection.active
        if isinstance(active, Image) and layer_kind(active) is None:
            return active
        scans = image_layers(viewer)
        if not scans:
            raise Agg2ExpError("no image layer is open -- open a NIfTI scan (File > Open) or the sample data first")
        return scans[0]
    if isinstance(image, str):
        if image not in viewer.layers:
            raise Agg2ExpError(f"no layer named {image!r} -- open layers: {', '.join(ly.name for ly in viewer.layers)}")
        image = viewer.layers[image]
    if not isinstance(image, Image):
        raise Agg2ExpError(f"layer {image.name!r} is a {type(image).__name__} layer -- an Image layer (the scan) is needed")
    return image


def find_layer(viewer: napari.Viewer, kind: str, image_name: str, **match: Any) -> napari.layers.Layer | None:
    """The first layer of ``kind`` made for the image ``image_name`` whose provenance has ``match``
    (None if there is none)."""
    for ly in viewer.layers:
        md = provenance(ly)
        if md.get("kind") == kind and md.get("image") == image_name and all(md.get(k) == v for k, v in match.items()):
            return ly
    return None


def prediction_layer(viewer: napari.Viewer,
                     image: napari.layers.Image | str | None = None) -> napari.layers.Labels | None:
    """The prediction Labels layer of an image (None if it has not been segmented)."""
    img = get_image_layer(viewer, image)
    return find_layer(viewer, "prediction", img.name)


def all_attribution_layers(viewer: napari.Viewer, image_name: str) -> list:
    """Every attribution layer of the image ``image_name`` (one per method run)."""
    return [ly for ly in viewer.layers if layer_kind(ly) == "attribution" and provenance(ly).get("image") == image_name]


def attribution_layer(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                      method: str | None = None) -> napari.layers.Image | None:
    """The attribution layer of an image for one method (default: the method the image was last
    explained with in this session, else the topmost map's); None when there is none.

    One layer per run: data ``(K, X, Y, Z)`` with a leading class axis, the class names in
    ``provenance(layer)["targets"]``."""
    img = get_image_layer(viewer, image)
    maps = all_attribution_layers(viewer, img.name)
    if not maps:
        return None
    if method is None:
        methods = {provenance(ly).get("method") for ly in maps}
        last = session(viewer).methods.get(img.name)
        method = last if last in methods else provenance(maps[-1]).get("method")
    return next((ly for ly in maps if provenance(ly).get("method") == method), None)


def map_targets(layer: napari.layers.Layer) -> list[str]:
    """Class names along an attribution layer's class axis."""
    info = provenance(layer)
    return list(info.get("targets") or ([info["target"]] if "target" in info else []))


def attribution_layers(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                       method: str | None = None) -> dict[str, Any]:
    """Target class -> attribution Image layer of an image for one method (see
    :func:`attribution_layer`; every class of a run maps to the run's one layer)."""
    layer = attribution_layer(viewer, image, method)
    return {} if layer is None else dict.fromkeys(map_targets(layer), layer)


def attribution_maps(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                     method: str | None = None) -> dict[str, np.ndarray]:
    """Target class -> its 3D map (a view of the layer's data, on the image's grid) for one method."""
    layer = attribution_layer(viewer, image, method)
    if layer is None:
        return {}
    data = np.asarray(layer.data)
    if data.ndim == 3:
        return {t: data for t in map_targets(layer)}
    return {t: data[k] for k, t in enumerate(map_targets(layer))}


def feature_names(layer: napari.layers.Labels) -> dict[int, str]:
    """RoI names of a Labels layer from its features (``class_name`` or ``name``; by ``index``)."""
    f = layer.features
    col = next((c for c in ("class_name", "name", "roi", "label_name") if c in f.columns), None)
    if col is None or len(f) == 0:
        return {0: "background"}
    ids = f["index"].tolist() if "index" in f.columns else list(range(len(f)))
    names = {int(i): str(n) for i, n in zip(ids, f[col].tolist())}
    return names


def roi_label_ids(layer: napari.layers.Labels, roi: str) -> list[int]:
    """Label ids of a RoI name in a Labels layer (``label_<id>`` for unnamed labels)."""
    names = provenance(layer).get("class_names") if layer_kind(layer) == "prediction" else None
    names = dict(enumerate(names)) if names else feature_names(layer)
    ids = [i for i, n in names.items() if n == roi]
    if not ids and roi.startswith("label_") and roi[6:].isdigit():
        ids = [int(roi[6:])]
    return ids
