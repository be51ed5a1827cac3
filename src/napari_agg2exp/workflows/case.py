"""One case pipeline: :func:`run_case` (segment → explain → local importance → quality → metrics).

The CLI (``segment``, ``explain``, ``demo``, ``evaluate``), the Dask cohort runner and the napari
session all run a case through this function. The scan is segmented once
(:class:`~napari_agg2exp.models.prepared.PreparedCase`) and every later step reuses it. With an
output :class:`~napari_agg2exp.workflows.case_folder.CaseFolder` the results are written there,
``case.json`` last.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from napari_agg2exp.attribution.explainer import Explainer, Explanation
from napari_agg2exp.data.dice import quality_table
from napari_agg2exp.data.geometry import label_occupancy
from napari_agg2exp.data.volume import Volume, load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.evaluate import evaluate_case
from napari_agg2exp.files import safe_file_name
from napari_agg2exp.importance.local import local_importance, occupancy_local_importance
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import PreparedCase, prepare_case
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel, report
from napari_agg2exp.workflows.case_folder import CaseFolder

__all__ = ["CaseResult", "run_case", "read_case_inputs"]


@dataclass
class CaseResult:
    """What :func:`run_case` computed (each ``None`` when its step was not asked for).

    Attributes:
        case: the case name.
        prepared: the scan on the model grid with its clean segmentation.
        explanation: the attribution maps.
        local_importance: ``case,target,roi,part,mass,mean`` (predicted RoIs, then custom RoIs).
        quality: ``case,class,dice,iou`` against the ground truth.
        metrics: ``case,method,target,metric,value`` explanation-quality metrics.
        folder: the case folder written, if any.
    """

    case: str
    prepared: PreparedCase
    explanation: Explanation | None = None
    local_importance: pd.DataFrame | None = None
    quality: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    folder: CaseFolder | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_case_inputs(image: Volume | str | os.PathLike, ground_truth: Volume | str | os.PathLike | None = None,
                     ) -> tuple[Volume, Volume | None]:
    """The scan and its ground truth (on the same grid), read from files where paths are given.

    Raises:
        Agg2ExpError: unreadable files, or a ground truth on another grid.
    """
    vol = image if isinstance(image, Volume) else load_volume(image, what="image")
    gt = ground_truth
    if gt is not None and not isinstance(gt, Volume):
        gt = load_volume(gt, what="ground-truth")
    if gt is not None and gt.shape != vol.shape:
        raise Agg2ExpError(f"ground truth shape {gt.shape} differs from the image's {vol.shape} -- they must share "
                           "a grid")
    return vol, gt


def run_case(
    model: SegmentationModel,
    image: Volume | str | os.PathLike,
    *,
    case: str | None = None,
    ground_truth: Volume | str | os.PathLike | None = None,
    explainer: Explainer | None = None,
    targets: Sequence[str | int] | str | None = None,
    local: bool = True,
    rois: Volume | str | os.PathLike | None = None,
    roi_names: Sequence[str] | Mapping[int, str] | None = None,
    evaluate: Mapping[str, Any] | None = None,
    out: CaseFolder | None = None,
    keep_maps: bool = True,
    maps_on: str = "model",
    prepared: PreparedCase | None = None,
    window_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    sw_batch_size: int | None = None,
    record: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> CaseResult:
    """Run one case: segment, then each asked-for step on the same segmentation.

    Args:
        model: the segmentation model.
        image: the scan (a volume or a NIfTI path).
        case: case name in tables (default: the image's name).
        ground_truth: labels on the image's grid: writes segmentation quality (Dice, IoU).
        explainer: the attribution method; ``None`` segments only.
        targets: classes to explain; ``None``/``"all"`` = every predicted class.
        local: compute local RoI importance of the maps (predicted RoIs).
        rois: a custom RoI label volume (any grid with an affine; label 0 = the rest, not reported),
            added to the local importance table with ``roi_names``.
        evaluate: explanation-quality settings (``methods`` and the keyword arguments of
            :func:`~napari_agg2exp.evaluation.evaluate.evaluate_case`), computed on the same segmentation.
        out: the case folder to write (prediction, labels, maps, tables, ``case.json`` last).
        keep_maps: write the attribution maps into ``out``.
        maps_on: grid of the written maps: ``"model"`` (the grid the model saw, its own affine; SPEC §4, §9)
            or ``"input"`` (resampled to the scan's grid on request). Aggregation always uses the model grid.
        prepared: a scan already prepared with this model (then ``image`` is its image and no
            segmentation runs).
        window_size, overlap, blend, sw_batch_size: sliding window (SPEC §2 defaults).
        record: extra entries for ``case.json``.
        progress, cancel: progress callback and cancel flag.

    Returns:
        A :class:`CaseResult`.

    Raises:
        Agg2ExpError: bad inputs (checked before the segmentation), no asked class predicted.
    """
    maps_on = look_up_option(maps_on, ("model", "input"), what="maps grid")
    vol, gt = read_case_inputs(prepared.image if prepared is not None else image, ground_truth)
    roi_vol = None if rois is None else (rois if isinstance(rois, Volume) else load_volume(rois, what="RoI volume"))
    name = case or vol.name or "case"
    if targets not in (None, "all"):
        for t in [t.strip() for t in targets.split(",")] if isinstance(targets, str) else targets:
            model.class_index(t)  # unknown class names fail before any work
    n_eval = len(evaluate.get("methods", ())) if evaluate else 0
    # in the order the steps run, so the progress never goes back
    weights = {"segment": 10, "explain": 80 if explainer is not None else 0, "write": 5 if explainer else 0,
               "local": 5 if explainer else 0, "evaluate": 40 * n_eval}
    total = sum(weights.values())
    starts, acc = {}, 0
    for k, w in weights.items():
        starts[k], acc = acc, acc + w

    def sub(step: str) -> SubProgress:
        return SubProgress(progress, starts[step], weights[step], total)

    if prepared is None:
        prepared = prepare_case(model, vol, window_size=window_size, overlap=overlap, blend=blend,
                                sw_batch_size=sw_batch_size, progress=sub("segment"), cancel=cancel)
    elif prepared.model is not model:
        raise Agg2ExpError("the prepared case belongs to another model -- prepare the scan with this model")
    result = CaseResult(name, prepared, folder=out)
    if out is not None:
        out.write_prediction(prepared.prediction, model.class_names)
    if explainer is not None:
        e = explainer.explain(prepared, targets, progress=sub("explain"), cancel=cancel)
        result.explanation = e
        # the model grid without its padding: aggregation happens here (SPEC §4), maps are written here by default
        crop, grid_affine = prepared.crop, prepared.crop_affine
        maps = {safe_file_name(t): e.maps_model[k][crop] for k, t in enumerate(e.targets)}
        if out is not None and keep_maps:
            if maps_on == "model":
                out.write_model_prediction(Volume(prepared.labels[crop], grid_affine))
            for i, t in enumerate(e.targets):
                check_cancel(cancel)
                grid_map = maps[safe_file_name(t)]
                out.write_attribution(t, Volume(grid_map, grid_affine) if maps_on == "model"
                                      else vol.like(e.map_on_input(t)))
                report(sub("write"), i + 1, len(e.targets), f"maps: {t}")
        if local:
            names = [safe_file_name(n) for n in model.class_names]
            table = local_importance(maps, prepared.labels[crop], names, case=name, progress=sub("local"),
                                     cancel=cancel)
            if roi_vol is not None:  # custom RoIs: their share of each model voxel
                occ = label_occupancy(roi_vol, prepared.labels[crop].shape, grid_affine)
                roi_map = dict(roi_names) if isinstance(roi_names, Mapping) else dict(enumerate(roi_names or []))
                occupancy = {str(roi_map.get(i, f"label_{i}")): w for i, w in sorted(occ.items())}
                custom = occupancy_local_importance(maps, occupancy, case=name, cancel=cancel)
                table = pd.concat([table, custom], ignore_index=True)
            result.local_importance = table
        del maps
        if out is not None:
            out.write_attribution_info({"case": name, **out.inputs_record(image, ground_truth), "model": model.source,
                                        **e.info()})
            if result.local_importance is not None:
                out.write_local_importance(result.local_importance)
    if gt is not None:
        result.quality = quality_table(prepared.prediction.array, gt.array, model.class_names, case=name)
        if out is not None:
            out.write_quality(result.quality)
    if evaluate:
        settings = dict(evaluate)
        methods = settings.pop("methods")
        metrics = settings.pop("metrics", ("faithfulness", "sensitivity", "complexity", "randomisation"))
        result.metrics = evaluate_case(prepared, None, methods, metrics, targets, name=name,
                                       progress=sub("evaluate"), cancel=cancel, **settings)
    if out is not None:
        out.write_case(name, model=model.source, **out.inputs_record(image, ground_truth, rois), **(record or {}))
    report(progress, total, total, "done")
    return result

