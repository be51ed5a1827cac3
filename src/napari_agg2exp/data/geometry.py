"""Putting label volumes on another grid (nearest neighbour through the affines)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.data.volume import Volume, check_allocation
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["grid_volume", "label_occupancy", "resample_labels", "resample_map"]


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


def _axis_map(to_src: np.ndarray) -> list[tuple[int, float, float]] | None:
    """For an axis-aligned ``to_src`` (target voxel -> source voxel): per target axis (source axis, scale,
    offset); None when the two grids are not axis-aligned to each other (oblique)."""
    lin = to_src[:3, :3]
    out = []
    for a in range(3):
        col = lin[:, a]
        src = int(np.argmax(np.abs(col)))
        if abs(col[src]) < 1e-9 or np.abs(np.delete(col, src)).max() > 1e-6 * abs(col[src]):
            return None
        out.append((src, float(col[src]), float(to_src[src, 3])))
    if len({s for s, _, _ in out}) != 3:
        return None
    return out


def _overlap_matrix(n_target: int, n_source: int, scale: float, offset: float) -> np.ndarray:
    """(n_target, n_source): the share of target voxel j (edges j ± 0.5) that lies in source voxel i."""
    j = np.arange(n_target, dtype=float)
    lo = np.minimum(scale * (j - 0.5), scale * (j + 0.5)) + offset
    hi = np.maximum(scale * (j - 0.5), scale * (j + 0.5)) + offset
    i = np.arange(n_source, dtype=float)
    inter = np.clip(np.minimum(hi[:, None], i[None] + 0.5) - np.maximum(lo[:, None], i[None] - 0.5), 0, None)
    return inter / (hi - lo)[:, None]


def label_occupancy(labels: Volume, shape: tuple[int, ...], affine: np.ndarray,
                    ids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """The share of each voxel of a target grid covered by each label of ``labels`` (fractional occupancy).

    A RoI smaller than a target voxel keeps its share instead of vanishing (SPEC §4). Grids that are
    axis-aligned to each other (flips, permutations, any spacing and offset) are handled exactly with
    separable overlap matrices; an oblique pair falls back to nearest-neighbour resampling (shares 0 or 1).

    Args:
        labels: an integer label volume with its affine.
        shape, affine: the target grid (e.g. the model grid of the attribution maps).
        ids: label ids to return (default: every non-zero id present).

    Returns:
        ``{id: (X, Y, Z) float32 array in [0, 1]}``; target voxels outside ``labels``' grid get 0.

    Raises:
        Agg2ExpError: an affine cannot be inverted, or the shares would not fit in memory.
    """
    src = as_label_array(labels.array)
    try:
        to_src = np.linalg.inv(np.asarray(labels.affine, float)) @ np.asarray(affine, float)
    except np.linalg.LinAlgError as e:
        raise Agg2ExpError("a label volume has a singular affine -- save it with the image's affine") from e
    wanted = [int(i) for i in (np.unique(src)[np.unique(src) != 0] if ids is None else ids)]
    axes = _axis_map(to_src)
    shape = tuple(int(s) for s in shape)
    check_allocation(float(np.prod(shape, dtype=float)) * 4 * max(1, len(wanted)),
                     f"the shares of {len(wanted)} labels on the grid {shape}",
                     "give fewer labels (renumber or merge them) or a smaller grid")
    if axes is None:  # oblique: nearest neighbour
        near = resample_labels(labels, Volume(np.zeros(shape, np.uint8), np.asarray(affine, float)))
        return {i: (near == i).astype(np.float32) for i in wanted}
    mats = [_overlap_matrix(shape[a], src.shape[s], sc, off).astype(np.float32) for a, (s, sc, off) in enumerate(axes)]
    order = [s for s, _, _ in axes]  # source axis of each target axis
    out = {}
    for i in wanted:
        onehot = np.transpose(src == i, order).astype(np.float32)  # source axes in target order
        occ = np.tensordot(mats[0], onehot, axes=(1, 0))
        occ = np.tensordot(mats[1], occ, axes=(1, 1)).transpose(1, 0, 2)
        occ = np.tensordot(mats[2], occ, axes=(1, 2)).transpose(1, 2, 0)
        out[i] = np.ascontiguousarray(occ, dtype=np.float32)
    return out


def grid_volume(shape: Sequence[int], affine: np.ndarray) -> Volume:
    """A grid (shape and affine) as a :class:`Volume` whose array takes no memory (a broadcast zero)."""
    return Volume(np.broadcast_to(np.uint8(0), tuple(int(s) for s in shape)), np.asarray(affine, float), "grid")


def resample_map(volume: Volume, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """A continuous map resampled (trilinear) onto another grid through the affines; 0 outside its grid.

    For display on the scan's grid and for ``maps_on="input"``: aggregation stays on the maps' own grid.
    """
    to_src = np.linalg.inv(np.asarray(volume.affine, float)) @ np.asarray(affine, float)
    return ndimage.affine_transform(np.asarray(volume.array, np.float32), to_src[:3, :3], offset=to_src[:3, 3],
                                    output_shape=tuple(int(s) for s in shape), order=1, mode="constant", cval=0.0,
                                    prefilter=False)
