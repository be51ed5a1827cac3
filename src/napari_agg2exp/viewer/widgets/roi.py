"""RoI importance widget: table and bar chart of local importance (SPEC §4) for the selected class.

RoIs come from the image's prediction or from any Labels layer (a layer the user paints is
recomputed after each stroke). Clicking a row or a bar moves the viewer to the RoI's slice of
largest area.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_agg2exp.viewer.add_layers import write_features
from napari_agg2exp.viewer.display import go_to_roi, roi_table, select_class
from napari_agg2exp.viewer.jobs import roi_importance_job
from napari_agg2exp.viewer.layer_lookup import attribution_layers, find_layer, layer_kind
from napari_agg2exp.viewer.widgets.base import LayerCombo, PluginWidget, notify_error, run_row
from napari_agg2exp.viewer.widgets.figure import FigureView
from napari_agg2exp.viewer.widgets.runner import Runner
from napari_agg2exp.viewer.widgets.segment import is_scan

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd
    from napari.qt.threading import FunctionWorker

__all__ = ["RoiImportanceWidget", "bar_figure"]

#: Delay between the end of a paint stroke and the recomputation (ms): strokes in a row make one run.
RECOMPUTE_DELAY_MS = 250


def _is_roi_layer(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) and layer_kind(layer) != "prediction"


def bar_figure(rows: pd.DataFrame, measure: str, part: str, target: str, highlight: str | None = None) -> Figure:
    """Horizontal bar chart of one target's RoI importance (rows from
    :func:`~napari_agg2exp.viewer.display.roi_table`)."""
    names = list(rows["roi"])
    values = np.nan_to_num(np.asarray(rows[measure], dtype=float))
    fig = Figure(figsize=(4.0, max(2.2, 0.22 * len(names) + 1.0)))
    ax = fig.add_subplot()
    colours = ["tab:orange" if n == highlight else "tab:blue" for n in names]
    bars = ax.barh(np.arange(len(names)), values, color=colours, picker=True)
    for bar, n in zip(bars, names):
        bar.set_gid(n)
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{part} {measure}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"RoI importance for {target}", fontsize=9)
    fig.tight_layout()
    return fig


class RoiImportanceWidget(PluginWidget):
    """Local RoI importance of the selected class: table + bar chart; click to go to the RoI."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.table = None  # last long table (case,target,roi,part,mass,mean)
        self._table_key: tuple | None = None
        self._watched = None
        self._dirty = False

        lay = QVBoxLayout(self)
        form = QFormLayout()
        lay.addLayout(form)
        self._image = LayerCombo(napari_viewer, is_scan)
        form.addRow("Explained image", self._image)
        self._rois = LayerCombo(napari_viewer, _is_roi_layer, extra=("prediction",))
        self._rois.setToolTip("RoIs: the image's prediction, or any Labels layer (paint one to get its importance)")
        form.addRow("RoIs", self._rois)
        self._target = QComboBox()
        form.addRow("Class", self._target)
        row = QHBoxLayout()
        self._measure = QComboBox()
        self._measure.addItems(["mass", "mean"])
        self._part = QComboBox()
        self._part.addItems(["abs", "pos", "neg"])
        row.addWidget(self._measure)
        row.addWidget(self._part)
        form.addRow("Measure", row)
        self._auto = QCheckBox("Recompute when the RoI layer is painted")
        self._auto.setChecked(True)
        form.addRow(self._auto)
        self._run, self._cancel, self._status = run_row(lay, "Compute")
        self._go = QPushButton("Go to RoI")
        lay.addWidget(self._go)

        split = QSplitter(Qt.Orientation.Vertical)
        self._grid = QTableWidget(0, 3)
        self._grid.setHorizontalHeaderLabels(["RoI", "mass", "mean"])
        self._grid.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self._grid.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self._grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self._grid.verticalHeader().setVisible(False)
        self._grid.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self._grid.setMinimumHeight(150)
        split.addWidget(self._grid)
        self._plot = FigureView(napari_viewer, min_height=220)
        split.addWidget(self._plot)
        split.setSizes([240, 360])
        lay.addWidget(split, 1)

        self.runner = Runner(napari_viewer, self, [self._run], self._cancel, self._status, exclusive=False)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RECOMPUTE_DELAY_MS)
        self._timer.timeout.connect(self.compute)

        self._run.clicked.connect(self.compute)
        self._go.clicked.connect(self._go_selected)
        self._grid.cellClicked.connect(self._row_clicked)
        self._image.currentTextChanged.connect(self._sources_changed)
        self._rois.currentTextChanged.connect(self._sources_changed)
        self._target.currentTextChanged.connect(self._target_changed)
        self._measure.currentTextChanged.connect(lambda *_: self.render())
        self._part.currentTextChanged.connect(lambda *_: self.render())
        for ev in ("inserted", "removed"):
            getattr(napari_viewer.layers.events, ev).connect(self._layers_changed)
        self.state.class_selected.connect(self._class_selected)
        self._sources_changed()

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

    def _layers_changed(self, event=None) -> None:
        try:
            self._fill_targets()
            self._watch(self.roi_layer())
        except RuntimeError:
            pass

    def _sources_changed(self, *_) -> None:
        self.table = None
        self._fill_targets()
        self._watch(self.roi_layer())
        self.render()

    def _fill_targets(self) -> None:
        img = self.image_layer()
        targets = list(attribution_layers(self.viewer, img)) if img is not None else []
        current = self._target.currentText() or self.state.selected_class
        if targets == [self._target.itemText(i) for i in range(self._target.count())]:
            return
        self._target.blockSignals(True)
        self._target.clear()
        self._target.addItems(targets)
        if current in targets:
            self._target.setCurrentText(current)
        elif self.state.selected_class in targets:
            self._target.setCurrentText(self.state.selected_class)
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
        self.render()
        if self._dirty:
            QTimer.singleShot(0, self.compute)

    # ---- display
    def rows(self) -> pd.DataFrame | None:
        target = self._target.currentText()
        if self.table is None or not target:
            return None
        return roi_table(self.table, target, self._measure.currentText(), self._part.currentText())

    def render(self) -> None:
        rows = self.rows()
        self._grid.setRowCount(0)
        if rows is None:
            return
        self._grid.setRowCount(len(rows))
        for i, (roi, mass, mean) in enumerate(zip(rows["roi"], rows["mass"], rows["mean"])):
            self._grid.setItem(i, 0, QTableWidgetItem(str(roi)))
            for j, v in ((1, mass), (2, mean)):
                item = QTableWidgetItem("" if not np.isfinite(v) else f"{v:.4g}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self._grid.setItem(i, j, item)
        shown = rows[rows["roi"] != "background"] if len(rows) > 1 else rows
        fig = bar_figure(shown.head(25), self._measure.currentText(), self._part.currentText(),
                         self._target.currentText())
        self._plot.show_figure(fig, on_pick=self._bar_picked)

    def _target_changed(self, name: str) -> None:
        if name:
            select_class(self.viewer, name)
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
        layer = self.roi_layer()
        if layer is None:
            return None
        try:
            idx = go_to_roi(self.viewer, layer, roi)
        except Exception as e:  # noqa: BLE001 - shown as a notification
            notify_error(e)
            return None
        if idx is None:
            self._status.setText(f"{roi} is empty in {layer.name}")
        return idx

    def _row_clicked(self, row: int, _col: int = 0):
        item = self._grid.item(row, 0)
        return self.go_to(item.text()) if item is not None else None

    def _go_selected(self) -> None:
        rows = self._grid.selectionModel().selectedRows()
        if rows:
            self._row_clicked(rows[0].row())

    def _bar_picked(self, event) -> None:
        name = event.artist.get_gid()
        if name:
            names = [self._grid.item(i, 0).text() for i in range(self._grid.rowCount())]
            if name in names:
                self._grid.selectRow(names.index(name))
            self.go_to(name)
