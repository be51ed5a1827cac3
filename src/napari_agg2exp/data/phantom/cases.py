"""One synthetic thorax CT: :class:`PhantomCase`, :func:`make_phantom` and the cohort's
:func:`case_seed`.

Example:
    >>> case = make_phantom(3)
    >>> image, labels, pathology = case.volumes()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_agg2exp.data.phantom.anatomy import _Builder
from napari_agg2exp.data.phantom.grid import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    _normalise_grid,
    _phantom_affine,
)
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["PhantomCase", "case_seed", "make_phantom"]


@dataclass
class PhantomCase:
    """One synthetic thorax CT.

    Attributes:
        image: float32 HU values (rounded to whole HU), shape ``shape``.
        labels: uint8 label ids, index into :data:`~napari_agg2exp.data.labels.THORAX_LABELS`.
        pathology: uint8 custom RoI volume, ids index into
            :data:`~napari_agg2exp.data.labels.PATHOLOGY_LABELS` (0 none, 1 nodule, 2 effusion).
            Pathology voxels always lie inside lung labels; ``labels`` does not depend on them.
        affine: 4x4 voxel-to-world matrix (RAS+ mm), ``diag(spacing)`` with the volume centred at 0.
        seed: the seed that reproduces this case with :func:`make_phantom`.
    """

    image: np.ndarray
    labels: np.ndarray
    pathology: np.ndarray
    affine: np.ndarray
    seed: int

    def volumes(self) -> tuple[Volume, Volume, Volume]:
        """The image, labels and pathology as :class:`~napari_agg2exp.data.volume.Volume` objects.

        Returns:
            ``(image, labels, pathology)`` sharing one affine (copied per volume).
        """
        return (
            Volume(self.image, self.affine.copy(), "image"),
            Volume(self.labels, self.affine.copy(), "labels"),
            Volume(self.pathology, self.affine.copy(), "pathology"),
        )


def make_phantom(seed: int = 0, *, shape: Sequence[int] = DEFAULT_SHAPE,
                 spacing: float | Sequence[float] = DEFAULT_SPACING,
                 pathology: bool = True) -> PhantomCase:
    """Generate one synthetic thorax CT with the 17 labels of SPEC §9.

    Args:
        seed: non-negative integer; the same seed gives bit-identical arrays.
        shape: grid size (X, Y, Z), each at least 24. The anatomy is scaled to the field of view
            ``shape * spacing``; all labels are present for grids of 48 x 40 x 48 and larger.
        spacing: voxel size in mm (one number or three).
        pathology: add lung nodules and (sometimes) a pleural effusion. They only change the image
            and the pathology volume; ``labels`` is the same either way.

    Returns:
        The case: image (float32 HU), labels (uint8), pathology (uint8), affine, seed.

    Raises:
        Agg2ExpError: a negative or non-integer seed, or a bad shape / spacing.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Agg2ExpError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shp, sp = _normalise_grid(shape, spacing)
    image, labels, path = _Builder(shp, int(seed)).build(bool(pathology))
    return PhantomCase(image=image, labels=labels, pathology=path,
                       affine=_phantom_affine(shp, sp), seed=int(seed))


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of the cohort generated with ``seed`` (deterministic)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])
