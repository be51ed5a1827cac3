"""Recompute an attribution for another input or another network, the explained targets fixed.

The sensitivity and randomisation metrics need the *same* explanation recomputed for a perturbed
input (or a randomised model). :class:`AttributionFunction` keeps everything that defines it -- the
method and its parameters, the sliding-window plan, the clean prediction (so every class mask
``M_c`` and the semantic KernelSHAP features stay those of the clean input, SPEC §1) -- and maps a
model-grid input (X, Y, Z) to per-class maps (K, X, Y, Z). It uses the attribution classes of
:mod:`napari_agg2exp.attribution`, so on the clean input it gives exactly what
:func:`~napari_agg2exp.attribution.explain` gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.progress import CancelFlag, ProgressCallback

__all__ = ["AttributionFunction"]


@dataclass
class AttributionFunction:
    """One attribution method with fixed parameters and fixed targets, callable on any input.

    Build it with :meth:`create`. Calling it runs the method on ``inputs`` (X, Y, Z) and returns a
    (K, X, Y, Z) float32 tensor, one map per class of ``classes``.

    Attributes:
        method: ``vg``, ``ig``, ``sg``, ``kernelshap-cubes`` or ``kernelshap-semantic``.
        network: the model's network (B, 1, *window) -> (B, C, *window).
        plan: the sliding-window plan of the model grid.
        prediction: (X, Y, Z) labels of the clean input; fixes ``M_c``.
        classes: target class ids.
        parameters: resolved method parameters (IG ``n_steps``; SG ``n_samples``, ``stdev``, ``seed``;
            KernelSHAP ``n_samples``, ``baseline``, ``seed``, ``spread``; ``internal_batch_size``).
        feature_mask: KernelSHAP features (X, Y, Z) (cubes or the clean prediction); None otherwise.
        sw_batch_size: inputs per forward pass of the forward function.
        batch_classes: batched VJPs over classes (default: on CUDA).
    """

    method: str
    network: Any
    plan: Any
    prediction: Any
    classes: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)
    feature_mask: np.ndarray | None = None
    sw_batch_size: int = 1
    batch_classes: bool | None = None

    def __post_init__(self) -> None:
        from napari_agg2exp.attribution.target import SlidingWindowTarget

        if hasattr(self.prediction, "cpu"):  # a (possibly CUDA) tensor: SlidingWindowTarget reads it via numpy
            self.prediction = self.prediction.cpu().numpy()
        self.forward = SlidingWindowTarget(self.network, self.plan, self.prediction, self.classes,
                                           sw_batch_size=self.sw_batch_size, batch_classes=self.batch_classes)

    @classmethod
    def create(
        cls,
        method: str,
        network,
        plan,
        prediction,
        classes: Sequence[int],
        inputs,
        *,
        n_steps: int | None = None,
        n_samples: int | None = None,
        noise_level: float = 0.1,
        stdev: float | None = None,
        baseline: float = 0.0,
        cubes_per_axis: int | None = None,
        feature_mask: np.ndarray | None = None,
        spread: str = "even",
        seed: int = 0,
        internal_batch_size: int = 4,
        sw_batch_size: int = 1,
        batch_classes: bool | None = None,
    ) -> "AttributionFunction":
        """Resolve the method's parameters (paper defaults, SPEC §3) for one clean input.

        Args:
            method: attribution method name (see :data:`~napari_agg2exp.attribution.METHODS`).
            network, plan: the model's network and the sliding-window plan of the model grid.
            prediction: (X, Y, Z) clean prediction on the model grid (numpy or torch).
            classes: target class ids (present in ``prediction``).
            inputs: (X, Y, Z) clean model-grid input; fixes SG's ``σ = noise_level · (max x − min x)``
                unless ``stdev`` is given, so perturbed inputs are explained with the same σ.
            n_steps: IG steps (20). n_samples: SG samples (20) / KernelSHAP coalitions (1000 / 200).
            baseline: IG ``x₀`` / KernelSHAP removed-feature value (0).
            cubes_per_axis: KernelSHAP cube grid (8, i.e. 512 cubes).
            feature_mask: semantic KernelSHAP features on the model grid (default: ``prediction``).
            spread: KernelSHAP per-voxel convention (``even`` or ``broadcast``).
            seed: SG noise / KernelSHAP coalition seed (the same for every input).
            internal_batch_size: IG steps / SG samples / coalitions per batch.

        Raises:
            Agg2ExpError: unknown method or invalid parameters.
        """
        from napari_agg2exp.attribution.explainer import _method
        from napari_agg2exp.attribution.kernel_shap import cube_feature_mask

        info = _method(method)
        pred = prediction.cpu().numpy() if hasattr(prediction, "cpu") else np.asarray(prediction)
        params: dict[str, Any] = {"internal_batch_size": max(1, int(internal_batch_size))}
        fmask = None
        if method == "ig":
            params.update(n_steps=int(n_steps or info.defaults["n_steps"]), baseline=float(baseline))
        elif method == "sg":
            if stdev is None:
                x = inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else np.asarray(inputs)
                stdev = float(noise_level) * float(x.max() - x.min())
            params.update(n_samples=int(n_samples or info.defaults["n_samples"]), stdev=float(stdev), seed=int(seed))
        elif method.startswith("kernelshap"):
            if spread not in ("even", "broadcast"):
                raise Agg2ExpError(f"spread must be 'even' or 'broadcast', got {spread!r}")
            params.update(n_samples=int(n_samples or info.defaults["n_samples"]), baseline=float(baseline),
                          seed=int(seed), spread=spread)
            if method == "kernelshap-cubes":
                cpa = int(cubes_per_axis or info.defaults["cubes_per_axis"])
                params.update(cubes=cpa**3)
                fmask = cube_feature_mask(pred.shape, cpa)
            else:
                fmask = pred if feature_mask is None else np.asarray(feature_mask)
                if fmask.shape != pred.shape:
                    raise Agg2ExpError(f"feature mask {fmask.shape} is not on the model grid {pred.shape}")
        for key in ("n_steps", "n_samples"):
            if key in params and params[key] < 1:
                raise Agg2ExpError(f"{method}: {key} must be at least 1, got {params[key]}")
        return cls(method, network, plan, prediction, [int(c) for c in classes], params, fmask,
                   max(1, int(sw_batch_size)), batch_classes)

    @property
    def num_targets(self) -> int:
        return len(self.classes)

    def with_network(self, network) -> "AttributionFunction":
        """The same explanation (method, parameters, class masks, features) of another network."""
        return replace(self, network=network)

    def __call__(self, inputs, *, progress: ProgressCallback | None = None, cancel: CancelFlag | None = None):
        """Explain ``inputs`` (X, Y, Z) on the model grid; returns (K, X, Y, Z) float32 tensor."""
        from napari_agg2exp.attribution.gradient import IntegratedGradients, Saliency, SmoothGrad
        from napari_agg2exp.attribution.kernel_shap import KernelShap

        p = self.parameters
        bs = p["internal_batch_size"]
        if self.method == "vg":
            return Saliency(self.forward).attribute(inputs, progress=progress, cancel=cancel)
        if self.method == "ig":
            return IntegratedGradients(self.forward).attribute(inputs, p["baseline"], n_steps=p["n_steps"],
                                                               internal_batch_size=bs, progress=progress, cancel=cancel)
        if self.method == "sg":
            return SmoothGrad(Saliency(self.forward)).attribute(inputs, n_samples=p["n_samples"], stdev=p["stdev"],
                                                                seed=p["seed"], internal_batch_size=bs,
                                                                progress=progress, cancel=cancel)
        res = KernelShap(self.forward).attribute(inputs, self.feature_mask, baselines=p["baseline"],
                                                 n_samples=p["n_samples"], seed=p["seed"], perturbations_per_eval=bs,
                                                 spread=p["spread"], progress=progress, cancel=cancel)
        return res.attributions
