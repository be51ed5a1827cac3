"""How results are shown: class colours and colormaps, the radiology defaults (axial view, mm, CT
windows), the attribution layer's class axis, the selected class, moving the view to a RoI, and the
importance / metric tables as the widgets list them."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.report.case_figures import best_slices
from napari_agg2exp.viewer.layer_lookup import (
    all_attribution_layers,
    attribution_layer,
    layer_kind,
    map_targets,
    provenance,
    roi_label_ids,
)
from napari_agg2exp.viewer.session import session

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.utils.colormaps import Colormap, DirectLabelColormap

__all__ = [
    "ATTRIBUTION_COLORMAP",
    "AXIS_LABELS",
    "CT_WINDOWS",
    "apply_ct_window",
    "attribution_colormap",
    "class_colours",
    "default_contrast",
    "default_targets",
    "go_to_roi",
    "hex_colour",
    "labels_colormap",
    "looks_like_ct",
    "metric_table",
    "radiology_view",
    "remember_targets",
    "remembered_targets",
    "roi_table",
    "schedule_radiology_view",
    "select_class",
    "show_class",
]

#: blue (negative) -> transparent -> red (positive): the scan shows through small attributions;
#: each map's own copy is also fully transparent below 1% of its ``max |a|`` (SPEC §8).
ATTRIBUTION_COLORMAP = {
    "name": "agg2exp_bwr",
    "colors": [[0.0, 0.0, 1.0, 1.0], [0.45, 0.55, 1.0, 0.75], [1.0, 1.0, 1.0, 0.0],
               [1.0, 0.5, 0.45, 0.75], [1.0, 0.0, 0.0, 1.0]],
    "controls": [0.0, 0.3, 0.5, 0.7, 1.0],
}

#: CT windows as (width, level) in Hounsfield units; contrast limits = level -/+ width / 2.
CT_WINDOWS = {"lung": (1500.0, -600.0), "mediastinum": (350.0, 50.0), "bone": (1800.0, 400.0)}

#: Labels of the world axes (RAS+ mm): the direction each coordinate grows in.
AXIS_LABELS = ("L→R x", "P→A y", "I→S z")

def class_colours(n: int) -> list[tuple[float, float, float, float]]:
    """RGBA colours of ``n`` classes: transparent background, then the tab20 colours."""
    tab = colormaps["tab20"].colors
    return [(0.0, 0.0, 0.0, 0.0)] + [(*tab[(2 * (i - 1) + (i - 1) // 10) % 20], 1.0) for i in range(1, n)]


def hex_colour(rgba: Sequence[float]) -> str:
    """``#rrggbb`` of an RGB(A) colour with components in [0, 1]."""
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def labels_colormap(colours: Sequence[Sequence[float]]) -> DirectLabelColormap:
    """napari Labels colormap: label ``i`` gets ``colours[i]``, unknown labels are transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    cmap = {None: (0.0, 0.0, 0.0, 0.0)}
    cmap.update({i: c for i, c in enumerate(colours)})
    return DirectLabelColormap(color_dict=cmap)


def attribution_colormap(transparent_below: float = 0.0) -> Colormap:
    """The diverging map for contrast limits ``(-vlim, vlim)``; ``|a| < transparent_below * vlim`` is
    fully transparent (SPEC §8: below 1% of ``max |a|``). Cached: safe to build in a worker thread."""
    return _attribution_colormap(round(min(0.5 * float(transparent_below), 0.49), 4))


@functools.lru_cache(maxsize=256)
def _attribution_colormap(half: float) -> Colormap:
    from napari.utils.colormaps import Colormap

    controls = np.asarray(ATTRIBUTION_COLORMAP["controls"], float)
    colors = np.asarray(ATTRIBUTION_COLORMAP["colors"], float)
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


# --------------------------------------------------------------------------------------------------
# radiology defaults


def looks_like_ct(data: np.ndarray) -> bool:
    """Whether an image's values look like Hounsfield units: air near -1000 (or padding down to
    -3024), soft tissue and bone above 0, nothing beyond a few thousand."""
    arr = np.asarray(data)
    sample = arr[tuple(slice(None, None, max(1, n // 64)) for n in arr.shape)].astype(np.float32, copy=False)
    if sample.size == 0 or not np.issubdtype(arr.dtype, np.number):
        return False
    lo, p1, p99, hi = np.percentile(sample, [0, 1, 99, 100])
    return bool(lo >= -3100 and p1 <= -800 and 0 < p99 and hi <= 5000)


def ct_window_limits(preset: str) -> tuple[float, float]:
    """Contrast limits of a CT window preset (:data:`CT_WINDOWS`)."""
    width, level = CT_WINDOWS[look_up_option(preset, CT_WINDOWS, what="CT window", normalise=True)]
    return level - width / 2, level + width / 2


def apply_ct_window(layer: napari.layers.Image, preset: str) -> tuple[float, float]:
    """Set an Image layer's contrast limits to a CT window (``lung``, ``mediastinum``, ``bone``);
    returns the limits. Raises :class:`Agg2ExpError` for an unknown preset (with a suggestion)."""
    limits = ct_window_limits(preset)
    layer.contrast_limits = limits
    layer.metadata = {**layer.metadata, "ct_window": look_up_option(preset, CT_WINDOWS, what="CT window",
                                                                   normalise=True)}
    return limits


def default_contrast(data: np.ndarray) -> dict[str, Any]:
    """napari keywords for a scan's first display: the mediastinum window for CT, else the 0.5-99.5
    percentiles (``contrast_limits`` and ``metadata["ct_window"]``, None when not CT)."""
    if looks_like_ct(data):
        return {"contrast_limits": ct_window_limits("mediastinum"), "ct_window": "mediastinum"}
    arr = np.asarray(data)
    sample = arr[tuple(slice(None, None, max(1, n // 128)) for n in arr.shape)]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5])) if sample.size else (0.0, 1.0)
    return {"contrast_limits": (lo, hi), "ct_window": None} if hi > lo else {"ct_window": None}


_VIEWS: dict[int, weakref.ref] = {}  # viewers set up once (the user's later view changes stay)


def radiology_view(viewer: napari.Viewer, *, force: bool = False) -> None:
    """Radiology defaults, once per viewer (``force``: again): axial slices first (the slider on the
    inferior-superior axis), anterior up and the patient's right on the left (as seen from the feet,
    also in 3D), world axes labelled, a scale bar in mm, and the class axis of attribution layers
    labelled with the shown class. Layers are in RAS+ order (:mod:`~napari_agg2exp.viewer.layers`)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    ref = _VIEWS.get(key)
    first = ref is None or ref() is not viewer
    _watch_class_axis(viewer)
    if not (first or force) or viewer.dims.ndim < 3:
        update_class_label(viewer)
        return
    _VIEWS[key] = weakref.ref(viewer, lambda _r, k=key: _VIEWS.pop(k, None))
    n = viewer.dims.ndim
    viewer.dims.order = (*range(n - 3), n - 1, n - 2, n - 3)
    viewer.dims.axis_labels = (*viewer.dims.axis_labels[: n - 3], *AXIS_LABELS)
    camera = viewer.camera
    camera.orientation = ("away", "up", "left")  # from the feet: superior away, anterior up, right on the left
    viewer.scale_bar.visible = True  # in the layers' units: mm for the plugin's layers
    update_class_label(viewer)


def schedule_radiology_view() -> None:
    """Apply :func:`radiology_view` to the current viewer on the next event-loop turn (after a reader's
    layers are added); does nothing without a viewer or an event loop (never raises)."""
    try:
        import napari
        from qtpy.QtCore import QTimer

        viewer = napari.current_viewer()
        if viewer is None:
            return
        ref = weakref.ref(viewer)
        QTimer.singleShot(0, lambda: ref() is not None and radiology_view(ref()))
    except Exception:  # noqa: BLE001 - a reader never raises; the view is a convenience
        return


# --------------------------------------------------------------------------------------------------
# the attribution layer's class axis


_WATCHED: dict[int, weakref.ref] = {}


def _watch_class_axis(viewer: napari.Viewer) -> None:
    key = id(viewer)
    ref = _WATCHED.get(key)
    if ref is not None and ref() is viewer:
        return
    _WATCHED[key] = weakref.ref(viewer, lambda _r, k=key: _WATCHED.pop(k, None))
    vref = weakref.ref(viewer)

    def changed(_event=None) -> None:
        v = vref()
        if v is not None:
            _class_step_changed(v)

    viewer.dims.events.current_step.connect(changed)


def shown_attribution_layer(viewer: napari.Viewer) -> napari.layers.Image | None:
    """The topmost visible attribution layer with a class axis (None if there is none)."""
    for ly in reversed(list(viewer.layers)):
        if layer_kind(ly) == "attribution" and ly.visible and ly.ndim == 4:
            return ly
    return None


def _class_axis(viewer: napari.Viewer) -> int:
    return viewer.dims.ndim - 4


def _shown_index(viewer: napari.Viewer, layer) -> int:
    axis = _class_axis(viewer)
    if axis < 0:
        return 0
    return int(np.clip(round(float(viewer.dims.point[axis])), 0, layer.data.shape[0] - 1))


def update_class_label(viewer: napari.Viewer) -> str | None:
    """Label the class axis with the class shown by the topmost attribution layer, and give that layer
    the class's locked symmetric limits and colormap; returns the class name (None: no class axis)."""
    layer = shown_attribution_layer(viewer)
    axis = _class_axis(viewer)
    if layer is None or axis < 0:
        return None
    names = map_targets(layer)
    k = _shown_index(viewer, layer)
    name = names[k] if k < len(names) else str(k)
    labels = list(viewer.dims.axis_labels)
    label = f"class: {name}"
    if labels[axis] != label:
        labels[axis] = label
        viewer.dims.axis_labels = labels
    _show_limits(layer, k)
    return name


def _show_limits(layer, k: int) -> None:
    info = provenance(layer)
    limits, cuts = info.get("limits"), info.get("transparent_below")
    if not limits or k >= len(limits):
        return
    vlim = float(limits[k])
    if tuple(layer.contrast_limits) != (-vlim, vlim):
        layer.contrast_limits = (-vlim, vlim)
    cmap = attribution_colormap(float(cuts[k]) / vlim if vlim > 0 else 0.0)
    if layer.colormap.name != cmap.name:
        layer.colormap = cmap


def lock_symmetric(layer: napari.layers.Image) -> None:
    """Keep an attribution layer's contrast limits symmetric about 0 (dragging one end moves both)."""
    ref = weakref.ref(layer)

    def changed(_event=None) -> None:
        ly = ref()
        if ly is None:
            return
        lo, hi = ly.contrast_limits
        m = max(abs(lo), abs(hi))
        if m > 0 and (lo, hi) != (-m, m):
            ly.contrast_limits = (-m, m)

    layer.events.contrast_limits.connect(changed)


def _class_step_changed(viewer: napari.Viewer) -> None:
    name = update_class_label(viewer)
    if name is not None:
        session(viewer).select_class(name)


def show_class(viewer: napari.Viewer, layer: napari.layers.Image, name: str) -> bool:
    """Move the class axis to ``name`` in an attribution layer; False when the run did not explain it."""
    names = map_targets(layer)
    if name not in names or layer.ndim != 4:
        return False
    axis = _class_axis(viewer)
    if axis >= 0 and _shown_index(viewer, layer) != names.index(name):
        viewer.dims.set_point(axis, float(names.index(name)))
    update_class_label(viewer)
    return True


def select_class(viewer: napari.Viewer, name: str, *, show_map: bool = True) -> None:
    """Select a class in every widget of the viewer; with ``show_map``, show its attribution map (the
    latest run of its image that explained it) at that class, and hide the other runs' layers."""
    session(viewer).select_class(name)
    if not show_map:
        return
    images = dict.fromkeys(provenance(ly).get("image") for ly in viewer.layers if layer_kind(ly) == "attribution")
    for im in images:
        current = attribution_layer(viewer, im) if im in viewer.layers else None
        if current is None or name not in map_targets(current):
            continue
        for ly in all_attribution_layers(viewer, im):
            if ly.visible != (ly is current):
                ly.visible = ly is current
        show_class(viewer, current, name)


# --------------------------------------------------------------------------------------------------
# the classes to explain


def default_targets(class_names: Sequence[str], present: Sequence[int],
                    remembered: Sequence[str] | None = None) -> list[str]:
    """Classes to explain by default: the user's previous choice (those the model has), else the
    foreground classes present in the prediction (class 0 is the background), else every present class."""
    if remembered:
        keep = [n for n in remembered if n in class_names]
        if keep:
            return keep
    fg = [class_names[i] for i in present if i != 0 and i < len(class_names)]
    return fg or [class_names[i] for i in present if i < len(class_names)]


def remember_targets(viewer: napari.Viewer, names: Sequence[str] | None) -> None:
    """Keep the user's class choice for the next runs of this viewer (None forgets it)."""
    session(viewer).explain_targets = None if names is None else [str(n) for n in names]


def remembered_targets(viewer: napari.Viewer) -> list[str] | None:
    """The class choice of the last run with explicit classes (None: none yet)."""
    return getattr(session(viewer), "explain_targets", None)


# --------------------------------------------------------------------------------------------------
# RoIs and tables


def go_to_roi(viewer: napari.Viewer, labels_layer: napari.layers.Labels, roi: str | int,
              ids: Sequence[int] | None = None) -> tuple | None:
    """Move the viewer to a RoI: per axis, the slice with the largest area of the RoI; the camera is
    centred on it. ``roi`` is a RoI name (or label id); ``ids`` overrides the label ids (joined
    RoIs). Returns the data index moved to, or None when the RoI is empty."""
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


def roi_table(table: pd.DataFrame, target: str, measure: str = "mass", part: str = "abs") -> pd.DataFrame:
    """Rows of one target and part, columns ``roi, mass, mean``, sorted by ``measure`` (largest first)."""
    if measure not in ("mass", "mean"):
        raise Agg2ExpError(f"measure must be 'mass' or 'mean', got {measure!r}")
    rows = table[(table["target"] == target) & (table["part"] == part)][["roi", "mass", "mean"]]
    key = pd.to_numeric(rows[measure], errors="coerce").fillna(-np.inf)
    return rows.assign(_k=key).sort_values("_k", ascending=False, kind="stable").drop(columns="_k").reset_index(drop=True)


def metric_table(table: pd.DataFrame) -> pd.DataFrame:
    """Wide view of an evaluation table: one row per method × target, one column per metric."""
    wide = table.pivot_table(index=["method", "target"], columns="metric", values="value", aggfunc="first",
                             sort=False)
    order = [m for m in dict.fromkeys(table["metric"]) if m in wide.columns]
    return wide[order].reset_index()
