"""Scripted napari sessions: everything the dock widgets do, callable from Python on a viewer.

Each function takes a :class:`napari.Viewer` and does what the matching widget does, synchronously::

    import napari
    from napari_agg2exp import viewer_api as agg

    viewer = napari.Viewer()
    agg.open_sample(viewer)                              # phantom CT + labels + pathology
    agg.load_model(viewer)                               # bundled default model (or a folder)
    agg.segment(viewer, "phantom CT")                    # -> Labels layer "phantom CT prediction"
    agg.explain(viewer, "phantom CT", method="vg")       # -> one attribution Image layer per class
    table = agg.roi_importance(viewer, "phantom CT", target="heart")   # local importance (SPEC §4)
    agg.show_graph(viewer)                               # graph + distributions in a dock
    napari.run()

The widgets call the same code: every long operation exists as a ``*_job`` function returning a
:class:`Job` -- ``compute`` (pure core call, safe in a worker thread: no napari or Qt call) and
``apply`` (main thread: adds or updates layers). The synchronous functions are ``job.run()``;
the widgets run ``compute`` in a napari thread worker and ``apply`` in its ``returned`` handler, so
a cancelled or failed run never leaves a half-made layer.

Per-viewer state (the loaded model, the selected class, the local importance tables of the
session) lives in a :class:`Session`, see :func:`session`. Layers made here carry their provenance
in ``layer.metadata["agg2exp"]`` and the source voxel-to-world affine in
``layer.metadata["affine"]`` (what the NIfTI writer saves).

Only :func:`show_graph` and :func:`open_widget` need Qt (they open dock widgets).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel, report
from napari_agg2exp.data.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd

__all__ = [
    "ATTRIBUTION_COLORMAP",
    "PLUGIN",
    "WIDGETS",
    "GraphResult",
    "Job",
    "Session",
    "attribution_layers",
    "cohort",
    "cohort_job",
    "cohort_table",
    "evaluate",
    "evaluate_job",
    "explain",
    "explain_job",
    "explain_parameters",
    "finish",
    "get_image_layer",
    "go_to_roi",
    "image_layers",
    "importance_graph",
    "layer_volume",
    "load_model",
    "load_model_job",
    "load_tables",
    "metric_table",
    "open_sample",
    "open_widget",
    "prediction_layer",
    "roi_importance",
    "roi_importance_job",
    "roi_table",
    "segment",
    "segment_job",
    "select_class",
    "session",
    "show_graph",
    "warm_up",
    "write_features",
]

#: npe2 plugin name and the display names of its dock widgets (as in ``napari.yaml``).
PLUGIN = "napari-agg2exp"
WIDGETS = ("Model", "Segment", "Explain", "RoI importance", "Cohort & graph", "Evaluate")

#: Key of the provenance dict in ``layer.metadata``.
META = "agg2exp"


# --------------------------------------------------------------------------------------------------
# session state


class Session:
    """Per-viewer plugin state shared by the widgets and the scripted functions.

    Attributes:
        model: the loaded :class:`~napari_agg2exp.models.loading.SegmentationModel` (None until loaded).
        selected_class: the class inspected in the widgets (graph node clicks set it).
        tables: local importance tables of this session, by ``(image name, RoI source)``.
        cohort: the cohort table last shown in the graph dock (None until there is one).
        evaluations: explanation-quality tables by image name.
        methods: the method each image was last explained with.
        busy: title of the model run in progress (widgets refuse a second run), or None.

    Signals (psygnal): ``model_changed(model)``, ``class_selected(name)``, ``tables_changed()``,
    ``busy_changed(title or None)``.
    """

    model_changed = Signal(object)
    class_selected = Signal(str)
    tables_changed = Signal()
    busy_changed = Signal(object)

    def __init__(self) -> None:
        self.model = None
        self.selected_class: str | None = None
        self.tables: dict[tuple[str, str], pd.DataFrame] = {}
        self.cohort: pd.DataFrame | None = None
        self.evaluations: dict[str, pd.DataFrame] = {}
        self.methods: dict[str, str] = {}
        self.busy: str | None = None

    def set_model(self, model) -> None:
        self.model = model
        self.model_changed.emit(model)

    def select_class(self, name: str | None) -> None:
        if name and name != self.selected_class:
            self.selected_class = str(name)
            self.class_selected.emit(str(name))

    def set_busy(self, title: str | None) -> None:
        self.busy = title
        self.busy_changed.emit(title)

    def add_table(self, key: tuple[str, str], table: pd.DataFrame) -> None:
        self.tables[key] = table
        self.tables_changed.emit()

    def session_table(self) -> pd.DataFrame | None:
        """All prediction-RoI tables of this session, one case per image (None if there is none)."""
        import pandas as pd

        frames = [t for (_, src), t in self.tables.items() if src == "prediction"]
        return pd.concat(frames, ignore_index=True) if frames else None


# id(viewer) -> (weak reference to the viewer, its session); entries go when the viewer does
_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


def session(viewer: napari.Viewer) -> Session:
    """The plugin state of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugin widgets get a public-only proxy of the viewer
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    state = Session()
    _SESSIONS[key] = (weakref.ref(viewer, lambda _ref, k=key: _SESSIONS.pop(k, None)), state)
    return state


# --------------------------------------------------------------------------------------------------
# jobs


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
# layers


def _meta(layer) -> dict:
    md = getattr(layer, "metadata", None) or {}
    info = md.get(META)
    return info if isinstance(info, dict) else {}


def _kind(layer) -> str | None:
    return _meta(layer).get("kind")


def image_layers(viewer: napari.Viewer) -> list:
    """3D scans: Image layers that are not attribution maps made by this plugin."""
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and _kind(ly) is None and not ly.rgb]


def get_image_layer(viewer: napari.Viewer, image=None):
    """Resolve an image argument: a layer, a layer name, or None (the active scan, else the first).

    Raises:
        Agg2ExpError: no such layer, or no scan open.
    """
    from napari.layers import Image

    if image is None:
        active = viewer.layers.selection.active
        if isinstance(active, Image) and _kind(active) is None:
            return active
        scans = image_layers(viewer)
        if not scans:
            raise Agg2ExpError("no image layer is open -- open a NIfTI scan (File > Open) or the sample data first")
        return scans[0]
    if isinstance(image, str):
        if image not in viewer.layers:
            raise Agg2ExpError(f"no layer named {image!r} -- open layers: {', '.join(ly.name for ly in viewer.layers)}")
        image = viewer.layers[image]
    if not isinstance(image, Image):
        raise Agg2ExpError(f"layer {image.name!r} is a {type(image).__name__} layer -- an Image layer (the scan) is needed")
    return image


def layer_affine(layer) -> np.ndarray:
    """Voxel-to-world affine of a layer: the source file's when known, else the layer's transform."""
    from napari_agg2exp.viewer.layers import affine_from_layer_meta

    return affine_from_layer_meta({"metadata": layer.metadata, "scale": list(layer.scale),
                                   "translate": list(layer.translate), "affine": layer.affine.affine_matrix})


def layer_volume(layer) -> Volume:
    """A layer's data as a :class:`~napari_agg2exp.data.volume.Volume` (no copy for numpy data).

    Raises:
        Agg2ExpError: multiscale, RGB, or not 3D data.
    """
    if getattr(layer, "multiscale", False):
        raise Agg2ExpError(f"layer {layer.name!r} is multiscale -- open the full-resolution scan as a single volume")
    if getattr(layer, "rgb", False):
        raise Agg2ExpError(f"layer {layer.name!r} is an RGB image -- a 3D scan is needed")
    data = np.asarray(layer.data)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise Agg2ExpError(f"layer {layer.name!r} has {data.ndim}D data of shape {data.shape} -- a 3D volume is needed")
    return Volume(data, layer_affine(layer), layer.name)


def _geometry(image) -> dict[str, Any]:
    """napari keywords putting a new layer exactly on ``image``'s grid."""
    return {"scale": tuple(image.scale), "translate": tuple(image.translate), "rotate": image.rotate,
            "shear": image.shear, "affine": image.affine.affine_matrix}


def _class_colours(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    tab = colormaps["tab20"].colors
    return [(0.0, 0.0, 0.0, 0.0)] + [(*tab[(2 * (i - 1) + (i - 1) // 10) % 20], 1.0) for i in range(1, n)]


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def _labels_colormap(colours):
    from napari.utils.colormaps import DirectLabelColormap

    cmap = {None: (0.0, 0.0, 0.0, 0.0)}
    cmap.update({i: c for i, c in enumerate(colours)})
    return DirectLabelColormap(color_dict=cmap)


def _find_layer(viewer, kind: str, image_name: str, **match):
    for ly in viewer.layers:
        md = _meta(ly)
        if md.get("kind") == kind and md.get("image") == image_name and all(md.get(k) == v for k, v in match.items()):
            return ly
    return None


def prediction_layer(viewer: napari.Viewer, image=None):
    """The prediction Labels layer of an image (None if it has not been segmented)."""
    img = get_image_layer(viewer, image)
    return _find_layer(viewer, "prediction", img.name)


def _maps_of(viewer, image_name: str) -> list:
    return [ly for ly in viewer.layers if _kind(ly) == "attribution" and _meta(ly).get("image") == image_name]


def attribution_layers(viewer: napari.Viewer, image=None, method: str | None = None) -> dict[str, Any]:
    """Target class -> attribution Image layer of an image, for one method (default: the method
    the image was last explained with in this session, else the topmost map's)."""
    img = get_image_layer(viewer, image)
    maps = _maps_of(viewer, img.name)
    if not maps:
        return {}
    if method is None:
        methods = {_meta(ly).get("method") for ly in maps}
        last = session(viewer).methods.get(img.name)
        method = last if last in methods else _meta(maps[-1]).get("method")
    return {_meta(ly)["target"]: ly for ly in maps if _meta(ly).get("method") == method}


def _set_or_add(viewer, existing, layer_type: str, data, kwargs: dict):
    """Update ``existing`` in place (re-runs keep the user's layer order), else add a new layer."""
    if existing is not None and type(existing).__name__.lower() == layer_type and existing.data.shape == data.shape:
        existing.data = data
        for key in ("metadata", "features", "colormap", "contrast_limits"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def _add_prediction(viewer, image, prediction: np.ndarray, class_names: Sequence[str], source: str):
    colours = _class_colours(len(class_names))
    features = {"index": list(range(len(class_names))), "class_name": list(class_names),
                "color": [_hex(c) for c in colours]}
    kwargs = {
        "name": f"{image.name} prediction",
        "features": features,
        "colormap": _labels_colormap(colours),
        "opacity": 0.5,
        "metadata": {"affine": layer_affine(image).tolist(),
                     META: {"kind": "prediction", "image": image.name, "class_names": list(class_names),
                            "model": source}},
        **_geometry(image),
    }
    return _set_or_add(viewer, _find_layer(viewer, "prediction", image.name), "labels",
                       np.asarray(prediction, dtype=np.uint8), kwargs)


# --------------------------------------------------------------------------------------------------
# sample and model


def open_sample(viewer: napari.Viewer, seed: int = 90210) -> list:
    """Add the synthetic thorax phantom (CT, labels, pathology) to the viewer; returns the layers."""
    from napari.layers import Layer

    from napari_agg2exp.viewer.sample import make_phantom_sample

    layers = []
    for data, kwargs, layer_type in make_phantom_sample(seed):
        layers.append(viewer.add_layer(Layer.create(data, kwargs, layer_type)))
    viewer.layers.selection.active = layers[0]
    return layers


def load_model_job(viewer: napari.Viewer, model=None, *, label_names=None, device: str = "auto",
                   trust_checkpoint: bool = False) -> Job:
    """Job loading a model into the viewer's session (``model=None``: the bundled default)."""
    from napari_agg2exp.models import loading as models

    state = session(viewer)

    def compute(progress, cancel):
        report(progress, 0, 1, "loading model")
        if model is not None and not isinstance(model, (str, Path)):
            warm_up()
            return model  # already loaded
        if model is None and not models.bundled_model_path().exists():
            raise Agg2ExpError("the bundled default model is not installed -- choose a model folder, or a "
                               "TorchScript file with its label names")
        m = models.load_model(model, label_names=label_names, device=device, trust_checkpoint=trust_checkpoint)
        warm_up()
        report(progress, 1, 1, "model loaded")
        return m

    def apply(m):
        state.set_model(m)
        return m

    return Job("Load model", compute, apply)


def load_model(viewer: napari.Viewer, model=None, **kwargs):
    """Load a model (folder, ``model.json``, TorchScript with ``label_names``; None = bundled) into
    the session; returns it. Keywords as :func:`load_model_job`."""
    return load_model_job(viewer, model, **kwargs).run()


def _model_for(state: Session, model):
    """(model to use, whether to store it in the session: when it has none) -- called in the worker."""
    if model is not None:
        if isinstance(model, (str, Path)):
            from napari_agg2exp.models.loading import load_model as _load

            model = _load(model)
        return model, state.model is None
    if state.model is not None:
        return state.model, False
    return _load_default(), True


def _load_default():
    from napari_agg2exp.models import loading as models

    if not models.bundled_model_path().exists():
        raise Agg2ExpError("no model is loaded and the bundled default model is not installed -- load a model "
                           "in the Model widget (or agg.load_model(viewer, PATH)) first")
    m = models.load_model(None)
    warm_up()
    return m


def warm_up() -> None:
    """Import what torch imports lazily on the first ``torch.autograd.grad`` call (sympy, ~0.5-1 s).

    Done while a model loads, so that the first explanation does not pay for it; an import in a
    worker thread holds the GIL for long stretches (over 100 ms at a time), which would stall the GUI
    in the middle of a run.
    """
    import torch.fx.experimental.symbolic_shapes  # noqa: F401


# --------------------------------------------------------------------------------------------------
# segmentation


def segment_job(viewer: napari.Viewer, image=None, model=None, *, overlap: float = 0.25,
                sw_batch_size: int = 1) -> Job:
    """Job segmenting an image layer; ``apply`` returns the prediction Labels layer.

    Args:
        viewer: the viewer.
        image: Image layer or its name (None: the active scan).
        model: a loaded model or a path; None = the session's model, else the bundled default.
        overlap, sw_batch_size: sliding-window options.
    """
    from napari_agg2exp.models import inference

    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)

    def compute(progress, cancel):
        m, new = _model_for(state, model)
        check_cancel(cancel)
        res = inference.segment(m, vol, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress, cancel=cancel)
        return m, new, res.prediction.array

    def apply(result):
        m, new, pred = result
        if new:
            state.set_model(m)
        return _add_prediction(viewer, img, pred, m.class_names, m.source)

    return Job(f"Segment {img.name}", compute, apply)


def segment(viewer: napari.Viewer, image=None, model=None, **kwargs):
    """Segment an image layer; returns the Labels layer ``"<image> prediction"`` (same geometry as the
    image, class names and colours in its ``features``). Keywords as :func:`segment_job`."""
    return segment_job(viewer, image, model, **kwargs).run()


# --------------------------------------------------------------------------------------------------
# explanation

#: blue (negative) -> transparent -> red (positive): the scan shows through small attributions;
#: each map's own copy is also fully transparent below 1% of its ``max |a|`` (SPEC §8).
ATTRIBUTION_COLORMAP = {
    "name": "agg2exp_bwr",
    "colors": [[0.0, 0.0, 1.0, 1.0], [0.45, 0.55, 1.0, 0.75], [1.0, 1.0, 1.0, 0.0],
               [1.0, 0.5, 0.45, 0.75], [1.0, 0.0, 0.0, 1.0]],
    "controls": [0.0, 0.3, 0.5, 0.7, 1.0],
}


def _attribution_colormap(transparent_below: float = 0.0):
    """The diverging map for contrast limits ``(-vlim, vlim)``; ``|a| < transparent_below * vlim`` is
    fully transparent (SPEC §8: below 1% of ``max |a|``)."""
    from napari.utils.colormaps import Colormap

    controls = np.asarray(ATTRIBUTION_COLORMAP["controls"], float)
    colors = np.asarray(ATTRIBUTION_COLORMAP["colors"], float)
    half = min(0.5 * float(transparent_below), 0.49)
    if half <= 1e-4:
        return Colormap(colors=colors, controls=controls, name=ATTRIBUTION_COLORMAP["name"])

    def at(x):
        return np.array([np.interp(x, controls, colors[:, k]) for k in range(4)])

    eps = 1e-4
    keep = (controls < 0.5 - half - eps) | (controls > 0.5 + half + eps)
    clear = np.array([1.0, 1.0, 1.0, 0.0])
    extra = {0.5 - half - eps: at(0.5 - half), 0.5 - half: clear, 0.5 + half: clear, 0.5 + half + eps: at(0.5 + half)}
    pts = sorted([*zip(controls[keep], colors[keep]), *extra.items()], key=lambda pc: pc[0])
    return Colormap(colors=np.array([c for _, c in pts]), controls=np.array([p for p, _ in pts]),
                    name=f"{ATTRIBUTION_COLORMAP['name']}_{half:.4f}")


def explain_parameters(method: str) -> dict[str, Any]:
    """Parameters of a method shown in the Explain widget: the registry's paper defaults that
    :func:`~napari_agg2exp.attribution.explainer.explain` accepts, plus ``seed`` for sampling methods."""
    from napari_agg2exp.attribution.explainer import METHODS
    from napari_agg2exp.attribution.explainer import explain as core_explain

    accepted = set(inspect.signature(core_explain).parameters)
    params = {k: v for k, v in METHODS[method].defaults.items() if k in accepted}
    if "n_samples" in params:
        params["seed"] = 0
    return params


def explain_job(viewer: napari.Viewer, image=None, method: str = "vg", targets=None, model=None,
                *, show: str | None = None, **params) -> Job:
    """Job explaining an image layer's segmentation; ``apply`` returns the attribution layers.

    Args:
        viewer: the viewer.
        image: Image layer or name (None: the active scan).
        method: a key of :data:`~napari_agg2exp.attribution.explainer.METHODS` (``vg``, ``ig``, ...).
        targets: class names or ids; None = every class present in the prediction.
        model: as in :func:`segment_job`.
        show: class whose map is left visible (default: the session's selected class, else the
            first target); the other maps are added hidden.
        **params: method parameters (``n_steps``, ``n_samples``, ``seed``, ...), see
            :func:`~napari_agg2exp.attribution.explainer.explain`.
    """
    from napari_agg2exp.report.case_figures import display_limits
    from napari_agg2exp.attribution import explainer as api

    api._method(method)  # unknown method: Agg2ExpError now, not in the worker
    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)
    tg = list(targets) if isinstance(targets, (list, tuple)) else targets

    def compute(progress, cancel):
        m, new = _model_for(state, model)
        e = api.explain(m, vol, method, tg, progress=SubProgress(progress, 0, 95, 100), cancel=cancel, **params)
        maps, limits = {}, {}
        for i, t in enumerate(e.targets):
            check_cancel(cancel)
            report(progress, 95 + (5 * i) // max(len(e.targets), 1), 100, f"mapping {t} to the image grid")
            maps[t] = e.map_on_input(t)
            limits[t] = display_limits(maps[t])
        report(progress, 100, 100, "done")
        return m, new, e, maps, limits

    def apply(result):
        m, new, e, maps, limits = result
        if new:
            state.set_model(m)
        pred = prediction_layer(viewer, img)
        if pred is None or pred.data.shape != e.prediction.shape or not np.array_equal(pred.data, e.prediction.array):
            _add_prediction(viewer, img, e.prediction.array, e.class_names, m.source)
            yield
        visible = next((c for c in (show, state.selected_class) if c in maps), e.targets[0])
        affine = layer_affine(img).tolist()
        info = e.info()
        layers = []
        for t, a in maps.items():
            vlim, cut = limits[t]
            kwargs = {
                "name": f"{img.name} {method} {t}",
                "colormap": _attribution_colormap(cut / vlim),
                "contrast_limits": (-vlim, vlim),
                "blending": "translucent",
                "opacity": 0.9,
                "visible": t == visible,
                "metadata": {"affine": affine,
                             META: {"kind": "attribution", "image": img.name, "target": t, "method": method,
                                    "limit": vlim, "transparent_below": cut, "info": info}},
                **_geometry(img),
            }
            old = _find_layer(viewer, "attribution", img.name, target=t, method=method)
            layer = _set_or_add(viewer, old, "image", a, kwargs)
            layer.visible = t == visible
            layers.append(layer)
            yield
        state.methods[img.name] = method
        for ly in _maps_of(viewer, img.name):  # other classes' / methods' maps of this image: hidden
            if ly not in layers:
                ly.visible = False
        viewer.layers.selection.active = layers[[ly.visible for ly in layers].index(True)] if layers else img
        return layers

    return Job(f"Explain {img.name} ({api.METHODS[method].title})", compute, apply)


def explain(viewer: napari.Viewer, image=None, method: str = "vg", targets=None, model=None, **kwargs) -> list:
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
        names = _meta(layer).get("class_names") or _feature_names(layer)
        return layer, Volume(np.asarray(layer.data), layer_affine(img), layer.name), names, False
    layer = viewer.layers[rois] if isinstance(rois, str) else rois
    if not isinstance(layer, Labels):
        raise Agg2ExpError(f"RoI layer {layer.name!r} is not a Labels layer -- paint or open a label volume")
    vol = layer_volume(layer)
    return layer, Volume(vol.array.copy(), vol.affine, layer.name), _feature_names(layer), _kind(layer) != "prediction"


def _on_image_grid(labels: Volume, img_shape, img_affine) -> np.ndarray:
    """Labels resampled (nearest) onto the image grid; a volume of the image's shape is used as is."""
    from napari_agg2exp.workflows.case_folder import resample_labels

    return resample_labels(labels, Volume(np.empty(img_shape, np.uint8), img_affine))


def _feature_names(layer) -> dict[int, str]:
    """RoI names of a Labels layer from its features (``class_name`` or ``name``; by ``index``)."""
    f = layer.features
    col = next((c for c in ("class_name", "name", "roi", "label_name") if c in f.columns), None)
    if col is None or len(f) == 0:
        return {0: "background"}
    ids = f["index"].tolist() if "index" in f.columns else list(range(len(f)))
    names = {int(i): str(n) for i, n in zip(ids, f[col].tolist())}
    return names


def roi_importance_job(viewer: napari.Viewer, image=None, rois=None, *, target: str | None = None,
                       joins=None, parts: Sequence[str] = ("abs", "pos", "neg")) -> Job:
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
    from napari_agg2exp.importance.local import local_importance

    state = session(viewer)
    img = get_image_layer(viewer, image)
    maps_layers = attribution_layers(viewer, img)
    if not maps_layers:
        raise Agg2ExpError(f"{img.name!r} has no attribution maps yet -- run Explain on it first")
    layer, labels, names, custom = _roi_source(viewer, img, rois)
    maps = {t: ly.data for t, ly in maps_layers.items()}
    source = "prediction" if not custom else layer.name
    shape, affine = tuple(img.data.shape[-3:]), layer_affine(img)

    def compute(progress, cancel):
        grid = _on_image_grid(labels, shape, affine)
        return local_importance(maps, grid, names, case=img.name, parts=parts, joins=joins,
                                skip_labels=(0,) if custom else (), progress=progress, cancel=cancel)

    def apply(table):
        state.add_table((img.name, source), table)
        t = target or (state.selected_class if state.selected_class in maps else next(iter(maps)))
        write_features(layer, table, t)
        return table

    return Job(f"RoI importance of {img.name} ({source})", compute, apply)


def roi_importance(viewer: napari.Viewer, image=None, rois=None, **kwargs) -> pd.DataFrame:
    """Local RoI importance of an explained image; see :func:`roi_importance_job`."""
    return roi_importance_job(viewer, image, rois, **kwargs).run()


def roi_table(table: pd.DataFrame, target: str, measure: str = "mass", part: str = "abs") -> pd.DataFrame:
    """Rows of one target and part, columns ``roi, mass, mean``, sorted by ``measure`` (largest first)."""
    import pandas as pd

    if measure not in ("mass", "mean"):
        raise Agg2ExpError(f"measure must be 'mass' or 'mean', got {measure!r}")
    rows = table[(table["target"] == target) & (table["part"] == part)][["roi", "mass", "mean"]]
    key = pd.to_numeric(rows[measure], errors="coerce").fillna(-np.inf)
    return rows.assign(_k=key).sort_values("_k", ascending=False, kind="stable").drop(columns="_k").reset_index(drop=True)


def write_features(layer, table: pd.DataFrame, target: str) -> None:
    """Write one target's importance into a Labels layer's ``features`` (re-assigned, one row per
    label): columns ``importance_target``, ``mass_<part>`` and ``mean_<part>``."""
    import pandas as pd

    names = _feature_names(layer) if _kind(layer) != "prediction" else dict(enumerate(_meta(layer)["class_names"]))
    old = layer.features
    n = max([int(np.max(layer.data)) if np.asarray(layer.data).size else 0, len(old) - 1, *names]) + 1
    feats = pd.DataFrame({"index": np.arange(n)})
    for col in old.columns:
        if col != "index" and not col.startswith(("mass_", "mean_", "importance_")) and len(old) == n:
            feats[col] = old[col].to_numpy()
    if "class_name" not in feats.columns:
        feats["class_name"] = [names.get(i, f"label_{i}") for i in range(n)]
    feats["importance_target"] = target
    rows = table[table["target"] == target]
    by_name = {v: k for k, v in names.items()}
    for part in sorted(rows["part"].unique()):
        sub = rows[rows["part"] == part]
        for measure in ("mass", "mean"):
            col = np.full(n, np.nan)
            for roi, val in zip(sub["roi"], sub[measure]):
                i = by_name.get(roi, int(roi[6:]) if roi.startswith("label_") and roi[6:].isdigit() else None)
                if i is not None and i < n:
                    col[i] = val
            feats[f"{measure}_{part}"] = col
    layer.features = feats  # re-assigned: fires the features event


def roi_label_ids(layer, roi: str) -> list[int]:
    names = _meta(layer).get("class_names") if _kind(layer) == "prediction" else None
    names = dict(enumerate(names)) if names else _feature_names(layer)
    ids = [i for i, n in names.items() if n == roi]
    if not ids and roi.startswith("label_") and roi[6:].isdigit():
        ids = [int(roi[6:])]
    return ids


def go_to_roi(viewer: napari.Viewer, labels_layer, roi: str | int, ids: Sequence[int] | None = None) -> tuple | None:
    """Move the viewer to a RoI: per axis, the slice with the largest area of the RoI; the camera is
    centred on it. ``roi`` is a RoI name (or label id); ``ids`` overrides the label ids (joined
    RoIs). Returns the data index moved to, or None when the RoI is empty."""
    from napari_agg2exp.report.case_figures import best_slices

    if ids is None:
        ids = [int(roi)] if isinstance(roi, (int, np.integer)) else roi_label_ids(labels_layer, str(roi))
    data = np.asarray(labels_layer.data)
    mask = np.isin(data, list(ids)) if ids else np.zeros(data.shape, bool)
    if not mask.any():
        return None
    idx = best_slices(mask)
    world = np.asarray(labels_layer.data_to_world(idx), float)
    ndim = viewer.dims.ndim
    axes = list(range(ndim - 3, ndim))
    viewer.dims.set_point(axes, tuple(world[-3:]))
    # centre the view on the RoI's centroid in the shown slice
    shown = [a - (ndim - 3) for a in viewer.dims.displayed if a >= ndim - 3]
    if len(shown) == 2 and viewer.dims.ndisplay == 2:
        hidden = next(a for a in range(3) if a not in shown)
        sl = np.take(mask, idx[hidden], axis=hidden)
        cen = np.argwhere(sl).mean(axis=0)
        centre = np.array(idx, float)
        centre[[a for a in range(3) if a != hidden]] = cen
        cw = np.asarray(labels_layer.data_to_world(tuple(centre)), float)
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
        camera.center = tuple(cw[[a + ndim - 3 for a in shown]])
    return idx


def select_class(viewer: napari.Viewer, name: str, *, show_map: bool = True) -> None:
    """Select a class in every widget of the viewer; with ``show_map``, show its attribution map(s)
    and hide the other classes' maps."""
    session(viewer).select_class(name)
    if not show_map:
        return
    images = dict.fromkeys(_meta(ly).get("image") for ly in viewer.layers if _kind(ly) == "attribution")
    for im in images:
        shown = attribution_layers(viewer, im) if im in viewer.layers else {}
        if name in shown:
            for ly in _maps_of(viewer, im):
                ly.visible = ly is shown[name]


# --------------------------------------------------------------------------------------------------
# cohort and graph


def _nifti_files(folder) -> list[Path]:
    p = Path(folder)
    if not p.is_dir():
        raise Agg2ExpError(f"cohort folder not found: {p} -- give a folder of .nii/.nii.gz scans")
    files = sorted(f for f in p.iterdir() if f.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise Agg2ExpError(f"no .nii/.nii.gz file in {p}")
    return files


def cohort_job(viewer: napari.Viewer, images=None, method: str = "vg", model=None, *,
               parts: Sequence[str] = ("abs", "pos", "neg"), **params) -> Job:
    """Job running a small cohort: explain every scan and compute its local importance with the
    predicted RoIs; no layer is added. ``apply`` returns the cohort table (one case per scan).

    Args:
        images: None (every open scan), a list of Image layers / names, or a folder of NIfTI scans.
        method, model, **params: as in :func:`explain_job` (targets: all present classes).
    """
    from napari_agg2exp.importance.local import local_importance
    from napari_agg2exp.attribution import explainer as api
    from napari_agg2exp.data.volume import load_volume

    api._method(method)
    state = session(viewer)
    if isinstance(images, (str, Path)) and not (isinstance(images, str) and images in viewer.layers):
        sources: list = _nifti_files(images)
    else:
        layers = image_layers(viewer) if images is None else [get_image_layer(viewer, i) for i in images]
        if not layers:
            raise Agg2ExpError("no image layer is open -- open scans or give a folder of NIfTI scans")
        sources = [layer_volume(ly) for ly in layers]

    def compute(progress, cancel):
        import pandas as pd

        m, new = _model_for(state, model)
        frames = []
        for i, src in enumerate(sources):
            check_cancel(cancel)
            vol = load_volume(src) if isinstance(src, Path) else src
            sub = SubProgress(progress, 100 * i, 100, 100 * len(sources))
            e = api.explain(m, vol, method, None, progress=sub, cancel=cancel, **params)
            maps = {t: e.map_on_input(t) for t in e.targets}
            frames.append(local_importance(maps, e.prediction.array, e.class_names, case=vol.name or f"case{i}",
                                           parts=parts, cancel=cancel))
        return m, new, pd.concat(frames, ignore_index=True)

    def apply(result):
        m, new, table = result
        if new:
            state.set_model(m)
        state.cohort = table
        state.tables_changed.emit()
        return table

    return Job(f"Cohort of {len(sources)} scan{'s' if len(sources) != 1 else ''}", compute, apply)


def cohort(viewer: napari.Viewer, images=None, method: str = "vg", model=None, **kwargs) -> pd.DataFrame:
    """Run a small cohort (see :func:`cohort_job`); returns its local importance table."""
    return cohort_job(viewer, images, method, model, **kwargs).run()


def load_tables(viewer: napari.Viewer, paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read local importance CSV/Parquet tables (one cohort) into the session; returns the table."""
    from napari_agg2exp.importance.tables import read_local_tables

    table = read_local_tables([str(p) for p in paths])
    state = session(viewer)
    state.cohort = table
    state.tables_changed.emit()
    return table


def cohort_table(viewer: napari.Viewer) -> pd.DataFrame:
    """The cohort table to show: the last loaded / run cohort, else this session's prediction tables.

    Raises:
        Agg2ExpError: there is none yet.
    """
    state = session(viewer)
    table = state.cohort if state.cohort is not None else state.session_table()
    if table is None or len(table) == 0:
        raise Agg2ExpError("no local importance table yet -- compute RoI importance, run a cohort or load tables")
    return table


@dataclass
class GraphResult:
    """Global importance of a cohort, its graph (networkx) and the parameters used."""

    local: Any
    global_: Any
    graph: Any
    part: str
    keep_mass: float


def importance_graph(table: pd.DataFrame, part: str = "abs", keep_mass: float = 0.35,
                     groups: Mapping[str, str] | None = None) -> GraphResult:
    """Global importance (SPEC §5) and the class-to-RoI graph of a local importance table."""
    from napari_agg2exp.importance.global_importance import global_importance
    from napari_agg2exp.importance.global_importance import importance_graph as _graph

    g = global_importance(table)
    return GraphResult(table, g, _graph(g, part=part, keep_mass=keep_mass, groups=groups), part, keep_mass)


def open_widget(viewer: napari.Viewer, name: str):
    """Open (or find) one of the plugin's dock widgets by display name; returns the widget."""
    if name not in WIDGETS:
        raise Agg2ExpError(f"unknown widget {name!r}; widgets: {', '.join(WIDGETS)}")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def show_graph(viewer: napari.Viewer, tables=None, *, part: str = "abs", keep_mass: float = 0.35):
    """Show the importance graph and the distribution plots in the "Cohort & graph" dock.

    Args:
        tables: None (the session's cohort / RoI tables), a local importance DataFrame, or paths of
            local importance CSV files.
        part, keep_mass: graph options (SPEC §5).

    Returns:
        The :class:`GraphResult` drawn.
    """
    import pandas as pd

    if tables is not None:
        if isinstance(tables, pd.DataFrame):
            state = session(viewer)
            state.cohort = tables
            state.tables_changed.emit()
        else:
            load_tables(viewer, [tables] if isinstance(tables, (str, Path)) else list(tables))
    widget = open_widget(viewer, "Cohort & graph")
    return widget.draw(part=part, keep_mass=keep_mass)


# --------------------------------------------------------------------------------------------------
# explanation quality


def evaluate_job(viewer: napari.Viewer, image=None, methods: Sequence[str] | str = ("vg",),
                 metrics: Sequence[str] | str | None = None, targets=None, model=None, *,
                 n_subsets: int = 100, subset_size: int | None = None, n_noise: int = 3, threshold: float = 0.1,
                 seed: int = 0, method_params: Mapping[str, Mapping[str, Any]] | None = None) -> Job:
    """Job scoring attribution methods on an image layer (SPEC §6, :mod:`napari_agg2exp.evaluation`).

    Args:
        image, model: as in :func:`explain_job`.
        methods: attribution methods to score.
        metrics: among ``faithfulness``, ``sensitivity``, ``complexity``, ``randomisation`` (None: all).
        targets: classes (None: every class present).
        n_subsets, subset_size, n_noise, threshold, seed: metric settings (paper defaults; the subset
            size defaults to the paper's 224², clipped to a quarter of the volume).
        method_params: per-method parameters, e.g. ``{"ig": {"n_steps": 10}}``.

    ``apply`` returns the long table ``case,method,target,metric,value`` (also kept in the session).
    """
    from napari_agg2exp import evaluation as _metrics

    state = session(viewer)
    img = get_image_layer(viewer, image)
    vol = layer_volume(img)
    chosen = tuple(_metrics.METRICS) if metrics is None else metrics
    size = _metrics.PAPER_SUBSET_SIZE if subset_size is None else int(subset_size)

    def compute(progress, cancel):
        m, new = _model_for(state, model)
        table = _metrics.evaluate_case(m, vol, methods, chosen, targets, case=img.name, n_subsets=n_subsets,
                                       subset_size=size, n_noise=n_noise, threshold=threshold, seed=seed,
                                       method_params={k: dict(v) for k, v in (method_params or {}).items()},
                                       progress=progress, cancel=cancel)
        return m, new, table

    def apply(result):
        m, new, table = result
        if new:
            state.set_model(m)
        state.evaluations[img.name] = table
        return table

    return Job(f"Evaluate explanations of {img.name}", compute, apply)


def evaluate(viewer: napari.Viewer, image=None, methods: Sequence[str] | str = ("vg",), **kwargs) -> pd.DataFrame:
    """Explanation-quality metrics of an image layer; see :func:`evaluate_job`."""
    return evaluate_job(viewer, image, methods, **kwargs).run()


def metric_table(table: pd.DataFrame) -> pd.DataFrame:
    """Wide view of an evaluation table: one row per method × target, one column per metric."""
    wide = table.pivot_table(index=["method", "target"], columns="metric", values="value", aggfunc="first",
                             sort=False)
    order = [m for m in dict.fromkeys(table["metric"]) if m in wide.columns]
    return wide[order].reset_index()
