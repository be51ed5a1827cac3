"""One attribution front end: :class:`Explainer` (a method with its parameters) and :func:`explain`.

The CLI, the workflows, the napari widgets and the quality metrics all explain through
:class:`Explainer`, on a :class:`~napari_agg2exp.models.prepared.PreparedCase` that segmented the
scan once. The metrics call :meth:`Explainer.attribute` again with a perturbed input or a randomised
network, keeping the clean class masks and features (SPEC §1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_agg2exp.attribution.methods import METHODS, Method, look_up_method, method_defaults
from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.data.preprocessing import Preprocessed, to_input_grid
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import PreparedCase, frozen, prepare_case
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel

__all__ = ["METHODS", "Explanation", "Explainer", "explain", "method_defaults"]


@dataclass
class Explanation:
    """Per-class attribution maps of one scan.

    Attributes:
        method: method name; ``parameters`` its settings (JSON-ready).
        targets: explained class names (in order of ``maps_model``); ``target_ids`` their ids.
        skipped: classes asked for but absent from the prediction (no attribution).
        maps_model: (K, X', Y', Z') float32 maps on the model grid.
        prediction: the clean prediction on the input grid; ``image`` the input.
        pre: the preprocessing mapping (model grid ↔ input grid).
        class_names: every class of the model.
        scores: ``f_c(x)`` per target.
        completeness: IG relative completeness error per target (IG only).
        seconds: attribution time.
        extra: method-specific results (KernelSHAP feature and coalition counts, SG's σ).
    """

    method: str
    parameters: dict[str, Any]
    targets: list[str]
    target_ids: list[int]
    skipped: list[str]
    maps_model: np.ndarray
    prediction: Volume
    image: Volume
    pre: Preprocessed
    class_names: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    completeness: dict[str, float] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the model grid (the maps' own grid)."""
        return self.pre.affine

    def map_on_input(self, target: str | int) -> np.ndarray:
        """One class map resampled to the input grid (float32)."""
        k = self.targets.index(target) if isinstance(target, str) else self.target_ids.index(int(target))
        return to_input_grid(self.maps_model[k], self.pre).astype(np.float32)

    def maps_on_input(self) -> dict[str, np.ndarray]:
        return {t: self.map_on_input(t) for t in self.targets}

    def info(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "parameters": self.parameters,
            "targets": self.targets,
            "skipped": self.skipped,
            "scores": self.scores,
            "seconds": round(self.seconds, 3),
            "ig_completeness_relative_error": self.completeness,
            **self.extra,
        }


class Explainer:
    """An attribution method with fixed parameters, applied to prepared cases.

    Args:
        method: a name of :data:`~napari_agg2exp.attribution.methods.METHODS` (``vg``, ``ig``, ``sg``,
            ``kernelshap-cubes``, ``kernelshap-semantic``).
        batch_classes: one batched VJP for all classes of a window (default: on CUDA).
        **parameters: the method's parameters (captum names; paper defaults for those left out).

    Raises:
        Agg2ExpError: unknown method, unknown parameter or invalid value -- before any work.

    Examples::

        >>> prepared = prepare_case(model, ct)
        >>> explanation = Explainer("ig", n_steps=20).explain(prepared, ["heart", "aorta"])
    """

    def __init__(self, method: str | Method, /, *, batch_classes: bool | None = None, **parameters: Any):
        self.method = look_up_method(method)
        self.parameters = self.method.build_parameters(parameters)
        self.batch_classes = batch_classes
        self._forward: tuple[PreparedCase, tuple[int, ...], torch.nn.Module, SlidingWindowTarget] | None = None

    @property
    def name(self) -> str:
        return self.method.name

    def recorded_parameters(self) -> dict[str, Any]:
        """The parameters as written to ``attribution_info.json`` (a feature volume is named, not stored)."""
        out = {k: v for k, v in self.parameters.items() if k not in ("feature_mask", "features")}
        for key in ("feature_mask", "features"):
            if key in self.parameters:
                value = self.parameters[key]
                out["features"] = "prediction" if value is None else value if isinstance(value, str) else "custom"
        return out

    def forward(self, prepared: PreparedCase, target_ids: Sequence[int],
                network: torch.nn.Module | None = None) -> SlidingWindowTarget:
        """The stitched, masked class scores of ``prepared``'s clean prediction (kept for repeated calls with
        the same case, classes and network, e.g. the metrics' perturbed inputs)."""
        net = prepared.model.network if network is None else network
        ids = tuple(int(c) for c in target_ids)
        cached = self._forward
        if cached is None or cached[0] is not prepared or cached[1] != ids or cached[2] is not net:
            cached = self._forward = (prepared, ids, net, SlidingWindowTarget(
                net, prepared.plan, prepared.labels, ids, sw_batch_size=prepared.sw_batch_size,
                batch_classes=self.batch_classes))
        return cached[3]

    def attribute(self, prepared: PreparedCase, target_ids: Sequence[int], *, inputs: torch.Tensor | None = None,
                  network: torch.nn.Module | None = None, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Maps of the classes ``target_ids`` on the model grid.

        Args:
            prepared: the scan, segmented once (fixes the masks ``M_c`` and the semantic features).
            target_ids: class ids present in ``prepared``'s prediction.
            inputs: (X', Y', Z') model-grid input to explain instead of the clean one (metrics).
            network: another network with the same masks (randomisation check).
            progress, cancel: progress callback and cancel flag.

        Returns:
            ``(maps, extras)``: (K, X', Y', Z') float32 tensor and method-specific results.
        """
        net = prepared.model.network if network is None else network
        x = prepared.inputs if inputs is None else inputs.to(prepared.inputs.device)
        with frozen(net):
            return self.method.run(self.forward(prepared, target_ids, net), x, prepared, self.parameters, progress,
                                   cancel)

    def explain(self, prepared: PreparedCase, targets: Sequence[str | int] | str | None = None, *,
                progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Explanation:
        """Explain the chosen classes of a prepared scan.

        Args:
            prepared: the scan, segmented once.
            targets: class names or ids; ``None``/``"all"`` = every class present in the prediction.
            progress, cancel: progress callback and cancel flag.

        Raises:
            Agg2ExpError: unknown class, or none of the asked classes is in the prediction.
        """
        ids, skipped = prepared.resolve_targets(targets)
        if not ids:
            raise Agg2ExpError(
                f"none of the requested classes is present in the prediction (absent: {', '.join(skipped)}) "
                "-- nothing to explain")
        t0 = time.perf_counter()
        maps, extras = self.attribute(prepared, ids, progress=progress, cancel=cancel)
        check_cancel(cancel)
        seconds = time.perf_counter() - t0
        names = [prepared.model.class_names[c] for c in ids]
        completeness = None
        delta = extras.pop("convergence_delta", None)
        if delta is not None:  # Σa − (f(x) − f(x₀)) = delta, so f(x) − f(x₀) = Σa − delta
            total = maps.flatten(1).sum(1).cpu().double()
            rel = delta.cpu().double().abs() / (total - delta.cpu().double()).abs().clamp_min(1e-12)
            completeness = {n: float(e) for n, e in zip(names, rel)}
        params = {**self.recorded_parameters(), **prepared.window}
        if "stdevs" in extras:
            params["stdevs"] = extras.pop("stdevs")
        return Explanation(
            method=self.name,
            parameters=params,
            targets=names,
            target_ids=list(ids),
            skipped=skipped,
            maps_model=np.asarray(maps.detach().cpu().numpy(), dtype=np.float32),
            prediction=prepared.prediction,
            image=prepared.image,
            pre=prepared.pre,
            class_names=prepared.class_names,
            scores={n: prepared.scores[c] for n, c in zip(names, ids)},
            completeness=completeness,
            seconds=seconds,
            extra=extras,
        )


def explain(
    model: SegmentationModel,
    volume: Volume,
    method: str = "vg",
    targets: Sequence[str | int] | str | None = None,
    *,
    window_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    sw_batch_size: int | None = None,
    batch_classes: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    **parameters: Any,
) -> Explanation:
    """Segment ``volume`` and explain the chosen classes with one method (one call for scripts).

    Args:
        model: a loaded :class:`~napari_agg2exp.models.loading.SegmentationModel`.
        volume: the input scan.
        method: ``vg``, ``ig``, ``sg``, ``kernelshap-cubes`` or ``kernelshap-semantic``.
        targets: class names or ids; ``None``/``"all"`` = every class present in the prediction.
        window_size, overlap, blend, sw_batch_size: sliding window (SPEC §2 defaults).
        batch_classes: batched VJPs over classes (default: on CUDA).
        progress, cancel: progress callback and cancel flag.
        **parameters: the method's parameters, e.g. ``n_steps=20`` (IG), ``nt_samples=20, noise_level=0.1``
            (SG), ``n_samples=1000`` (KernelSHAP), ``baselines=0.0``, ``seed=0``, ``internal_batch_size=4``.

    Returns:
        An :class:`Explanation`.
    """
    explainer = Explainer(method, batch_classes=batch_classes, **parameters)  # bad parameters fail before any work
    if targets not in (None, "all"):
        names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
        for t in names:
            model.class_index(t)
    prepared = prepare_case(model, volume, window_size=window_size, overlap=overlap, blend=blend,
                            sw_batch_size=sw_batch_size, progress=SubProgress(progress, 0, 5, 100), cancel=cancel)
    return explainer.explain(prepared, targets, progress=SubProgress(progress, 5, 95, 100), cancel=cancel)
