"""How results are shown: class colours and colormaps, the selected class's maps, moving the view
to a RoI, and the importance / metric tables as the widgets list them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.report.case_figures import best_slices
from napari_agg2exp.viewer.layer_lookup import (
    all_attribution_layers,
    attribution_layers,
    layer_kind,
    provenance,
    roi_label_ids,
)
from napari_agg2exp.viewer.session import session

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd
    from napari.utils.colormaps import Colormap, DirectLabelColormap

__all__ = [
    "ATTRIBUTION_COLORMAP",
    "attribution_colormap",
    "class_colours",
    "go_to_roi",
    "hex_colour",
    "labels_colormap",
    "metric_table",
    "roi_table",
    "select_class",
]

#: blue (negative) -> transparent -> red (positive): the scan shows through small attributions;
#: each map's own copy is also fully transparent below 1% of its ``max |a|`` (SPEC §8).
ATTRIBUTION_COLORMAP = {
    "name": "agg2exp_bwr",
    "colors": [[0.0, 0.0, 1.0, 1.0], [0.45, 0.55, 1.0, 0.75], [1.0, 1.0, 1.0, 0.0],
               [1.0, 0.5, 0.45, 0.75], [1.0, 0.0, 0.0, 1.0]],
    "controls": [0.0, 0.3, 0.5, 0.7, 1.0],
}


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


def select_class(viewer: napari.Viewer, name: str, *, show_map: bool = True) -> None:
    """Select a class in every widget of the viewer; with ``show_map``, show its attribution map(s)
    and hide the other classes' maps."""
    session(viewer).select_class(name)
    if not show_map:
        return
    images = dict.fromkeys(provenance(ly).get("image") for ly in viewer.layers if layer_kind(ly) == "attribution")
    for im in images:
        shown = attribution_layers(viewer, im) if im in viewer.layers else {}
        if name in shown:
            for ly in all_attribution_layers(viewer, im):
                ly.visible = ly is shown[name]


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
