"""Jobs on an explained scan: local RoI importance (SPEC §4) and explanation quality (SPEC §6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_agg2exp.data.geometry import label_occupancy, resample_labels
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.evaluate import PAPER_METRICS, look_up_methods, look_up_metrics
from napari_agg2exp.evaluation.metrics import PAPER_SUBSET_SIZE
from napari_agg2exp.importance.local import (
    local_importance,
    occupancy_local_importance,
    parse_joins,
    roi_name_map,
)
from napari_agg2exp.importance.tables import with_join_members
from napari_agg2exp.viewer.add_layers import write_features
from napari_agg2exp.viewer.job import Job, model_for
from napari_agg2exp.viewer.layer_lookup import (
    attribution_maps,
    feature_names,
    get_image_layer,
    layer_kind,
    prediction_layer,
    provenance,
)
from napari_agg2exp.viewer.layers import layer_affine, layer_volume
from napari_agg2exp.viewer.session import session
from napari_agg2exp.workflows.case import run_case

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = ["evaluate", "evaluate_job", "roi_importance", "roi_importance_job"]


# --------------------------------------------------------------------------------------------------
# RoI importance


def _roi_source(viewer, img, rois):
    """(Labels layer, label volume, RoI names, custom?) for a RoI argument.

    The label volume is a snapshot (the user may paint on while a worker reads it); use
    :func:`_on_image_grid` in the worker to put it on the image's grid.
    """
    from napari.layers import Labels

    if rois is None or (isinstance(rois, str) and rois == "prediction"):
        layer = prediction_layer(viewer, img)
        if layer is None:
            raise Agg2ExpError(f"{img.name!r} has no prediction yet -- segment or explain it first")
        names = provenance(layer).get("class_names") or feature_names(layer)
        return layer, Volume(np.asarray(layer.data), layer_affine(img), layer.name), names, False
    layer = viewer.layers[rois] if isinstance(rois, str) else rois
    if not isinstance(layer, Labels):
        raise Agg2ExpError(f"RoI layer {layer.name!r} is not a Labels layer -- paint or open a label volume")
    vol = layer_volume(layer)
    custom = layer_kind(layer) != "prediction"
    return layer, Volume(vol.array.copy(), vol.affine, layer.name), feature_names(layer), custom


def _on_image_grid(labels: Volume, img_shape, img_affine) -> np.ndarray:
    """Labels resampled (nearest) onto the image grid; a volume of the image's shape is used as is."""
    return resample_labels(labels, Volume(np.empty(img_shape, np.uint8), img_affine))


def roi_importance_job(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                       rois: napari.layers.Labels | str | None = None, *, target: str | None = None,
                       joins: Mapping[str, Sequence[str]] | None = None,
                       parts: Sequence[str] = ("abs", "pos", "neg")) -> Job:
    """Job computing local RoI importance (SPEC §4) of an explained image.

    Args:
        viewer: the viewer.
        image: the explained Image layer or name (None: the active scan).
        rois: None / ``"prediction"`` (the image's prediction), or any Labels layer (or its name),
            e.g. one the user paints; a layer not on the image's grid is resampled (nearest).
        target: class whose importance is written into the RoI layer's ``features`` (default: the
            selected class, else the first explained one).
        joins: joined RoIs, e.g. ``{"lung": [...lobes...]}``.
        parts: processings among ``abs``, ``pos``, ``neg``.

    ``apply`` returns the long table ``case,target,roi,part,mass,mean`` (case = image name), stores
    it in the session and writes the selected target's rows into the RoI layer's ``features``.
    """
    state = session(viewer)
    img = get_image_layer(viewer, image)
    maps = attribution_maps(viewer, img)
    if not maps:
        raise Agg2ExpError(f"{img.name!r} has no attribution maps yet -- run Explain on it first")
    layer, labels, names, custom = _roi_source(viewer, img, rois)
    source = "prediction" if not custom else layer.name
    shape, affine = tuple(img.data.shape[-3:]), layer_affine(img)
    e, prepared = state.explanations.get(img.name), state.prepared.get(img.name)
    on_model_grid = e is not None and prepared is not None and set(maps) <= set(e.targets)

    def compute(progress, cancel):
        if on_model_grid:  # aggregate on the grid the model saw (SPEC §4): masses do not depend on the spacing
            crop = prepared.crop
            model_maps = {t: e.map_model(t)[crop] for t in maps}
            if not custom:
                return local_importance(model_maps, prepared.labels[crop], names, case=img.name, parts=parts,
                                        joins=joins, progress=progress, cancel=cancel)
            ids = [int(i) for i in np.unique(labels.array) if i != 0]
            occ = label_occupancy(labels, prepared.labels[crop].shape, prepared.crop_affine, ids)
            by_id = roi_name_map(names, ids)
            return occupancy_local_importance(model_maps, {by_id[i]: occ[i] for i in ids}, case=img.name,
                                              parts=parts, joins=joins, progress=progress, cancel=cancel)
        grid = _on_image_grid(labels, shape, affine)  # maps added by hand: on the image's grid
        return local_importance(maps, grid, names, case=img.name, parts=parts, joins=joins,
                                skip_labels=(0,) if custom else (), progress=progress, cancel=cancel)

    def apply(table):
        if joins:  # record the join definitions with the table (the graph must not draw a join into its members)
            table = with_join_members(table, parse_joins(joins))
        state.add_table((img.name, source), table)
        t = target or (state.selected_class if state.selected_class in maps else next(iter(maps)))
        write_features(layer, table, t)
        return table

    return Job(f"RoI importance of {img.name} ({source})", compute, apply)


def roi_importance(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                   rois: napari.layers.Labels | str | None = None, **kwargs: Any) -> pd.DataFrame:
    """Local RoI importance of an explained image; see :func:`roi_importance_job`."""
    return roi_importance_job(viewer, image, rois, **kwargs).run()


# --------------------------------------------------------------------------------------------------
# explanation quality


def evaluate_job(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                 methods: Sequence[str] | str = ("vg",), metrics: Sequence[str] | str | None = None,
                 targets: Sequence[str | int] | str | None = None,
                 model: SegmentationModel | str | Path | None = None, *,
                 n_subsets: int = 100, subset_size: int | None = None, n_noise: int = 3, threshold: float = 0.1,
                 seed: int = 0, method_params: Mapping[str, Mapping[str, Any]] | None = None) -> Job:
    """Job scoring attribution methods on an image layer (SPEC §6, :mod:`napari_agg2exp.evaluation`).

    Args:
        image, model: as in :func:`explain_job`.
        methods: attribution methods to score.
        metrics: names of :data:`~napari_agg2exp.evaluation.evaluate.METRICS` (None: the paper's four, SPEC §6).
        targets: classes (None: every class present).
        n_subsets, subset_size, n_noise, threshold, seed: metric settings (paper defaults; the subset
            size defaults to the paper's 224², clipped to a quarter of the volume).
        method_params: per-method parameters, e.g. ``{"ig": {"n_steps": 10}}``.

    ``apply`` returns the long table ``case,method,target,metric,value`` (also kept in the session).
    """
    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)
    settings = {"methods": look_up_methods(methods), "metrics": look_up_metrics(PAPER_METRICS if metrics is None
                                                                                else metrics),
                "n_subsets": n_subsets, "subset_size": PAPER_SUBSET_SIZE if subset_size is None else int(subset_size),
                "n_noise": n_noise, "threshold": threshold, "seed": seed,
                "method_params": {k: dict(v) for k, v in (method_params or {}).items()}}

    def compute(progress, cancel):
        m, new = model_for(state, model)
        res = run_case(m, vol, case=img.name, targets=targets, evaluate=settings,
                       prepared=state.prepared_for(img.name, m, vol), progress=progress, cancel=cancel)
        return m, new, res.prepared, res.metrics

    def apply(result):
        m, new, prepared, table = result
        if new:
            state.set_model(m)
        state.prepared[img.name] = prepared
        state.evaluations[img.name] = table
        return table

    return Job(f"Evaluate explanations of {img.name}", compute, apply)


def evaluate(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
             methods: Sequence[str] | str = ("vg",), **kwargs: Any) -> pd.DataFrame:
    """Explanation-quality metrics of an image layer; see :func:`evaluate_job`."""
    return evaluate_job(viewer, image, methods, **kwargs).run()
