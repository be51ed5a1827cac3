"""Voxel attributions of 3D segmentation models through sliding windows (SPEC §1–3).

``explain`` is the one-call entry; the method classes follow captum (one ``attribute`` each) and
take a :class:`SlidingWindowTarget` as their forward function.
"""

from napari_agg2exp.attribution.explainer import (
    METHODS,
    Explanation,
    explain,
    method_defaults,
    resolve_targets,
)
from napari_agg2exp.attribution.gradient import IntegratedGradients, Saliency, SmoothGrad, ig_alphas
from napari_agg2exp.attribution.kernel_shap import (
    KernelShap,
    cube_feature_mask,
    exact_shapley,
    shapley_coalitions,
    solve_shapley,
)
from napari_agg2exp.attribution.target import SlidingWindowTarget

__all__ = [
    "METHODS",
    "Explanation",
    "explain",
    "method_defaults",
    "resolve_targets",
    "Saliency",
    "IntegratedGradients",
    "SmoothGrad",
    "ig_alphas",
    "KernelShap",
    "cube_feature_mask",
    "exact_shapley",
    "shapley_coalitions",
    "solve_shapley",
    "SlidingWindowTarget",
]
