"""RoI section: local importance (SPEC §4) of the selected class; its table and bar chart are shown
in the results dock.

RoIs come from the image's prediction or from any Labels layer (a layer the user paints is
recomputed after each stroke; painted labels can be named). The section follows the session's
:class:`~napari_agg2exp.viewer.session.Selection` (case, class, RoI source, measure): changing any of
them updates the table, the chart and the layers together. A click on a row, a bar or a graph node
(``selection.roi``) highlights that RoI in its Labels layer (napari's "show selected label") and moves
the viewer to its largest slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLineEdit, QPushButton

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.add_layers import write_features
from napari_agg2exp.viewer.display import go_to_roi, roi_table
from napari_agg2exp.viewer.docks import results_widget
from napari_agg2exp.viewer.jobs import roi_importance_job
from napari_agg2exp.viewer.layer_lookup import (
    attribution_layers,
    feature_names,
    find_layer,
    layer_kind,
    roi_label_ids,
)
from napari_agg2exp.viewer.layers import grid_kwargs
from napari_agg2exp.viewer.session import MEASURES, PARTS
from napari_agg2exp.viewer.widgets.base import (
    LayerCombo,
    PluginWidget,
    label_colour,
    notify_error,
    run_row,
    show_target,
)
from napari_agg2exp.viewer.widgets.runner import Runner
from napari_agg2exp.viewer.widgets.segment import is_scan

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import FunctionWorker

    from napari_agg2exp.viewer.widgets.results import ResultsWidget

__all__ = ["RoiImportanceWidget", "highlight_roi", "name_label"]

#: Delay between the end of a paint stroke and the recomputation (ms): strokes in a row make one run.
RECOMPUTE_DELAY_MS = 250


def _is_roi_layer(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) and layer_kind(layer) != "prediction"


def name_label(layer: napari.layers.Labels, label: int, name: str) -> None:
    """Give label ``label`` of a (painted) Labels layer a RoI name (its ``class_name`` feature)."""
    name = name.strip()
    if not name:
        raise Agg2ExpError("type a name for the RoI first")
    if label <= 0:
        raise Agg2ExpError("label 0 is the background -- pick the painted label (the layer's label box) first")
    names = feature_names(layer)
    names = {i: n for i, n in names.items() if not (i == 0 and n == "background")}
    if any(n == name and i != label for i, n in names.items()):
        raise Agg2ExpError(f"another label of {layer.name!r} is already named {name!r} -- choose another name")
    n = max([int(np.max(layer.data)) if np.asarray(layer.data).size else 0, label, *names]) + 1
    col = [names.get(i, "background" if i == 0 else f"label_{i}") for i in range(n)]
    col[label] = name
    old = layer.features
    feats = pd.DataFrame({"index": np.arange(n), "class_name": col})
    for c in old.columns:
        if c not in ("index", "class_name") and len(old) == n:
            feats[c] = old[c].to_numpy()
    layer.features = feats


def highlight_roi(viewer: napari.Viewer, layer: napari.layers.Labels, roi: str) -> tuple | None:
    """Show only RoI ``roi`` of ``layer`` (napari's "show selected label") and move the viewer to its
    largest slice; returns the data index moved to (None when the RoI is not in the layer)."""
    ids = roi_label_ids(layer, roi)
    if not ids:
        return None
    layer.selected_label = int(ids[0])
    layer.show_selected_label = True
    layer.visible = True
    return go_to_roi(viewer, layer, roi)


class RoiImportanceWidget(PluginWidget):
    """Local RoI importance of the selected class; table + bar chart in the results dock."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.table = None  # long table (case,target,roi,part,mass,mean) of the current case and RoI source
        self._watched = None
        self._dirty = False
        sel = self.state.selection

        lay, form = self._frame()
        self._image = LayerCombo(napari_viewer, is_scan)
        form.addRow("Explained image", self._image)
        self._rois = LayerCombo(napari_viewer, _is_roi_layer, extra=("prediction",))
        self._rois.setToolTip("RoIs: the image's prediction, or any Labels layer (paint one to get its importance)")
        self._new = QPushButton("New…")
        self._new.setToolTip("add an empty Labels layer on the image's grid to paint RoIs in")
        rois_row = QHBoxLayout()
        rois_row.addWidget(self._rois, 1)
        rois_row.addWidget(self._new)
        form.addRow("RoIs", rois_row)
        self._target = QComboBox()
        form.addRow("Class", self._target)
        row = QHBoxLayout()
        self._measure = QComboBox()
        self._measure.addItems(list(MEASURES))
        self._part = QComboBox()
        self._part.addItems(list(PARTS))
        row.addWidget(self._measure)
        row.addWidget(self._part)
        form.addRow("Measure", row)
        name_row = QHBoxLayout()
        self._name = QLineEdit()
        self._name.setPlaceholderText("name of the selected painted label")
        self._name_button = QPushButton("Name")
        self._name_button.setToolTip("name the RoI layer's selected label (napari's label box): tables show the name")
        name_row.addWidget(self._name, 1)
        name_row.addWidget(self._name_button)
        form.addRow("Painted RoI", name_row)
        self._auto = QCheckBox("Recompute when the RoI layer is painted")
        self._auto.setChecked(True)
        form.addRow(self._auto)
        self._run, self._cancel, self._status = run_row(lay, "Compute")
        lay.addStretch(1)

        self.runner = Runner(napari_viewer, self, [self._run], self._cancel, self._status, exclusive=False)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RECOMPUTE_DELAY_MS)
        self._timer.timeout.connect(self.compute)

        self._run.clicked.connect(self.compute)
        self._new.clicked.connect(self.new_roi_layer)
        self._name_button.clicked.connect(self._name_clicked)
        self._image.currentTextChanged.connect(lambda name: setattr(sel, "case", name or None))
        self._rois.currentTextChanged.connect(lambda name: setattr(sel, "rois", name or "prediction"))
        self._target.currentTextChanged.connect(self._target_chosen)
        self._measure.currentTextChanged.connect(lambda m: setattr(sel, "measure", m))
        self._part.currentTextChanged.connect(lambda p: setattr(sel, "part", p))
        for ev in ("inserted", "removed"):
            getattr(napari_viewer.layers.events, ev).connect(self._layers_changed)
        self.state.class_selected.connect(self._class_selected)
        self.state.tables_changed.connect(self._tables_changed)
        sel.events.case.connect(self._case_changed)
        sel.events.rois.connect(self._source_changed)
        sel.events.measure.connect(self._measure_changed)
        sel.events.part.connect(self._measure_changed)
        sel.events.roi.connect(self._roi_selected)
        self._measure.setCurrentText(sel.measure)
        self._part.setCurrentText(sel.part)
        if sel.case and sel.case in self._image.names():
            self._image.setCurrentText(sel.case)
        else:
            sel.case = self._image.currentText() or None
        if sel.rois in self._rois.names():
            self._rois.setCurrentText(sel.rois)
        self._source_changed()

    # ---- results dock
    @property
    def results(self) -> ResultsWidget:
        return results_widget(self.viewer)

    # ---- sources
    def image_layer(self) -> napari.layers.Image | None:
        return self._image.layer()

    def roi_layer(self) -> napari.layers.Labels | None:
        """The Labels layer holding the RoIs (the prediction layer for ``prediction``), or None."""
        img = self.image_layer()
        if self._rois.currentText() == "prediction":
            return find_layer(self.viewer, "prediction", img.name) if img is not None else None
        return self._rois.layer()

    def set_rois(self, name: str) -> None:
        self._rois.setCurrentText(name)

    def new_roi_layer(self) -> napari.layers.Labels | None:
        """Add an empty Labels layer ``RoIs`` on the image's grid, chosen as the RoI source, ready to paint."""
        img = self.image_layer()
        if img is None:
            notify_error(Agg2ExpError("open a scan first -- the RoI layer is made on its grid"))
            return None
        names = {ly.name for ly in self.viewer.layers}
        name = next(n for n in (f"{img.name} RoIs", *(f"{img.name} RoIs {i}" for i in range(2, 1000)))
                    if n not in names)
        layer = self.viewer.add_labels(np.zeros(img.data.shape[-3:], np.uint8), name=name, **grid_kwargs(img),
                                       features={"index": [0], "class_name": ["background"]})
        layer.selected_label = 1
        layer.mode = "paint"
        self.set_rois(layer.name)
        self.viewer.layers.selection.active = layer
        return layer

    def _name_clicked(self) -> None:
        layer = self._rois.layer()
        try:
            if layer is None or self._rois.currentText() == "prediction":
                raise Agg2ExpError("choose a painted RoI layer (not the prediction) to name its labels")
            name_label(layer, int(layer.selected_label), self._name.text())
        except Exception as e:  # noqa: BLE001 - shown as a notification
            notify_error(e)
            return
        self._status.setText(f"label {int(layer.selected_label)} of {layer.name} is now {self._name.text().strip()!r}")
        self._name.clear()
        if self.table is not None and self._auto.isChecked():
            self.compute()

    def _layers_changed(self, event=None) -> None:
        try:
            self._fill_targets()
            self._watch(self.roi_layer())
        except RuntimeError:
            pass

    def _case_changed(self, name) -> None:
        try:
            if name and name != self._image.currentText() and name in self._image.names():
                self._image.setCurrentText(name)
            self._source_changed()
        except RuntimeError:
            pass

    def _source_changed(self, *_) -> None:
        """A new case or RoI source: its table from the session (or none yet), targets, chart."""
        try:
            src = self.state.selection.rois
            if src != self._rois.currentText() and src in self._rois.names():
                self._rois.setCurrentText(src)
            img = self.image_layer()
            key = (img.name, "prediction" if self._rois.currentText() == "prediction" else self._rois.currentText()) \
                if img is not None else None
            self.table = self.state.tables.get(key) if key is not None else None
            self._fill_targets()
            self._watch(self.roi_layer())
            self.render()
        except RuntimeError:
            pass

    def _tables_changed(self) -> None:
        img = self.image_layer()
        if img is None:
            return
        src = "prediction" if self._rois.currentText() == "prediction" else self._rois.currentText()
        table = self.state.tables.get((img.name, src))
        if table is not None and table is not self.table:
            self.table = table
            try:
                self.render()
            except RuntimeError:
                pass

    def _measure_changed(self, *_) -> None:
        sel = self.state.selection
        try:
            for box, value in ((self._measure, sel.measure), (self._part, sel.part)):
                if box.currentText() != value:
                    box.blockSignals(True)
                    box.setCurrentText(value)
                    box.blockSignals(False)
            self.render()
        except RuntimeError:
            pass

    def _fill_targets(self) -> None:
        img = self.image_layer()
        targets = list(attribution_layers(self.viewer, img)) if img is not None else []
        if self.table is not None:
            targets += [t for t in dict.fromkeys(self.table["target"]) if t not in targets]
        current = self._target.currentText() or self.state.selected_class
        if targets == [self._target.itemText(i) for i in range(self._target.count())]:
            return
        self._target.blockSignals(True)
        self._target.clear()
        self._target.addItems(targets)
        if self.state.selected_class in targets:
            self._target.setCurrentText(self.state.selected_class)
        elif current in targets:
            self._target.setCurrentText(current)
        self._target.blockSignals(False)

    def _watch(self, layer) -> None:
        """Recompute on the RoI layer's paint / data events (only one layer watched at a time)."""
        if layer is self._watched:
            return
        if self._watched is not None:
            for ev in (self._watched.events.paint, self._watched.events.data):
                ev.disconnect(self._roi_edited)
        self._watched = layer
        if layer is not None:
            layer.events.paint.connect(self._roi_edited)
            layer.events.data.connect(self._roi_edited)

    def _roi_edited(self, event=None) -> None:
        img = self.image_layer()
        if self._auto.isChecked() and img is not None and attribution_layers(self.viewer, img):
            self._timer.start()  # restarted by each event: one run after the last stroke

    # ---- compute
    def compute(self) -> FunctionWorker | None:
        """Compute the local importance in a worker (queued after a running one)."""
        if self.runner.running:
            self._dirty = True
            return None
        img = self.image_layer()
        rois = None if self._rois.currentText() == "prediction" else self._rois.layer()
        target = self._target.currentText() or None
        self._dirty = False
        return self.runner.start(lambda: roi_importance_job(self.viewer, img, rois, target=target),
                                 on_done=self._computed)

    def _computed(self, table) -> None:
        self.table = table
        self._fill_targets()
        self.render(raise_tab=True)
        if self._dirty:
            QTimer.singleShot(0, self.compute)

    # ---- display
    def rows(self) -> pd.DataFrame | None:
        target = self._target.currentText()
        if self.table is None or not target or target not in set(self.table["target"]):
            return None
        return roi_table(self.table, target, self._measure.currentText(), self._part.currentText())

    def colours(self) -> dict[str, str]:
        """RoI name -> its label colour in the RoI layer (the bars' colours)."""
        layer = self.roi_layer()
        rows = self.rows()
        if layer is None or rows is None:
            return {}
        out = {}
        for roi in rows["roi"]:
            ids = roi_label_ids(layer, str(roi))
            c = label_colour(layer, ids[0]) if ids else None
            if c is not None:
                out[str(roi)] = c
        return out

    def render(self, raise_tab: bool = False) -> None:
        """Table and chart of the current selection in the results dock (emptied when there is none);
        ``raise_tab`` brings the results dock's RoIs tab to the front."""
        rows = self.rows()
        results = self.results if (rows is not None or self.state.results is not None) else None
        if results is None:
            return
        target = self._target.currentText()
        caption = "" if rows is None else (
            f"{self.image_layer().name if self.image_layer() else ''} · RoIs: {self._rois.currentText()} · "
            f"class {target}")
        results.show_rois(rows, self._measure.currentText(), self._part.currentText(), target, self.colours(),
                          self.state.selection.roi, caption)
        if rows is not None and raise_tab:
            results.show_tab("RoIs")

    def _target_chosen(self, name: str) -> None:
        if name:
            show_target(self.viewer, name, self._image.currentText() or None)
            layer = self.roi_layer()
            if self.table is not None and layer is not None and name in set(self.table["target"]):
                write_features(layer, self.table, name)
        self.render()

    def _class_selected(self, name: str) -> None:
        try:
            if name != self._target.currentText() and self._target.findText(name) >= 0:
                self._target.setCurrentText(name)
        except RuntimeError:
            pass

    # ---- navigation
    def go_to(self, roi: str) -> tuple | None:
        """Highlight RoI ``roi`` in the RoI layer and move to its largest slice (None: not there / empty)."""
        layer = self.roi_layer()
        if layer is None:
            return None
        try:
            idx = highlight_roi(self.viewer, layer, roi)
        except Exception as e:  # noqa: BLE001 - shown as a notification
            notify_error(e)
            return None
        if idx is None:
            self._status.setText(f"{roi} is empty in {layer.name}")
        return idx

    def _roi_selected(self, roi) -> None:
        if not roi:
            return
        try:
            self.go_to(str(roi))
            self.render()
        except RuntimeError:
            pass
