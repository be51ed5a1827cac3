"""Long operations on one scan as :class:`Job` objects, and their blocking forms.

Every long operation exists as a ``*_job`` function returning a :class:`Job` -- ``compute`` (pure
core call, safe in a worker thread: no napari or Qt call) and ``apply`` (main thread: adds or
updates layers). The synchronous functions (:func:`load_model`, :func:`segment`, :func:`explain`,
:func:`roi_importance`, :func:`evaluate`) are ``job.run()``; the widgets run ``compute`` in a
napari thread worker and ``apply`` in its ``returned`` handler, so a cancelled or failed run never
leaves a half-made layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# torch imports sympy on the first autograd call (~0.5-1 s, holding the GIL): import it with this module,
# before any worker thread runs, so the first explanation does not stall the GUI mid-run
import torch.fx.experimental.symbolic_shapes  # noqa: F401

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.attribution.methods import look_up_method
from napari_agg2exp.data.geometry import label_occupancy, resample_labels
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.evaluate import PAPER_METRICS, look_up_methods, look_up_metrics
from napari_agg2exp.evaluation.metrics import PAPER_SUBSET_SIZE
from napari_agg2exp.importance.local import local_importance, occupancy_local_importance, parse_joins, roi_name_map
from napari_agg2exp.importance.tables import with_join_members
from napari_agg2exp.models import loading as models
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel, report
from napari_agg2exp.report.case_figures import display_limits
from napari_agg2exp.viewer.add_layers import add_attribution, add_prediction, write_features
from napari_agg2exp.viewer.layer_lookup import (
    all_attribution_layers,
    attribution_layers,
    feature_names,
    get_image_layer,
    layer_kind,
    prediction_layer,
    provenance,
)
from napari_agg2exp.viewer.layers import layer_affine, layer_volume
from napari_agg2exp.viewer.session import Session, session
from napari_agg2exp.workflows.case import run_case

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = [
    "Job",
    "evaluate",
    "evaluate_job",
    "explain",
    "explain_job",
    "explain_parameters",
    "finish",
    "load_model",
    "load_model_job",
    "model_for",
    "roi_importance",
    "roi_importance_job",
    "segment",
    "segment_job",
]


@dataclass
class Job:
    """A long operation split for threading.

    Attributes:
        title: shown in the activity dock and in notifications.
        compute: ``compute(progress, cancel) -> result``; calls the core only (any thread).
        apply: ``apply(result) -> value``; updates the viewer (main thread). It may be a generator
            function that yields between layer additions (napari needs ~0.1 s to add a layer): the
            widgets then run one step per event-loop turn, so the viewer stays responsive; the
            generator's return value is the value.
    """

    title: str
    compute: Callable[[ProgressCallback | None, CancelFlag | None], Any]
    apply: Callable[[Any], Any]

    def run(self, progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Any:
        """Run both steps in the calling thread; returns what ``apply`` returns."""
        return finish(self.apply(self.compute(progress, cancel)))


def finish(value: Any) -> Any:
    """Run a stepwise ``apply`` (a generator) to its end and return its value; other values as they are."""
    if not inspect.isgenerator(value):
        return value
    while True:
        try:
            next(value)
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------------------------------
# model


def load_model_job(viewer: napari.Viewer, model: SegmentationModel | str | Path | None = None, *,
                   label_names: str | Path | list[str] | None = None, device: str = "auto",
                   trust_checkpoint: bool = False) -> Job:
    """Job loading a model into the viewer's session (``model=None``: the bundled default)."""
    state = session(viewer)

    def compute(progress, cancel):
        report(progress, 0, 1, "loading model")
        if model is not None and not isinstance(model, (str, Path)):
            return model  # already loaded
        if model is None and not models.bundled_model_path().exists():
            raise Agg2ExpError("the bundled default model is not installed -- choose a model folder, or a "
                               "TorchScript file with its label names")
        m = models.load_model(model, label_names=label_names, device=device, trust_checkpoint=trust_checkpoint)
        report(progress, 1, 1, "model loaded")
        return m

    def apply(m):
        state.set_model(m)
        return m

    return Job("Load model", compute, apply)


def load_model(viewer: napari.Viewer, model: SegmentationModel | str | Path | None = None,
               **kwargs: Any) -> SegmentationModel:
    """Load a model (folder, ``model.json``, TorchScript with ``label_names``; None = bundled) into
    the session; returns it. Keywords as :func:`load_model_job`."""
    return load_model_job(viewer, model, **kwargs).run()


def model_for(state: Session, model: SegmentationModel | str | Path | None) -> tuple[SegmentationModel, bool]:
    """(model to use, whether to store it in the session: when it has none) -- called in the worker."""
    if model is not None:
        if isinstance(model, (str, Path)):
            model = models.load_model(model)
        return model, state.model is None
    if state.model is not None:
        return state.model, False
    return _load_default(), True


def _load_default():
    if not models.bundled_model_path().exists():
        raise Agg2ExpError("no model is loaded and the bundled default model is not installed -- load a model "
                           "in the Model widget (or agg.load_model(viewer, PATH)) first")
    return models.load_model(None)


# --------------------------------------------------------------------------------------------------
# segmentation


def segment_job(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
                model: SegmentationModel | str | Path | None = None, *, overlap: float | None = None,
                sw_batch_size: int = 1) -> Job:
    """Job segmenting an image layer; ``apply`` returns the prediction Labels layer.

    Args:
        viewer: the viewer.
        image: Image layer or its name (None: the active scan).
        model: a loaded model or a path; None = the session's model, else the bundled default.
        overlap, sw_batch_size: sliding-window options.
    """
    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)

    def compute(progress, cancel):
        m, new = model_for(state, model)
        check_cancel(cancel)
        res = run_case(m, vol, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress, cancel=cancel)
        return m, new, res.prepared

    def apply(result):
        m, new, prepared = result
        if new:
            state.set_model(m)
        state.prepared[img.name] = prepared
        return add_prediction(viewer, img, prepared.prediction.array, m.class_names, m.source)

    return Job(f"Segment {img.name}", compute, apply)


def segment(viewer: napari.Viewer, image: napari.layers.Image | str | None = None,
            model: SegmentationModel | str | Path | None = None, **kwargs: Any) -> napari.layers.Labels:
    """Segment an image layer; returns the Labels layer ``"<image> prediction"`` (same geometry as the
    image, class names and colours in its ``features``). Keywords as :func:`segment_job`."""
    return segment_job(viewer, image, model, **kwargs).run()


# --------------------------------------------------------------------------------------------------
# explanation


def explain_parameters(method: str) -> dict[str, Any]:
    """Parameters of a method shown in the Explain widget: the registry's numeric parameters with
    their paper defaults (the batch size is the session's business, not the user's)."""
    return {p.name: p.default for p in look_up_method(method).parameters
            if p.kind in (int, float) and p.default is not None and p.name != "internal_batch_size"}


def explain_job(viewer: napari.Viewer, image: napari.layers.Image | str | None = None, method: str = "vg",
                targets: Sequence[str | int] | str | None = None, model: SegmentationModel | str | Path | None = None,
                *, show: str | None = None, **params: Any) -> Job:
    """Job explaining an image layer's segmentation; ``apply`` returns the attribution layers.

    Args:
        viewer: the viewer.
        image: Image layer or name (None: the active scan).
        method: a key of :data:`~napari_agg2exp.attribution.explainer.METHODS` (``vg``, ``ig``, ...).
        targets: class names or ids; None = every class present in the prediction.
        model: as in :func:`segment_job`.
        show: class whose map is left visible (default: the session's selected class, else the
            first target); the other maps are added hidden.
        **params: method parameters (``n_steps``, ``nt_samples``, ``n_samples``, ``seed``, ...), see
            :class:`~napari_agg2exp.attribution.Explainer`.
    """
    explainer = Explainer(method, **params)  # unknown method or parameter: Agg2ExpError now, not in the worker
    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)
    tg = list(targets) if isinstance(targets, (list, tuple)) else targets

    def compute(progress, cancel):
        m, new = model_for(state, model)
        prepared = state.prepared_for(img.name, m, vol)
        res = run_case(m, vol, explainer=explainer, targets=tg, local=False, prepared=prepared,
                       progress=SubProgress(progress, 0, 95, 100), cancel=cancel)
        e = res.explanation
        maps, limits = {}, {}
        for i, t in enumerate(e.targets):
            check_cancel(cancel)
            report(progress, 95 + (5 * i) // max(len(e.targets), 1), 100, f"mapping {t} to the image grid")
            maps[t] = e.map_on_input(t)
            limits[t] = display_limits(maps[t])
        report(progress, 100, 100, "done")
        return m, new, res.prepared, e, maps, limits

    def apply(result):
        m, new, prepared, e, maps, limits = result
        if new:
            state.set_model(m)
        state.prepared[img.name] = prepared
        state.explanations[img.name] = e
        pred = prediction_layer(viewer, img)
        if pred is None or pred.data.shape != e.prediction.shape or not np.array_equal(pred.data, e.prediction.array):
            add_prediction(viewer, img, e.prediction.array, e.class_names, m.source)
            yield
        visible = next((c for c in (show, state.selected_class) if c in maps), e.targets[0])
        info = e.info()
        layers = []
        for t, a in maps.items():
            vlim, cut = limits[t]
            layers.append(add_attribution(viewer, img, method, t, a, vlim, cut, info, visible=t == visible))
            yield
        state.methods[img.name] = method
        # other classes' / methods' maps of this image: hidden
        for ly in all_attribution_layers(viewer, img.name):
            if ly not in layers:
                ly.visible = False
        viewer.layers.selection.active = layers[[ly.visible for ly in layers].index(True)] if layers else img
        return layers

    return Job(f"Explain {img.name} ({explainer.method.title})", compute, apply)


def explain(viewer: napari.Viewer, image: napari.layers.Image | str | None = None, method: str = "vg",
            targets: Sequence[str | int] | str | None = None, model: SegmentationModel | str | Path | None = None,
            **kwargs: Any) -> list:
    """Explain an image layer's segmentation: one attribution Image layer per class (diverging
    colormap, symmetric contrast limits at the 95th percentile of ``|a|``, blended over the scan),
    plus the prediction layer if missing. Arguments as :func:`explain_job`."""
    return explain_job(viewer, image, method, targets, model, **kwargs).run()


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
    maps_layers = attribution_layers(viewer, img)
    if not maps_layers:
        raise Agg2ExpError(f"{img.name!r} has no attribution maps yet -- run Explain on it first")
    layer, labels, names, custom = _roi_source(viewer, img, rois)
    maps = {t: ly.data for t, ly in maps_layers.items()}
    source = "prediction" if not custom else layer.name
    shape, affine = tuple(img.data.shape[-3:]), layer_affine(img)
    e, prepared = state.explanations.get(img.name), state.prepared.get(img.name)
    on_model_grid = e is not None and prepared is not None and set(maps) <= set(e.targets)

    def compute(progress, cancel):
        if on_model_grid:  # aggregate on the grid the model saw (SPEC §4): masses do not depend on the spacing
            crop = prepared.crop
            model_maps = {t: e.maps_model[e.targets.index(t)][crop] for t in maps}
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
