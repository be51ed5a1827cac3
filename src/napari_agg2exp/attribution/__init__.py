"""Voxel attributions of 3D segmentation models through sliding windows (SPEC §1–3).

- :class:`Explainer` / :func:`explain`: the one front end (a method of the registry
  :data:`METHODS` with its parameters, applied to a prepared case).
- The method classes follow captum: one ``attribute(inputs, target=..., ...)`` each, with a
  :class:`SlidingWindowTarget` as their forward function; :class:`NoiseTunnel` (SmoothGrad) wraps
  any gradient method; :class:`Occlusion`, :class:`FeatureAblation` and :class:`ShapleyValueSampling`
  are captum's perturbation methods, scoring perturbed inputs through a :class:`WindowCache`.
"""

from napari_agg2exp.attribution.explainer import Explainer, Explanation, explain
from napari_agg2exp.attribution.gradient import IntegratedGradients, Saliency, ig_alphas
from napari_agg2exp.attribution.kernel_shap import (
    KernelShap,
    KernelShapDetails,
    cube_feature_mask,
    exact_shapley,
    shapley_coalitions,
    solve_shapley,
)
from napari_agg2exp.attribution.methods import METHODS, Method, Parameter, look_up_method, method_defaults
from napari_agg2exp.attribution.noise_tunnel import NoiseTunnel, SmoothGrad
from napari_agg2exp.attribution.perturbation import (
    FeatureAblation,
    FeatureForward,
    Occlusion,
    PerturbationDetails,
    ShapleyValueSampling,
)
from napari_agg2exp.attribution.target import SlidingWindowTarget, WindowCache

__all__ = [
    "METHODS",
    "Explainer",
    "Explanation",
    "FeatureAblation",
    "FeatureForward",
    "IntegratedGradients",
    "KernelShap",
    "KernelShapDetails",
    "Method",
    "NoiseTunnel",
    "Occlusion",
    "Parameter",
    "PerturbationDetails",
    "Saliency",
    "ShapleyValueSampling",
    "SlidingWindowTarget",
    "SmoothGrad",
    "WindowCache",
    "cube_feature_mask",
    "exact_shapley",
    "explain",
    "ig_alphas",
    "look_up_method",
    "method_defaults",
    "shapley_coalitions",
    "solve_shapley",
]
