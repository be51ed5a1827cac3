"""Putting label volumes on another grid (nearest neighbour through the affines)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["resample_labels"]


def resample_labels(labels: Volume, reference: Volume) -> np.ndarray:
    """Put a label volume on the grid of ``reference`` (nearest neighbour, through the affines).

    A volume with the reference's shape is taken to be on its grid already (napari label layers and
    label files written by this tool share the image grid) and returned unchanged. Voxels of the
    reference grid that fall outside ``labels`` get label 0.

    Raises:
        Agg2ExpError: an affine cannot be inverted, or no reference voxel falls inside ``labels``.
    """
    src = as_label_array(labels.array)
    if src.ndim != 3:
        raise Agg2ExpError(f"RoI label volume must be 3D, got shape {src.shape}")
    if src.shape == reference.shape[-3:]:
        return src
    try:
        to_src = np.linalg.inv(np.asarray(labels.affine, float)) @ np.asarray(reference.affine, float)
    except np.linalg.LinAlgError as e:
        raise Agg2ExpError(f"RoI volume {labels.name or ''} has a singular affine -- it cannot be mapped onto the "
                           f"image grid; save it with the image's affine") from e
    shape = reference.shape[-3:]
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float).T
    mapped = (to_src @ corners)[:3]
    lo, hi = mapped.min(axis=1), mapped.max(axis=1)
    if np.any(hi < -0.5) or np.any(lo > np.array(src.shape) - 0.5):
        raise Agg2ExpError(
            f"RoI volume of shape {src.shape} does not overlap the image grid of shape {tuple(shape)} (their affines "
            "place them apart) -- give a label volume on the image's grid or with the right affine"
        )
    out = ndimage.affine_transform(src, to_src[:3, :3], offset=to_src[:3, 3], output_shape=tuple(shape),
                                   order=0, mode="grid-constant", cval=0, prefilter=False)
    return out
