"""A synthetic thorax CT phantom with the paper's 17 labels (SPEC §9) and pathologies, at any grid.

The phantoms serve the demo, the tests and the training of the bundled model, so the anatomy is
plausible but above all *learnable*: every structure is a few voxels thick, has a distinct intensity
or a clear positional context, and is present in every case.

Geometry follows NIfTI RAS+ with the volume centred at 0 mm (see :mod:`.grid`). The anatomy is
designed on a nominal field of view of 288 x 240 x 288 mm (the default grid, 96 x 80 x 96 voxels of
3 mm) and scaled to the actual field of view, so the body always fills about 85 % of the image
width. Thin structures keep a minimum thickness in voxels (ribs, veins, fissures, thyroid), so small
grids (e.g. ``shape=(48, 40, 48), spacing=6.0``) still contain every label. The same seed gives
bit-identical arrays; the labels of a seed do not depend on the pathologies (see :mod:`.canvas`).

Modules:
    grid: default grid, affine, the nominal design frame (:class:`_Grid`) and sampling helpers.
    tissues: base intensities (HU) and label ids.
    canvas: the drawing state of one phantom (random streams, arrays, anatomical parameters).
    soft_tissue, skeleton, mediastinum, lungs, pathology: the organ painters, one group each.
    anatomy: ``_Builder``, which runs the painters in order and applies the intensity model.
    cases: :class:`PhantomCase`, :func:`make_phantom`, :func:`case_seed`.
    cohort: :func:`write_phantom_cohort`.

Example:
    >>> case = make_phantom(3)
    >>> image, labels, pathology = case.volumes()
"""

from napari_agg2exp.data.phantom.cases import PhantomCase, case_seed, make_phantom
from napari_agg2exp.data.phantom.cohort import write_phantom_cohort
from napari_agg2exp.data.phantom.grid import DEFAULT_SHAPE, DEFAULT_SPACING, PHANTOM_SIZES

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "PHANTOM_SIZES",
    "PhantomCase",
    "case_seed",
    "make_phantom",
    "write_phantom_cohort",
]
