"""napari sample data: a synthetic thorax CT phantom with its labels and pathology RoIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_agg2exp.data.labels import PATHOLOGY_LABELS, THORAX_LABELS
from napari_agg2exp.data.phantom.cases import make_phantom
from napari_agg2exp.viewer.layers import labels_features, volume_layer_kwargs

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["make_phantom_sample"]


def make_phantom_sample(seed: int = 90210) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    case = make_phantom(seed)
    image, labels, pathology = case.volumes()
    return [
        (image.array.astype("float32"), volume_layer_kwargs(image, "phantom CT", colormap="gray", contrast_limits=(-1000, 1000)), "image"),
        (labels.array.astype("int32"), volume_layer_kwargs(labels, "phantom labels", features=labels_features(THORAX_LABELS), opacity=0.4), "labels"),
        (pathology.array.astype("int32"), volume_layer_kwargs(pathology, "phantom pathology", features=labels_features(PATHOLOGY_LABELS)), "labels"),
    ]
