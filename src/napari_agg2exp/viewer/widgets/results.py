"""The results dock: one dock per viewer for the plugin's plots and tables.

Tabs: ``RoIs`` (local importance table + bar chart), ``Cohort`` (importance graph + distribution)
and ``Metrics`` (explanation-quality table). Tables export to CSV; charts have matplotlib's
toolbar (zoom, pan, save), hover tooltips and follow napari's theme. A click on a bar or a row
sets the session's ``selection.roi`` (the RoI section then highlights it in the viewer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_agg2exp.files import atomic_write_text
from napari_agg2exp.viewer.widgets.base import PluginWidget, notify_error
from napari_agg2exp.viewer.widgets.figure import FigureView

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd

__all__ = ["ResultsWidget", "TableView", "bar_figure"]


def bar_figure(rows: pd.DataFrame, measure: str, part: str, target: str,
               colours: dict[str, str] | None = None, highlight: str | None = None) -> Figure:
    """Horizontal bar chart of one target's RoI importance, each bar in its RoI's label colour."""
    names = [str(n) for n in rows["roi"]]
    values = np.nan_to_num(np.asarray(rows[measure], dtype=float))
    fig = Figure(figsize=(4.0, max(2.2, 0.2 * len(names) + 1.0)))
    ax = fig.add_subplot()
    colours = colours or {}
    bars = ax.barh(np.arange(len(names)), values, color=[colours.get(n, "#1f77b4") for n in names],
                   edgecolor=["#ffcc00" if n == highlight else "none" for n in names], linewidth=2.0, picker=True)
    for bar, n in zip(bars, names):
        bar.set_gid(n)
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{part} {measure}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"RoI importance for {target}", fontsize=9)
    return fig


class TableView(QWidget):
    """A read-only table of a DataFrame with an "Export CSV…" button (exports what is shown)."""

    def __init__(self, parent: QWidget | None = None, stretch_first: bool = True):
        super().__init__(parent)
        self.frame: pd.DataFrame | None = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.grid = QTableWidget(0, 0)
        self.grid.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.grid.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.grid.verticalHeader().setVisible(False)
        self.grid.setMinimumHeight(80)
        self._stretch_first = stretch_first
        lay.addWidget(self.grid, 1)
        row = QHBoxLayout()
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_dialog)
        row.addWidget(self.caption, 1)
        row.addWidget(self.export_button)
        lay.addLayout(row)

    def show_frame(self, frame: pd.DataFrame | None, headers: list[str] | None = None, caption: str = "") -> None:
        """Show ``frame`` (None: empty the table)."""
        self.frame = frame
        self.caption.setText(caption)
        self.grid.clearContents()
        self.export_button.setEnabled(frame is not None and len(frame) > 0)
        if frame is None:
            self.grid.setRowCount(0)
            return
        cols = list(frame.columns)
        self.grid.setColumnCount(len(cols))
        self.grid.setHorizontalHeaderLabels(headers or [str(c) for c in cols])
        self.grid.setRowCount(len(frame))
        for i, row in enumerate(frame.itertuples(index=False)):
            for j, v in enumerate(row):
                if isinstance(v, (float, np.floating)):
                    text = f"{v:.4g}" if np.isfinite(v) else "n/a"
                else:
                    text = str(v)
                item = QTableWidgetItem(text)
                if isinstance(v, (float, int, np.number)):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.grid.setItem(i, j, item)
        header = self.grid.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        if self._stretch_first and cols:
            header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

    def column(self, j: int = 0) -> list[str]:
        return [self.grid.item(i, j).text() for i in range(self.grid.rowCount()) if self.grid.item(i, j)]

    def export(self, path: str) -> None:
        """Write the shown table as CSV (atomically)."""
        if self.frame is None:
            return
        atomic_write_text(path, self.frame.to_csv(index=False))

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export table", "table.csv", "CSV (*.csv)")
        if path:
            try:
                self.export(path)
            except Exception as e:  # noqa: BLE001 - shown as a notification
                notify_error(e, "Export")


class ResultsWidget(PluginWidget):
    """The plugin's results dock: RoI importance, cohort graph + distribution, metrics."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        self.tabs = QTabWidget()
        lay.addWidget(self.tabs)
        # RoIs: table over chart
        roi = QSplitter(Qt.Orientation.Vertical)
        self.roi_table = TableView()
        self.roi_plot = FigureView(self.viewer, min_height=120)
        roi.addWidget(self.roi_table)
        roi.addWidget(self.roi_plot)
        roi.setSizes([200, 300])
        self.tabs.addTab(roi, "RoIs")
        # Cohort: graph over distribution
        cohort = QSplitter(Qt.Orientation.Vertical)
        self.graph_plot = FigureView(self.viewer, min_height=160)
        self.dist_plot = FigureView(self.viewer, min_height=120)
        cohort.addWidget(self.graph_plot)
        cohort.addWidget(self.dist_plot)
        cohort.setSizes([320, 220])
        self.tabs.addTab(cohort, "Cohort")
        self.metrics_table = TableView(stretch_first=False)
        self.tabs.addTab(self.metrics_table, "Metrics")
        self.roi_table.grid.cellClicked.connect(self._row_clicked)
        self.state.results = self

    def sizeHint(self) -> QSize:
        return QSize(440, 480)

    def minimumSizeHint(self) -> QSize:
        return QSize(240, 200)

    def show_tab(self, name: str) -> None:
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i) == name:
                self.tabs.setCurrentIndex(i)

    # ---- RoIs
    def show_rois(self, rows: pd.DataFrame | None, measure: str = "mass", part: str = "abs", target: str = "",
                  colours: dict[str, str] | None = None, highlight: str | None = None, caption: str = "") -> None:
        """Table and bar chart of one target's RoI importance; None empties both (no stale chart)."""
        self.roi_table.show_frame(rows, caption=caption)
        if rows is None or len(rows) == 0:
            self.roi_plot.clear()
            return
        shown = rows[rows["roi"] != "background"] if len(rows) > 1 else rows
        shown = shown.head(25)
        fig = bar_figure(shown, measure, part, target, colours, highlight)
        values = dict(zip(shown["roi"].astype(str), zip(shown["mass"], shown["mean"])))

        def tip(artist):
            name = artist.get_gid()
            if name not in values:
                return None
            mass, mean = values[name]
            return f"{name}\nmass {mass:.4g} ({part})\nmean {mean:.4g}\nclick: show in the viewer"

        self.roi_plot.show_figure(fig, on_pick=self._bar_picked, hover=tip)
        if highlight is not None:
            names = self.roi_table.column(0)
            if highlight in names:
                self.roi_table.grid.selectRow(names.index(highlight))

    def _row_clicked(self, row: int, _col: int = 0) -> None:
        item = self.roi_table.grid.item(row, 0)
        if item is not None:
            self.state.selection.roi = None  # a click on the same RoI again moves there again
            self.state.selection.roi = item.text()

    def _bar_picked(self, event) -> None:
        name = event.artist.get_gid()
        if name:
            self.state.selection.roi = None
            self.state.selection.roi = name

    # ---- metrics
    def show_metrics(self, wide: pd.DataFrame | None, headers: list[str] | None = None, caption: str = "") -> None:
        self.metrics_table.show_frame(wide, headers, caption)
