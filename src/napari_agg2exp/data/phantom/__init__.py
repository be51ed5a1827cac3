"""A synthetic thorax CT phantom with the paper's 17 labels and pathologies, at any grid."""

from napari_agg2exp.data.phantom.builder import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    PhantomCase,
    case_seed,
    make_phantom,
    write_phantom_cohort,
)

__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", "PhantomCase", "case_seed", "make_phantom", "write_phantom_cohort"]
