"""One attribution front end: :class:`Explainer` (a method with its parameters) and :func:`explain`.

The CLI, the workflows, the napari widgets and the quality metrics all explain through
:class:`Explainer`, on a :class:`~napari_agg2exp.models.prepared.PreparedCase` that segmented the
scan once. The metrics call :meth:`Explainer.attribute` again with a perturbed input or a randomised
network, keeping the clean class masks and features (SPEC §1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_agg2exp.attribution.methods import METHODS, Method, look_up_method, method_defaults
from napari_agg2exp.attribution.region import RegionLike, TargetRegion
from napari_agg2exp.attribution.region import target_region as region_on_model_grid
from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.data.preprocessing import Preprocessed, to_input_grid
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import PreparedCase, frozen, prepare_case
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel, report

__all__ = ["MAPS_BUDGET_BYTES", "METHODS", "Explainer", "Explanation", "MapSink", "explain", "method_defaults"]

#: A receiver of streamed maps: ``sink(target_name, target_id, map_model)`` with one (X', Y', Z') float32 map.
MapSink = Callable[[str, int, np.ndarray], None]
#: Memory for the maps of one class pass when streaming (gradient methods): as many classes as fit go
#: together (at least one), whatever the number of classes. Each extra pass repeats one forward per window
#: (a VJP costs about two forwards), so small grids run every class in one pass.
MAPS_BUDGET_BYTES = 1 << 30
#: Methods whose maps are per-class sums of input gradients (chunking classes only repeats the forwards);
#: the perturbation methods score every class with each perturbed forward, so they run all classes at once.
GRADIENT_METHODS = ("vg", "ig", "sg")
#: Extras that count work: summed over class passes (the others are per target lists or shared values).
_SUMMED_EXTRAS = ("n_forwards", "network_windows", "full_windows")


@dataclass
class Explanation:
    """Per-class attribution maps of one scan.

    Attributes:
        method: method name; ``parameters`` its settings (JSON-ready).
        targets: explained class names (in order of ``maps_model``); ``target_ids`` their ids.
        skipped: classes asked for but absent from the prediction (no attribution).
        maps_model: (K, X', Y', Z') float32 maps on the model grid; ``None`` when the maps were streamed to a
            sink (then :meth:`map_model` reads them back through ``map_reader``, if one was set).
        prediction: the clean prediction on the input grid; ``image`` the input.
        pre: the preprocessing mapping (model grid ↔ input grid).
        class_names: every class of the model.
        scores: ``f_c(x)`` per target.
        completeness: IG relative completeness error per target (IG only).
        seconds: attribution time.
        extra: method-specific results (KernelSHAP feature and coalition counts, SG's σ).
        region: the target region (scores and maps are over ``M_c ∩ region``), if any.
        map_reader: ``reader(target, grid)`` -> a streamed map read back (``grid``: ``"model"``, the whole
            padded model grid, or ``"input"``), or ``None`` when it was not written on that grid.
    """

    method: str
    parameters: dict[str, Any]
    targets: list[str]
    target_ids: list[int]
    skipped: list[str]
    maps_model: np.ndarray | None
    prediction: Volume
    image: Volume
    pre: Preprocessed
    class_names: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    completeness: dict[str, float] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    region: TargetRegion | None = None
    map_reader: Callable[[str, str], np.ndarray | None] | None = None

    @property
    def model_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the model grid (the maps' own grid)."""
        return self.pre.affine

    def _name(self, target: str | int) -> str:
        return target if isinstance(target, str) else self.targets[self.target_ids.index(int(target))]

    def map_model(self, target: str | int) -> np.ndarray:
        """One class map on the (padded) model grid: from memory, or read back from where it was streamed.

        Raises:
            Agg2ExpError: the maps were streamed and not kept on the model grid.
        """
        name = self._name(target)
        if self.maps_model is not None:
            return self.maps_model[self.targets.index(name)]
        got = self.map_reader(name, "model") if self.map_reader is not None else None
        if got is None:
            raise Agg2ExpError(f"the map of {name!r} was streamed and not kept on the model grid -- explain with "
                               "maps kept in memory or written on the model grid")
        return got

    def map_on_input(self, target: str | int) -> np.ndarray:
        """One class map resampled to the input grid (float32)."""
        name = self._name(target)
        got = self.map_reader(name, "input") if self.maps_model is None and self.map_reader is not None else None
        if got is not None:
            return np.asarray(got, dtype=np.float32)
        return to_input_grid(self.map_model(name), self.pre).astype(np.float32)

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
            **({"target_region": self.region.record()} if self.region is not None else {}),
            **self.extra,
        }


class Explainer:
    """An attribution method with fixed parameters, applied to prepared cases.

    Args:
        method: a name of :data:`~napari_agg2exp.attribution.methods.METHODS` (``vg``, ``ig``, ``sg``,
            ``kernelshap-cubes``, ``kernelshap-semantic``).
        batch_classes: one batched VJP for all classes of a window (default: on CUDA).
        class_batch: classes per pass when maps are streamed to a sink (memory holds this many maps);
            default: as many as fit in :data:`MAPS_BUDGET_BYTES` for the gradient methods, every class for the
            others (one perturbed forward scores all classes).
        **parameters: the method's parameters (captum names; paper defaults for those left out).

    Raises:
        Agg2ExpError: unknown method, unknown parameter or invalid value -- before any work.

    Examples::

        >>> prepared = prepare_case(model, ct)
        >>> explanation = Explainer("ig", n_steps=20).explain(prepared, ["heart", "aorta"])
        >>> Explainer("vg").explain(prepared, sink=lambda name, c, a: np.save(f"{name}.npy", a))  # streamed
    """

    def __init__(self, method: str | Method, /, *, batch_classes: bool | None = None, class_batch: int | None = None,
                 **parameters: Any):
        self.method = look_up_method(method)
        self.parameters = self.method.build_parameters(parameters)
        self.batch_classes = batch_classes
        if class_batch is not None and (isinstance(class_batch, bool) or int(class_batch) < 1):
            raise Agg2ExpError(f"class_batch must be a whole number >= 1, got {class_batch!r}")
        self.class_batch = None if class_batch is None else int(class_batch)
        self._forward: tuple | None = None

    @property
    def name(self) -> str:
        return self.method.name

    def classes_per_pass(self, n_targets: int, map_voxels: int) -> int:
        """Classes attributed together when streaming maps of ``map_voxels`` voxels (see ``class_batch``)."""
        n = max(1, n_targets)
        if self.class_batch is not None:
            return min(self.class_batch, n)
        if self.name not in GRADIENT_METHODS:
            return n
        return max(1, min(n, MAPS_BUDGET_BYTES // (4 * max(1, map_voxels))))

    def recorded_parameters(self) -> dict[str, Any]:
        """The parameters as written to ``attribution_info.json`` (a feature volume is named, not stored)."""
        out = {k: v for k, v in self.parameters.items() if k not in ("feature_mask", "features")}
        for key in ("feature_mask", "features"):
            if key in self.parameters:
                value = self.parameters[key]
                out["features"] = "prediction" if value is None else value if isinstance(value, str) else "custom"
        return out

    def forward(self, prepared: PreparedCase, target_ids: Sequence[int], network: torch.nn.Module | None = None,
                region: TargetRegion | None = None) -> SlidingWindowTarget:
        """The stitched, masked class scores of ``prepared``'s clean prediction (kept for repeated calls with
        the same case, classes, network and region, e.g. the metrics' perturbed inputs); with a ``region``
        the class masks are ``M_c ∩ region``."""
        net = prepared.model.network if network is None else network
        ids = tuple(int(c) for c in target_ids)
        cached = self._forward
        if cached is None or cached[0] is not prepared or cached[1] != ids or cached[2] is not net \
                or cached[3] is not region:
            labels = prepared.labels if region is None else region.restrict(prepared.labels)
            cached = self._forward = (prepared, ids, net, region, SlidingWindowTarget(
                net, prepared.plan, labels, ids, sw_batch_size=prepared.sw_batch_size,
                batch_classes=self.batch_classes))
        return cached[4]

    def attribute(self, prepared: PreparedCase, target_ids: Sequence[int], *, inputs: torch.Tensor | None = None,
                  network: torch.nn.Module | None = None, region: TargetRegion | None = None,
                  progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Maps of the classes ``target_ids`` on the model grid.

        Args:
            prepared: the scan, segmented once (fixes the masks ``M_c`` and the semantic features).
            target_ids: class ids present in ``prepared``'s prediction.
            inputs: (X', Y', Z') model-grid input to explain instead of the clean one (metrics).
            network: another network with the same masks (randomisation check).
            region: explain ``Σ_{M_c ∩ region} z_c`` (from :func:`~napari_agg2exp.attribution.region.target_region`).
            progress, cancel: progress callback and cancel flag.

        Returns:
            ``(maps, extras)``: (K, X', Y', Z') float32 tensor and method-specific results.
        """
        net = prepared.model.network if network is None else network
        x = prepared.inputs if inputs is None else inputs.to(prepared.inputs.device)
        with frozen(net):
            return self.method.run(self.forward(prepared, target_ids, net, region), x, prepared, self.parameters,
                                   progress, cancel)

    def resolve(self, prepared: PreparedCase, targets: Sequence[str | int] | str | None,
                region: TargetRegion | None) -> tuple[list[int], list[str]]:
        """``(class ids to explain, skipped names)``; with a region, the classes predicted inside it.

        Raises:
            Agg2ExpError: nothing to explain (no asked class predicted, or none inside the region).
        """
        ids, skipped = prepared.resolve_targets(targets)
        if not ids:
            raise Agg2ExpError(
                f"none of the requested classes is present in the prediction (absent: {', '.join(skipped)}) "
                "-- nothing to explain")
        if region is None:
            return ids, skipped
        inside = {int(c) for c in np.unique(prepared.labels[region.mask])}
        names = prepared.model.class_names
        outside = [names[c] for c in ids if c not in inside]
        if len(outside) == len(ids):
            raise Agg2ExpError(f"the target region ({region.voxels} model voxels) does not overlap the prediction of "
                               f"{', '.join(outside)} -- draw the region on the class's prediction or pick a class "
                               "predicted inside it")
        return [c for c in ids if c in inside], skipped + outside

    def explain(self, prepared: PreparedCase, targets: Sequence[str | int] | str | None = None, *,
                target_region: RegionLike | TargetRegion | None = None, sink: MapSink | None = None,
                progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Explanation:
        """Explain the chosen classes of a prepared scan.

        Args:
            prepared: the scan, segmented once.
            targets: class names or ids; ``None``/``"all"`` = every class present in the prediction (inside the
                target region, if one is given).
            target_region: explain each class's score over ``M_c ∩ region`` only: a label volume on the input
                grid or any grid with an affine (nonzero voxels), a NIfTI path (``FILE:ID`` = one label).
            sink: stream the maps: ``sink(name, id, map_model)`` is called for each class as soon as its pass is
                done (``classes_per_pass`` classes at a time) and the maps are not kept (``maps_model`` is
                ``None``); without a sink every map is returned in memory.
            progress, cancel: progress callback and cancel flag.

        Raises:
            Agg2ExpError: unknown class, none of the asked classes is in the prediction (or in the region), bad
                region.
        """
        region = None if target_region is None else region_on_model_grid(target_region, prepared)
        ids, skipped = self.resolve(prepared, targets, region)
        names = [prepared.model.class_names[c] for c in ids]
        chunk = self.classes_per_pass(len(ids), prepared.labels.size) if sink is not None else len(ids)
        compute_share = 0.9 if sink is not None else 1.0  # the rest of each pass: handing maps to the sink
        total_units = 1000 * len(ids)
        t0, sink_seconds = time.perf_counter(), 0.0
        kept: list[np.ndarray] = []
        extras: dict[str, Any] = {}
        completeness: dict[str, float] = {}
        scores: dict[str, float] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            base, span = 1000 * start, 1000 * len(part)
            check_cancel(cancel)
            maps, ext = self.attribute(prepared, part, region=region, cancel=cancel,
                                       progress=SubProgress(progress, base, int(span * compute_share), total_units))
            check_cancel(cancel)
            delta = ext.pop("convergence_delta", None)
            if delta is not None:  # Σa − (f(x) − f(x₀)) = delta, so f(x) − f(x₀) = Σa − delta
                d = delta.reshape(-1).cpu().double()
                rel = d.abs() / (maps.flatten(1).sum(1).cpu().double() - d).abs().clamp_min(1e-12)
                completeness.update({names[start + j]: float(e) for j, e in enumerate(rel)})
            _merge_extras(extras, ext)
            if region is not None:  # f_c over M_c ∩ region (the clean scores cover the whole mask)
                f = self.forward(prepared, part, None, region).scores(prepared.inputs[None], cancel=cancel)[0]
                scores.update({names[start + j]: float(v) for j, v in enumerate(f.cpu())})
            else:
                scores.update({names[start + j]: prepared.scores[c] for j, c in enumerate(part)})
            arr = maps.detach().cpu().numpy()
            del maps
            if sink is None:
                kept.append(np.asarray(arr, dtype=np.float32))
                continue
            for j, c in enumerate(part):
                check_cancel(cancel)
                t1 = time.perf_counter()
                sink(names[start + j], int(c), np.asarray(arr[j], dtype=np.float32))
                sink_seconds += time.perf_counter() - t1
                report(progress, base + int(span * compute_share) + (span - int(span * compute_share)) * (j + 1)
                       // len(part), total_units, f"wrote {names[start + j]}")
            del arr
        seconds = time.perf_counter() - t0 - sink_seconds
        params = {**self.recorded_parameters(), **prepared.window}
        if "stdevs" in extras:
            params["stdevs"] = extras.pop("stdevs")
        if sink is not None:
            extras["classes_per_pass"] = chunk
        return Explanation(
            method=self.name,
            parameters=params,
            targets=names,
            target_ids=list(ids),
            skipped=skipped,
            maps_model=None if sink is not None else kept[0] if len(kept) == 1 else np.concatenate(kept),
            prediction=prepared.prediction,
            image=prepared.image,
            pre=prepared.pre,
            class_names=prepared.class_names,
            scores=scores,
            completeness=completeness or None,
            seconds=seconds,
            extra=extras,
            region=region,
        )


def _merge_extras(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Method extras of one class pass added to those of the previous passes (per-target lists and tensors
    concatenated, work counts summed, shared values kept)."""
    for k, v in part.items():
        if k not in into:
            into[k] = v
        elif isinstance(v, list):
            into[k] = list(into[k]) + v
        elif isinstance(v, torch.Tensor) and v.ndim:
            into[k] = torch.cat([into[k], v])
        elif k in _SUMMED_EXTRAS:
            into[k] = into[k] + v


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
    target_region: RegionLike | None = None,
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
        target_region: explain each class's score over ``M_c ∩ region`` only (see :meth:`Explainer.explain`).
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
    return explainer.explain(prepared, targets, target_region=target_region, progress=SubProgress(progress, 5, 95, 100),
                             cancel=cancel)
