"""napari sample data: a synthetic thorax CT phantom with its labels and pathology RoIs (canonical
axis order, see :mod:`~napari_agg2exp.viewer.layers`; the CT in the mediastinum window)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_agg2exp.data.labels import PATHOLOGY_LABELS, THORAX_LABELS
from napari_agg2exp.data.phantom.cases import make_phantom
from napari_agg2exp.viewer.display import ct_window_limits
from napari_agg2exp.viewer.layers import labels_features, volume_layer

__all__ = ["make_phantom_sample"]


def make_phantom_sample(seed: int = 90210) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """LayerData tuples of the phantom: ``phantom CT``, ``phantom labels``, ``phantom pathology``."""
    case = make_phantom(seed)
    image, labels, pathology = case.volumes()
    ct, ct_kw = volume_layer(image, "phantom CT", colormap="gray", contrast_limits=ct_window_limits("mediastinum"))
    ct_kw["metadata"]["ct_window"] = "mediastinum"
    lab, lab_kw = volume_layer(labels, "phantom labels", features=labels_features(THORAX_LABELS), opacity=0.4)
    pat, pat_kw = volume_layer(pathology, "phantom pathology", features=labels_features(PATHOLOGY_LABELS))
    return [
        (np.asarray(ct, dtype=np.float32), ct_kw, "image"),
        (np.asarray(lab, dtype=np.int32), lab_kw, "labels"),
        (np.asarray(pat, dtype=np.int32), pat_kw, "labels"),
    ]
