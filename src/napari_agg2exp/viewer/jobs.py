"""Long operations on one scan as :class:`Job` objects, and their blocking forms.

Every long operation exists as a ``*_job`` function returning a :class:`Job` -- ``compute`` (pure
core call, safe in a worker thread: no napari or Qt call) and ``apply`` (main thread: adds or
updates layers). The synchronous functions (:func:`load_model`, :func:`segment`, :func:`explain`,
:func:`roi_importance`, :func:`evaluate`) are ``job.run()``; the widgets run ``compute`` in a
napari thread worker and ``apply`` in its ``returned`` handler, so a cancelled or failed run never
leaves a half-made layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# torch imports sympy on the first autograd call (~0.5-1 s, holding the GIL): import it with this module,
# before any worker thread runs, so the first explanation does not stall the GUI mid-run
import torch.fx.experimental.symbolic_shapes  # noqa: F401

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.attribution.methods import look_up_method
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models import loading as models
from napari_agg2exp.progress import SubProgress, check_cancel, report
from napari_agg2exp.report.case_figures import display_limits
from napari_agg2exp.viewer.add_layers import (
    add_attribution,
    add_prediction,
    attribution_kwargs,
    prediction_kwargs,
)
from napari_agg2exp.viewer.display import (
    default_targets,
    radiology_view,
    remember_targets,
    remembered_targets,
    show_class,
)
from napari_agg2exp.viewer.job import InputWatch, Job, finish, model_for, notify_gone
from napari_agg2exp.viewer.layer_lookup import (
    all_attribution_layers,
    get_image_layer,
    prediction_layer,
)
from napari_agg2exp.viewer.layers import layer_volume
from napari_agg2exp.viewer.roi_jobs import (
    evaluate,
    evaluate_job,
    roi_importance,
    roi_importance_job,
)
from napari_agg2exp.viewer.session import session
from napari_agg2exp.workflows.case import run_case

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = [
    "InputWatch",
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
    title = f"Segment {img.name}"

    def compute(progress, cancel):
        flag = watch.flag(cancel)
        m, new = model_for(state, model)
        check_cancel(flag)
        res = run_case(m, vol, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress, cancel=flag)
        return m, new, res.prepared, prediction_kwargs(img, m.class_names, m.source)

    def apply(result):
        m, new, prepared, kwargs = result
        if not watch.still_there():
            notify_gone(title)
            return None
        if new:
            state.set_model(m)
        state.prepared[img.name] = prepared
        layer = add_prediction(viewer, img, prepared.prediction.array, m.class_names, m.source, kwargs)
        radiology_view(viewer)
        return layer

    watch = InputWatch(viewer, img)
    return Job(title, compute, apply)


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
                *, show: str | None = None, target_region: Any = None, **params: Any) -> Job:
    """Job explaining an image layer's segmentation; ``apply`` returns the run's attribution layer.

    Args:
        viewer: the viewer.
        image: Image layer or name (None: the active scan).
        method: a key of :data:`~napari_agg2exp.attribution.explainer.METHODS` (``vg``, ``ig``, ...).
        targets: class names or ids (remembered for the next runs of this viewer); ``"all"`` = every
            class present in the prediction; None = the classes of the last explicit choice, else the
            foreground classes present (:func:`~napari_agg2exp.viewer.display.default_targets`).
        model: as in :func:`segment_job`.
        show: class shown first (default: the session's selected class, else the first target).
        target_region: explain each class's score over this region only (a Labels layer, or what
            :func:`~napari_agg2exp.workflows.case.run_case` takes: a volume, a NIfTI path, ``FILE:ID``).
        **params: method parameters (``n_steps``, ``nt_samples``, ``n_samples``, ``seed``, ...), see
            :class:`~napari_agg2exp.attribution.Explainer`.

    Everything but the one ``add_layer`` call happens in ``compute`` (worker thread): the maps on the
    image grid stacked along a class axis ``(K, X, Y, Z)``, their limits and colormaps, the layer
    keywords. Deleting the image layer mid-run cancels the run (no layer is added).
    """
    explainer = Explainer(method, **params)  # unknown method or parameter: Agg2ExpError now, not in the worker
    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)
    explicit = list(targets) if isinstance(targets, (list, tuple)) else targets
    if isinstance(explicit, str) and explicit != "all":
        explicit = [t.strip() for t in explicit.split(",") if t.strip()]
    remembered = remembered_targets(viewer)
    region = _region_volume(target_region)
    extra = {} if region is None else {"target_region": region}
    watch = InputWatch(viewer, img)
    title = f"Explain {img.name} ({explainer.method.title})"

    def compute(progress, cancel):
        flag = watch.flag(cancel)
        m, new = model_for(state, model)
        prepared = state.prepared_for(img.name, m, vol)
        tg = explicit
        if tg is None:
            if prepared is None:
                prepared = run_case(m, vol, progress=SubProgress(progress, 0, 10, 100), cancel=flag).prepared
            tg = default_targets(m.class_names, prepared.present, remembered)
        res = run_case(m, vol, explainer=explainer, targets=tg, local=False, prepared=prepared,
                       progress=SubProgress(progress, 10, 85, 100), cancel=flag, **extra)
        e = res.explanation
        data = np.empty((len(e.targets), *vol.shape), np.float32)
        limits, cuts = [], []
        for k, t in enumerate(e.targets):
            check_cancel(flag)
            report(progress, 95 + (5 * k) // max(len(e.targets), 1), 100, f"mapping {t} to the image grid")
            data[k] = e.map_on_input(t)
            vlim, cut = display_limits(data[k])
            limits.append(vlim)
            cuts.append(cut)
        first = next((c for c in (show, state.selected_class) if c in e.targets), e.targets[0])
        kwargs = attribution_kwargs(img, method, e.targets, limits, cuts, e.info(), shown=e.targets.index(first))
        pred = prediction_kwargs(img, e.class_names, m.source)
        report(progress, 100, 100, "done")
        return m, new, res.prepared, e, data, kwargs, pred, first

    def apply(result):
        m, new, prepared, e, data, kwargs, pred_kwargs, first = result
        if not watch.still_there():
            notify_gone(title)
            return None
        if isinstance(explicit, list):
            remember_targets(viewer, explicit)
        if new:
            state.set_model(m)
        state.prepared[img.name] = prepared
        state.explanations[img.name] = e
        pred = prediction_layer(viewer, img)
        if pred is None or pred.data.shape != e.prediction.shape or not np.array_equal(pred.data, e.prediction.array):
            add_prediction(viewer, img, e.prediction.array, e.class_names, m.source, pred_kwargs)
            yield
        state.methods[img.name] = method
        layer = add_attribution(viewer, img, data, kwargs)
        yield
        for ly in all_attribution_layers(viewer, img.name):  # other methods' runs of this image: hidden
            if ly.visible != (ly is layer):
                ly.visible = ly is layer
        radiology_view(viewer)
        show_class(viewer, layer, first)
        state.select_class(first)
        viewer.layers.selection.active = layer
        return layer

    return Job(title, compute, apply)


def _region_volume(region: Any) -> Any:
    """A target region argument as ``run_case`` takes it: a napari Labels layer becomes a snapshot
    :class:`~napari_agg2exp.data.volume.Volume` on its grid; volumes, arrays and paths pass as they are."""
    if hasattr(region, "data") and hasattr(region, "scale") and hasattr(region, "metadata"):
        vol = layer_volume(region)
        return Volume(np.array(vol.array), vol.affine, vol.name)
    return region


def explain(viewer: napari.Viewer, image: napari.layers.Image | str | None = None, method: str = "vg",
            targets: Sequence[str | int] | str | None = None, model: SegmentationModel | str | Path | None = None,
            **kwargs: Any) -> napari.layers.Image:
    """Explain an image layer's segmentation: one attribution Image layer for the run, data
    ``(K, X, Y, Z)`` with a class axis (the class names in its provenance ``targets`` and on the class
    slider), diverging colormap with symmetric limits at the 95th percentile of the shown class's
    ``|a|``, blended over the scan; plus the prediction layer if missing. Arguments as :func:`explain_job`."""
    return explain_job(viewer, image, method, targets, model, **kwargs).run()
