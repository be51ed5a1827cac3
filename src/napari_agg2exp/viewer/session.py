"""Per-viewer plugin state: the loaded model, the selected class and the tables of a session.

The dock widgets and the scripted functions of :mod:`napari_agg2exp.viewer` share one
:class:`Session` per viewer, see :func:`session`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from psygnal import Signal, evented

from napari_agg2exp.attribution.explainer import Explanation
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.models.prepared import PreparedCase

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = ["MEASURES", "PARTS", "Selection", "Session", "session"]

#: Importance measures and processings a selection can show.
MEASURES = ("mass", "mean")
PARTS = ("abs", "pos", "neg")


@evented
@dataclass
class Selection:
    """What every section of the panel shows: one evented model per viewer (psygnal).

    Attributes:
        case: the image layer (scan) inspected.
        target: the class inspected (its map is shown, its importance listed).
        rois: the RoI source: ``"prediction"`` or the name of a Labels layer.
        measure: ``mass`` or ``mean``.
        part: ``abs``, ``pos`` or ``neg``.
        roi: the highlighted RoI (bar / row / node clicked), or None.

    ``selection.events.<field>.connect(callback)`` is called with the new value on each change;
    ``selection.events.connect`` with any change.
    """

    case: str | None = None
    target: str | None = None
    rois: str = "prediction"
    measure: str = "mass"
    part: str = "abs"
    roi: str | None = None


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
        prepared: the segmented scan (:class:`~napari_agg2exp.models.prepared.PreparedCase`) of each image,
            reused by explain and evaluate so nothing segments the same scan twice.
        explanations: the last explanation of each image (its model-grid maps, for RoI importance).

        selection: the :class:`Selection` (case, class, RoI source, measure) every section follows.
        results: the viewer's results dock widget (plots and tables), once opened.

    Signals (psygnal): ``model_changed(model)``, ``class_selected(name)``, ``tables_changed()``,
    ``busy_changed(title or None)``; the selection's own ``selection.events``.
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
        self.prepared: dict[str, PreparedCase] = {}
        self.explanations: dict[str, Explanation] = {}
        self.selection = Selection()
        self.results = None

    def set_model(self, model: SegmentationModel) -> None:
        self.model = model
        self.prepared.clear()
        self.explanations.clear()
        self.model_changed.emit(model)

    def select_class(self, name: str | None) -> None:
        if name and name != self.selected_class:
            self.selected_class = str(name)
            self.selection.target = str(name)
            self.class_selected.emit(str(name))

    def set_busy(self, title: str | None) -> None:
        self.busy = title
        self.busy_changed.emit(title)

    def prepared_for(self, name: str, model: SegmentationModel, volume: Volume) -> PreparedCase | None:
        """The prepared case of image ``name`` if it was made with ``model`` from this very scan."""
        p = self.prepared.get(name)
        if p is None or p.model is not model or p.image.shape != volume.shape:
            return None
        same = p.image.array is volume.array or np.array_equal(p.image.array, volume.array)
        return p if same and np.allclose(p.image.affine, volume.affine) else None

    def add_table(self, key: tuple[str, str], table: pd.DataFrame) -> None:
        self.tables[key] = table
        self.tables_changed.emit()

    def session_table(self) -> pd.DataFrame | None:
        """All prediction-RoI tables of this session, one case per image (None if there is none)."""
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
