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

import numpy as np
import pandas as pd

from napari_agg2exp.attribution.explainer import Explainer, Explanation
from napari_agg2exp.attribution.region import RegionLike
from napari_agg2exp.data.dice import quality_table
from napari_agg2exp.data.geometry import label_occupancy
from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.data.preprocessing import to_input_grid
from napari_agg2exp.data.volume import Volume, load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.evaluate import evaluate_case
from napari_agg2exp.files import safe_file_name
from napari_agg2exp.importance.local import LocalImportance, OccupancyImportance
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import PreparedCase, prepare_case
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel, report
from napari_agg2exp.workflows.case_folder import ATTRIBUTIONS, CaseFolder

__all__ = ["CaseResult", "run_case", "read_case_inputs"]


@dataclass
class CaseResult:
    """What :func:`run_case` computed (each ``None`` when its step was not asked for).

    Attributes:
        case: the case name.
        prepared: the scan on the model grid with its clean segmentation.
        explanation: the attribution maps (in memory; streamed to ``folder`` when one is written, then
            :meth:`~napari_agg2exp.attribution.explainer.Explanation.map_model` reads them back).
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
    if gt is not None:
        as_label_array(gt.array, what="ground truth")  # the one label check (whole numbers >= 0, finite)
    return vol, gt


def run_case(
    model: SegmentationModel,
    image: Volume | str | os.PathLike,
    *,
    case: str | None = None,
    ground_truth: Volume | str | os.PathLike | None = None,
    explainer: Explainer | None = None,
    targets: Sequence[str | int] | str | None = None,
    target_region: RegionLike | None = None,
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
        target_region: explain each class's score over its prediction inside this region only (a label volume
            on the input grid or any grid with an affine, nonzero voxels; a path, ``FILE:ID`` = one label id).
        local: compute local RoI importance of the maps (predicted RoIs).
        rois: a custom RoI label volume (any grid with an affine; label 0 = the rest, not reported),
            added to the local importance table with ``roi_names``.
        evaluate: explanation-quality settings (``methods`` and the keyword arguments of
            :func:`~napari_agg2exp.evaluation.evaluate.evaluate_case`), computed on the same segmentation.
        out: the case folder to write (prediction, labels, maps, tables, ``case.json`` last). With a folder the
            maps are streamed: each is written and aggregated as soon as its class pass is done, so memory holds
            one pass of maps (:meth:`~napari_agg2exp.attribution.explainer.Explainer.classes_per_pass`), not all.
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
    if gt is not None:
        as_label_array(gt.array, model.num_classes, what="ground truth")  # ids of this model's classes
    if roi_vol is not None:
        as_label_array(roi_vol.array, what="RoI volume")
    if targets not in (None, "all"):
        for t in [t.strip() for t in targets.split(",")] if isinstance(targets, str) else targets:
            model.class_index(t)  # unknown class names fail before any work
    n_eval = len(evaluate.get("methods", ())) if evaluate else 0
    # in the order the steps run, so the progress never goes back
    weights = {"segment": 10, "explain": 90 if explainer is not None else 0, "evaluate": 40 * n_eval}
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
        e, result.local_importance = _explain_case(prepared, vol, explainer, targets, target_region, name, local,
                                                   roi_vol, roi_names, out if keep_maps else None, out is not None,
                                                   maps_on, sub("explain"), cancel)
        result.explanation = e
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



def _explain_case(prepared: PreparedCase, vol: Volume, explainer: Explainer, targets, target_region, name: str,
                  local: bool, roi_vol: Volume | None, roi_names, out: CaseFolder | None, stream: bool, maps_on: str,
                  progress: ProgressCallback | None, cancel: CancelFlag | None,
                  ) -> tuple[Explanation, pd.DataFrame | None]:
    """Explain, then write each map into ``out`` and aggregate it into local importance as it comes: streamed
    (``stream``: no map is kept past its class pass) or from the maps held in memory."""
    crop, grid_affine = prepared.crop, prepared.crop_affine
    labels = prepared.labels[crop]
    agg = occ_agg = None
    if local:
        agg = LocalImportance(labels, [safe_file_name(n) for n in prepared.class_names], case=name)
        if roi_vol is not None:  # custom RoIs: their share of each model voxel
            occ = label_occupancy(roi_vol, labels.shape, grid_affine)
            roi_map = dict(roi_names) if isinstance(roi_names, Mapping) else dict(enumerate(roi_names or []))
            occ_agg = OccupancyImportance({str(roi_map.get(i, f"label_{i}")): w for i, w in sorted(occ.items())},
                                          case=name)
    if out is not None and maps_on == "model":
        out.write_model_prediction(Volume(labels, grid_affine))

    def handle(target: str, _class_id: int, map_model) -> None:
        grid_map = map_model[crop]
        if out is not None:
            out.write_attribution(target, Volume(grid_map, grid_affine) if maps_on == "model"
                                  else vol.like(to_input_grid(map_model, prepared.pre).astype("float32")))
        if agg is not None:
            agg.add(safe_file_name(target), grid_map)
        if occ_agg is not None:
            occ_agg.add(safe_file_name(target), grid_map)

    if stream:
        e = explainer.explain(prepared, targets, target_region=target_region, sink=handle, progress=progress,
                              cancel=cancel)
        if out is not None:
            e.map_reader = _folder_reader(out, prepared, maps_on)
    else:
        e = explainer.explain(prepared, targets, target_region=target_region, progress=SubProgress(progress, 0, 9, 10),
                              cancel=cancel)
        for k, t in enumerate(e.targets):
            check_cancel(cancel)
            handle(t, e.target_ids[k], e.maps_model[k])
            report(progress, 9 * len(e.targets) + k + 1, 10 * len(e.targets), f"aggregated {t}")
    table = None
    if agg is not None:
        table = agg.table() if occ_agg is None else pd.concat([agg.table(), occ_agg.table()], ignore_index=True)
    return e, table


def _folder_reader(out: CaseFolder, prepared: PreparedCase, maps_on: str):
    """Reads a streamed map back from the case folder (where it was written, or where it was moved to): on the
    grid it was written on, the model grid padded back to the whole grid."""
    def read(target: str, grid: str):
        if grid != maps_on:
            return None
        folder = out if (out.path / ATTRIBUTIONS).is_dir() else CaseFolder(out.final)
        arr = folder.attribution(safe_file_name(target))
        if grid == "input":
            return arr
        full = np.zeros(prepared.labels.shape, np.float32)
        full[prepared.crop] = arr
        return full
    return read
