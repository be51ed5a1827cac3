"""The method registry: every attribution method with its parameters, defaults and runner (SPEC §3).

An entry (:class:`Method`) carries everything a caller needs, so the CLI, the napari widgets, the
quality metrics and cohorts all read the same table:

- :class:`Parameter` s with captum's names (``n_steps``, ``baselines``, ``nt_samples``, ``stdevs``,
  ``n_samples``, ``feature_mask``, ``internal_batch_size``), paper defaults, bounds and help text;
  :meth:`Method.build_parameters` checks given values (``n_steps=0`` or ``noise_level=nan`` are errors)
  and fills in the defaults;
- each parameter's generic *setting* name (the CLI flag / widget field it comes from:
  ``--steps`` → IG's ``n_steps``, ``--samples`` → SG's ``nt_samples`` or KernelSHAP's ``n_samples``),
  used by :meth:`Method.parameters_from_settings`;
- a runner that computes the maps with the captum-style classes of this package.

A new method is one more entry here; the widgets build their forms from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_agg2exp.attribution.gradient import IG_METHODS, IntegratedGradients, Saliency
from napari_agg2exp.attribution.kernel_shap import SPREADS, KernelShap, cube_feature_mask
from napari_agg2exp.attribution.noise_tunnel import NoiseTunnel, noise_stdev
from napari_agg2exp.attribution.perturbation import (
    FeatureAblation,
    Occlusion,
    ShapleyValueSampling,
    occlusion_shape,
)
from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.data.preprocessing import preprocess_labels
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.prepared import PreparedCase
from napari_agg2exp.options import did_you_mean, look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback

__all__ = ["METHODS", "Method", "Parameter", "look_up_method", "method_defaults"]


@dataclass(frozen=True)
class Parameter:
    """One parameter of a method.

    Attributes:
        name: the Python API name (captum's where captum has one).
        default: the paper's default (SPEC §3); ``None`` means "derived" (e.g. SG's σ from the range).
        help: one line for ``--help`` and widget tooltips.
        kind: ``int``, ``float``, ``str`` or ``object`` (passed as is).
        minimum: smallest allowed value (numbers).
        choices: allowed strings.
        setting: the generic setting it is read from (CLI flag without ``--``, widget field).
    """

    name: str
    default: Any
    help: str
    kind: type = float
    minimum: float | None = None
    choices: tuple[str, ...] | None = None
    setting: str | None = None

    def check(self, value: Any, method: str) -> Any:
        """The value, validated and converted; ``None`` gives the default."""
        if value is None:
            return self.default
        what = f"{method} parameter {self.name}" + (f" (--{self.setting.replace('_', '-')})" if self.setting else "")
        if self.choices is not None:
            return look_up_option(value, self.choices, what=what)
        if self.kind is object:
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise Agg2ExpError(f"{what} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise Agg2ExpError(f"{what} must be a finite number, got {value}")
            if self.kind is int and float(value) != int(value):
                raise Agg2ExpError(f"{what} must be a whole number, got {value}")
            value = self.kind(value)
            if self.minimum is not None and value < self.minimum:
                raise Agg2ExpError(f"{what} must be at least {self.minimum:g}, got {value}")
            return value
        return self.kind(value)


Runner = Callable[[SlidingWindowTarget, torch.Tensor, PreparedCase, dict, ProgressCallback | None,
                   CancelFlag | None], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Method:
    """A registry entry: name, title, reference, parameters and the function that computes the maps."""

    name: str
    title: str
    doc_url: str
    parameters: tuple[Parameter, ...]
    run: Runner

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.parameters}

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def build_parameters(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``given``, each value checked.

        Raises:
            Agg2ExpError: an unknown parameter name (with a suggestion) or an invalid value.
        """
        given = dict(given or {})
        names = [p.name for p in self.parameters]
        unknown = [k for k in given if k not in names]
        if unknown:
            known = ", ".join(names) or "none"
            raise Agg2ExpError(f"unknown parameter {unknown[0]!r} for {self.name}{did_you_mean(unknown[0], names)}; "
                               f"its parameters: {known}")
        return {p.name: p.check(given.get(p.name), self.name) for p in self.parameters}

    def parameters_from_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """This method's parameters from generic settings (CLI flags / widget fields); ``None`` = default."""
        return {p.name: settings[p.setting] for p in self.parameters
                if p.setting is not None and settings.get(p.setting) is not None}


def _batch() -> Parameter:
    return Parameter("internal_batch_size", 4, "inputs per forward/backward batch (IG steps, SG samples, coalitions)",
                     int, 1, setting="batch_size")


def _seed() -> Parameter:
    return Parameter("seed", 0, "random seed (noise, coalitions)", int, setting="seed")


def _baselines() -> Parameter:
    return Parameter("baselines", 0.0, "value of x₀ / of removed features, in preprocessed units", float,
                     setting="baseline")


def _run_vg(fwd, x, prepared, p, progress, cancel):
    return Saliency(fwd).attribute(x, progress=progress, cancel=cancel), {}


def _run_ig(fwd, x, prepared, p, progress, cancel):
    maps, delta = IntegratedGradients(fwd).attribute(
        x, baselines=p["baselines"], n_steps=p["n_steps"], method=p["ig_method"],
        internal_batch_size=p["internal_batch_size"], return_convergence_delta=True, progress=progress, cancel=cancel)
    return maps, {"convergence_delta": delta}


def _run_sg(fwd, x, prepared, p, progress, cancel):
    sigma = noise_stdev(prepared.inputs, p["noise_level"], p["stdevs"])  # σ of the clean input, for every x
    maps = NoiseTunnel(Saliency(fwd)).attribute(x, nt_samples=p["nt_samples"], stdevs=sigma, seed=p["seed"],
                                                nt_samples_batch_size=p["internal_batch_size"], progress=progress,
                                                cancel=cancel)
    return maps, {"stdevs": sigma}


def _kernel_shap(fwd, x, fm, p, progress, cancel):
    maps, d = KernelShap(fwd).attribute(x, feature_mask=fm, baselines=p["baselines"], n_samples=p["n_samples"],
                                        perturbations_per_eval=p["internal_batch_size"], spread=p["spread"],
                                        seed=p["seed"], return_details=True, progress=progress, cancel=cancel)
    se = np.asarray(d.standard_errors, dtype=float)  # (M, K): summarised per target row, in target order

    def per_target(a):  # JSON: plain floats, None where not finite (not identified / not estimable)
        return [float(v) if math.isfinite(v) else None for v in a]

    return maps, {"n_features": int(len(d.feature_ids)), "n_coalitions": int(d.n_coalitions),
                  "design_rank": int(d.design_rank), "n_pairs": int(d.n_pairs),
                  "standard_error_max": per_target(se.max(0)), "standard_error_mean": per_target(se.mean(0))}


def _run_ks_cubes(fwd, x, prepared, p, progress, cancel):
    return _kernel_shap(fwd, x, cube_feature_mask(tuple(x.shape), p["cubes_per_axis"]), p, progress, cancel)


def semantic_features(prepared: PreparedCase, feature_mask: Volume | np.ndarray | None) -> np.ndarray:
    """Semantic KernelSHAP features on the model grid: the clean prediction, or a label volume on the
    input grid (a :class:`Volume` or an array shaped like the input) mapped there by nearest neighbour."""
    if feature_mask is None or (isinstance(feature_mask, str) and feature_mask == "prediction"):
        return prepared.labels
    arr = feature_mask.array if isinstance(feature_mask, Volume) else np.asarray(feature_mask)
    if tuple(arr.shape) != tuple(prepared.image.shape):
        raise Agg2ExpError(f"feature volume shape {tuple(arr.shape)} differs from the image's {prepared.image.shape} "
                           "-- give the features on the image's grid")
    return preprocess_labels(arr, prepared.pre)


def _run_ks_semantic(fwd, x, prepared, p, progress, cancel):
    return _kernel_shap(fwd, x, semantic_features(prepared, p["feature_mask"]), p, progress, cancel)


#: Registry: method name -> :class:`Method` (SPEC §3 defaults).
METHODS: dict[str, Method] = {
    "vg": Method("vg", "Vanilla gradient", "https://arxiv.org/abs/1312.6034", (), _run_vg),
    "ig": Method("ig", "Integrated gradients", "https://arxiv.org/abs/1703.01365", (
        Parameter("n_steps", 20, "interpolation steps", int, 1, setting="steps"),
        _baselines(),
        Parameter("ig_method", "riemann_middle", "quadrature of the path integral (IG's `method`)", str,
                  choices=IG_METHODS, setting="ig_method"),
        _batch(),
    ), _run_ig),
    "sg": Method("sg", "SmoothGrad", "https://arxiv.org/abs/1706.03825", (
        Parameter("nt_samples", 20, "noisy samples", int, 1, setting="samples"),
        Parameter("noise_level", 0.1, "noise σ as a fraction of the intensity range", float, 0.0,
                  setting="noise_level"),
        Parameter("stdevs", None, "absolute noise σ (overrides noise_level)", float, 0.0, setting="stdevs"),
        _seed(),
        _batch(),
    ), _run_sg),
    "kernelshap-cubes": Method("kernelshap-cubes", "KernelSHAP (cubes)", "https://arxiv.org/abs/1705.07874", (
        Parameter("n_samples", 1000, "coalitions (more than the features: full-rank design)", int, 1,
                  setting="samples"),
        Parameter("cubes_per_axis", 8, "cube grid per axis (8 → 512 features)", int, 2, setting="cubes_per_axis"),
        _baselines(),
        Parameter("spread", "even", "per-voxel convention of a feature's value", str, choices=SPREADS,
                  setting="spread"),
        _seed(),
        _batch(),
    ), _run_ks_cubes),
    "kernelshap-semantic": Method("kernelshap-semantic", "KernelSHAP (semantic)", "https://arxiv.org/abs/1705.07874", (
        Parameter("n_samples", 200, "coalitions (more than the features: full-rank design)", int, 1,
                  setting="samples"),
        Parameter("feature_mask", None, "features: a label volume on the image grid (default: the prediction)",
                  object, setting="features"),
        _baselines(),
        Parameter("spread", "even", "per-voxel convention of a feature's value", str, choices=SPREADS,
                  setting="spread"),
        _seed(),
        _batch(),
    ), _run_ks_semantic),
}


def look_up_method(method: str | Method) -> Method:
    """The registry entry of ``method``; a typo gets a one-line error with a suggestion."""
    if isinstance(method, Method):
        return method
    return METHODS[look_up_option(method, METHODS, what="method", normalise=True)]


def method_defaults(method: str) -> dict[str, Any]:
    """The paper defaults of a method's parameters."""
    return look_up_method(method).defaults


# ---- perturbation methods (captum's, through the window cache: attribution/perturbation.py)

#: Feature choices of feature ablation and Shapley sampling (besides a custom label volume).
FEATURE_CHOICES = ("cubes", "prediction")


class _ShapeParameter(Parameter):
    """A patch size or step: 1 or 3 positive ints (an int stays an int; the widgets show it as one)."""

    def check(self, value: Any, method: str) -> Any:
        if value is None:
            return self.default
        shape = occlusion_shape(value, f"{method} parameter {self.name}")
        return shape[0] if len(set(shape)) == 1 else shape


class _FeaturesParameter(Parameter):
    """``cubes``, ``prediction`` (the predicted regions) or a label volume on the image grid."""

    def check(self, value: Any, method: str) -> Any:
        if value is None:
            return self.default
        if isinstance(value, str):
            return look_up_option(value, FEATURE_CHOICES, what=f"{method} parameter {self.name}")
        if isinstance(value, (Volume, np.ndarray, torch.Tensor)):
            return value
        raise Agg2ExpError(f"{method} parameter {self.name} must be one of {', '.join(FEATURE_CHOICES)} or a label "
                           f"volume, got {type(value).__name__}")


def group_features(prepared: PreparedCase, features: Any, cubes_per_axis: int) -> np.ndarray:
    """Feature labels on the model grid: a cube grid, the clean prediction's regions, or a label volume on the
    image grid (nearest neighbour, as :func:`semantic_features`)."""
    if isinstance(features, str):
        if features == "cubes":
            return cube_feature_mask(prepared.plan.shape, cubes_per_axis)
        return prepared.labels
    if isinstance(features, torch.Tensor):
        features = features.cpu().numpy()
    return semantic_features(prepared, features)


def _run_occlusion(fwd, x, prepared, p, progress, cancel):
    maps, d = Occlusion(fwd).attribute(x, sliding_window_shapes=p["sliding_window_shapes"], strides=p["strides"],
                                       baselines=p["baselines"], perturbations_per_eval=p["internal_batch_size"],
                                       return_details=True, progress=progress, cancel=cancel)
    return maps, d.summary()


def _run_ablation(fwd, x, prepared, p, progress, cancel):
    fm = group_features(prepared, p["features"], p["cubes_per_axis"])
    maps, d = FeatureAblation(fwd).attribute(x, feature_mask=fm, baselines=p["baselines"], spread=p["spread"],
                                             perturbations_per_eval=p["internal_batch_size"], return_details=True,
                                             progress=progress, cancel=cancel)
    return maps, d.summary()


def _run_shapley_sampling(fwd, x, prepared, p, progress, cancel):
    fm = group_features(prepared, p["features"], p["cubes_per_axis"])
    maps, d = ShapleyValueSampling(fwd).attribute(x, feature_mask=fm, baselines=p["baselines"],
                                                  n_samples=p["n_samples"], spread=p["spread"], seed=p["seed"],
                                                  perturbations_per_eval=p["internal_batch_size"], return_details=True,
                                                  progress=progress, cancel=cancel)
    return maps, d.summary()


def _features(default: str = "cubes") -> Parameter:
    return _FeaturesParameter("features", default, "cubes, prediction (the predicted regions) or a label volume on "
                              "the image grid", object, setting="features")


def _spread() -> Parameter:
    return Parameter("spread", "even", "per-voxel convention of a feature's value", str, choices=SPREADS,
                     setting="spread")


METHODS["occlusion"] = Method("occlusion", "Occlusion", "https://arxiv.org/abs/1311.2901", (
    _ShapeParameter("sliding_window_shapes", 16, "occluding patch on the model grid (1 or 3 ints)", int, 1,
                    setting="occlusion_window"),
    _ShapeParameter("strides", None, "patch step (1 or 3 ints; default: half the patch)", int, 1,
                    setting="occlusion_stride"),
    _baselines(),
    _batch(),
), _run_occlusion)
METHODS["feature-ablation"] = Method("feature-ablation", "Feature ablation",
                                     "https://captum.ai/api/feature_ablation.html", (
    _features(),
    Parameter("cubes_per_axis", 8, "cube grid per axis when features=cubes (8 → 512 features)", int, 1,
              setting="cubes_per_axis"),
    _baselines(),
    _spread(),
    _batch(),
), _run_ablation)
METHODS["shapley-sampling"] = Method("shapley-sampling", "Shapley value sampling",
                                     "https://doi.org/10.1016/j.cor.2008.04.004", (
    Parameter("n_samples", 25, "feature permutations", int, 1, setting="samples"),
    _features(),
    Parameter("cubes_per_axis", 4, "cube grid per axis when features=cubes (4 → 64 features)", int, 1,
              setting="cubes_per_axis"),
    _baselines(),
    _spread(),
    _seed(),
    _batch(),
), _run_shapley_sampling)
