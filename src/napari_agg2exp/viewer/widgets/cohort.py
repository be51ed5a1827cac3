"""Cohort & graph widget: local importance tables of a cohort -> the class-to-RoI graph (SPEC §5)
and the per-class distribution plots, drawn with matplotlib in napari's theme.

Tables come from CSV/Parquet files, from a small cohort run here (the open scans or a folder of
NIfTI scans), or from the RoI importance computed in this session. Clicking a class node selects
that class in the other widgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
)

from napari_agg2exp.attribution.explainer import METHODS
from napari_agg2exp.importance.global_importance import DEFAULT_KEEP_FRACTION, KeepRule, keep_rule
from napari_agg2exp.report.cohort_figures import distribution_figure, graph_figure
from napari_agg2exp.viewer.cohort_graph import (
    GraphResult,
    cohort_job,
    cohort_table,
    importance_graph,
    load_tables,
)
from napari_agg2exp.viewer.display import select_class
from napari_agg2exp.viewer.widgets.base import PluginWidget, notify_error, run_row
from napari_agg2exp.viewer.widgets.figure import FigureView
from napari_agg2exp.viewer.widgets.runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import napari
    import networkx as nx
    from matplotlib.figure import Figure
    from napari.qt.threading import FunctionWorker

__all__ = ["CohortGraphWidget", "node_artists"]

#: The edge rules offered by the dock: (label, rule name, range, decimals, step, default, tooltip).
_RULES = (
    ("Heaviest share of all edges", "keep_fraction", (0.01, 1.0), 3, 0.05, round(DEFAULT_KEEP_FRACTION, 3),
     "keep the heaviest share of all candidate edges, ranked over the whole graph (default 1/3, as in the paper)"),
    ("Top k per class", "top_k", (1, 100), 0, 1, 3, "per class, keep its k heaviest candidate edges"),
    ("Cumulative share per class", "keep_mass", (0.0, 1.0), 2, 0.05, 0.5,
     ("per class, keep the heaviest candidate edges while their cumulative share among the class's candidates "
      "<= this (the heaviest always)")),
)


def node_artists(fig: Figure, graph: nx.DiGraph) -> dict[str, object]:
    """Node name -> its marker artist in a :func:`~napari_agg2exp.report.cohort_figures.graph_figure`.

    ``graph_figure`` draws one scatter marker and then one label per node, in the same order.
    """
    ax = fig.axes[0]
    markers = [c for c in ax.collections if len(c.get_offsets()) == 1]
    labels = [t.get_text() for t in ax.texts]
    if len(markers) != len(labels) or set(labels) != set(graph.nodes):
        return {}
    return dict(zip(labels, markers))


class CohortGraphWidget(PluginWidget):
    """Cohort tables -> global importance graph + distributions; node click selects the class."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.result: GraphResult | None = None
        self._nodes: dict[str, object] = {}

        lay = QVBoxLayout(self)
        buttons = QGridLayout()
        self._load = QPushButton("Load tables…")
        self._results = QPushButton("Load results folder…")
        self._results.setToolTip("a case folder (agg2exp explain, demo) or a cohort folder (agg2exp cohort)")
        self._session = QPushButton("Use this session's tables")
        self._open = QPushButton("Run cohort: open scans")
        self._folder = QPushButton("Run cohort: folder…")
        buttons.addWidget(self._load, 0, 0)
        buttons.addWidget(self._session, 0, 1)
        buttons.addWidget(self._open, 1, 0)
        buttons.addWidget(self._folder, 1, 1)
        buttons.addWidget(self._results, 2, 0)
        lay.addLayout(buttons)
        form = QFormLayout()
        lay.addLayout(form)
        self._method = QComboBox()

        for key, info in METHODS.items():
            self._method.addItem(info.title, key)
        self._method.setToolTip("method used by a cohort run (paper defaults)")
        form.addRow("Cohort method", self._method)
        self._part = QComboBox()
        self._part.addItems(["abs", "pos", "neg"])
        form.addRow("Part", self._part)
        self._rule = QComboBox()
        for label, name, *_ in _RULES:
            self._rule.addItem(label, name)
        self._rule.setToolTip("which candidate edges the graph keeps (candidates: every RoI -> class pair except "
                              "background/none, self-edges and joined RoIs into a RoI they contain)")
        self._keep = QDoubleSpinBox()
        keep_row = QHBoxLayout()
        keep_row.addWidget(self._rule, 1)
        keep_row.addWidget(self._keep)
        form.addRow("Keep edges", keep_row)
        self._rule_changed()
        self._target = QComboBox()
        form.addRow("Distribution of", self._target)
        self._draw, self._cancel, self._status = run_row(lay, "Draw")
        self._info = QLabel("")
        self._info.setWordWrap(True)
        lay.addWidget(self._info)
        split = QSplitter(Qt.Orientation.Vertical)
        self._graph_view = FigureView(napari_viewer, min_height=320)
        self._dist_view = FigureView(napari_viewer, min_height=220)
        split.addWidget(self._graph_view)
        split.addWidget(self._dist_view)
        split.setSizes([520, 380])
        lay.addWidget(split, 1)

        self.runner = Runner(napari_viewer, self, [self._open, self._folder], self._cancel, self._status)
        self._load.clicked.connect(self._load_dialog)
        self._results.clicked.connect(self._results_dialog)
        self._session.clicked.connect(self.use_session)
        self._open.clicked.connect(lambda: self.run_cohort(None))
        self._folder.clicked.connect(self._folder_dialog)
        self._draw.clicked.connect(lambda: self.draw())
        self._part.currentTextChanged.connect(lambda *_: self.draw() if self.result is not None else None)
        self._rule.currentIndexChanged.connect(self._rule_changed)
        self._rule.currentIndexChanged.connect(lambda *_: self.draw() if self.result is not None else None)
        self._target.currentTextChanged.connect(self._target_changed)
        self.state.class_selected.connect(self._class_selected)

    # ---- inputs
    def _load_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Local importance tables", "",
                                                "Tables (*.csv *.parquet *.pq);;All files (*)")
        if paths:
            self.load(paths)

    def _results_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Case or cohort folder")
        if folder:
            self.load([folder])

    def load(self, paths: Sequence[str | Path]) -> None:
        try:
            load_tables(self.viewer, paths)
        except Exception as e:  # noqa: BLE001 - shown as a notification
            notify_error(e)
            return
        self.draw()

    def use_session(self) -> None:
        self.state.cohort = None
        self.draw()

    def _folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of NIfTI scans")
        if folder:
            self.run_cohort(folder)

    def run_cohort(self,
                   images: Sequence[napari.layers.Image | str] | str | Path | None = None) -> FunctionWorker | None:
        """Explain every scan (open layers or a folder) and draw; returns the worker (None if refused)."""
        method = self._method.currentData()
        return self.runner.start(lambda: cohort_job(self.viewer, images, method),
                                 on_done=lambda _t: self.draw())

    # ---- edge rule
    def _rule_changed(self, *_) -> None:
        """Set the value box to the chosen rule's range and default."""
        _, _, (lo, hi), decimals, step, default, tip = _RULES[max(self._rule.currentIndex(), 0)]
        self._keep.blockSignals(True)
        self._keep.setDecimals(decimals)
        self._keep.setRange(lo, hi)
        self._keep.setSingleStep(step)
        self._keep.setValue(default)
        self._keep.setToolTip(tip)
        self._keep.blockSignals(False)

    def keep_rule(self) -> KeepRule:
        """The edge rule the controls show (``0.333`` is read as exactly 1/3)."""
        name, value = self._rule.currentData(), self._keep.value()
        if name == "top_k":
            return keep_rule(top_k=round(value))
        if name == "keep_fraction":
            return keep_rule(keep_fraction=DEFAULT_KEEP_FRACTION if abs(value - DEFAULT_KEEP_FRACTION) < 5e-4
                             else value)
        return keep_rule(keep_mass=value)

    def set_keep_rule(self, rule: KeepRule) -> None:
        """Show ``rule`` in the controls (without drawing)."""
        self._rule.blockSignals(True)
        self._rule.setCurrentIndex(self._rule.findData(rule.name))
        self._rule.blockSignals(False)
        self._rule_changed()
        self._keep.setValue(float(rule.value))

    # ---- drawing
    def draw(self, part: str | None = None, keep_mass: float | None = None, *, keep_fraction: float | None = None,
             top_k: int | None = None) -> GraphResult | None:
        """Draw the graph and the distribution of the current table; returns the GraphResult (None on error).

        ``keep_fraction``, ``top_k`` or ``keep_mass`` (at most one) sets the edge rule first.
        """
        if part is not None:
            self._part.setCurrentText(part)
        try:
            if keep_fraction is not None or top_k is not None or keep_mass is not None:
                self.set_keep_rule(keep_rule(keep_fraction, top_k, keep_mass))
            table = cohort_table(self.viewer)
            res = importance_graph(table, self._part.currentText(), **self.keep_rule().kwargs())
        except Exception as e:  # noqa: BLE001 - shown as a notification
            notify_error(e)
            return None
        self.result = res
        counts = f"{res.kept} of {res.candidates} candidate edges kept"
        fig = graph_figure(res.graph, title=f"RoI → class importance ({res.part} mass): {counts}\n"
                                          f"({res.rule.describe()})")
        ax = fig.axes[0]
        ax.title.set_fontsize(9)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95)
        leg = ax.get_legend()
        if leg is not None:  # to the figure's corner: a wide dock would put it on the ring's labels
            ax.legend(handles=leg.legend_handles, labels=[t.get_text() for t in leg.get_texts()], loc="lower left",
                      bbox_to_anchor=(0.0, 0.0), bbox_transform=fig.transFigure, fontsize=8, frameon=False)
        self._nodes = node_artists(fig, res.graph)
        for name, artist in self._nodes.items():
            artist.set_picker(6)
            artist.set_gid(name)
        self._graph_view.show_figure(fig, on_pick=self._node_picked, layout=None)
        n_cases = table["case"].nunique()
        self._info.setText(f"{n_cases} case{'s' if n_cases != 1 else ''}, {res.graph.number_of_nodes()} nodes; "
                           f"{counts} ({res.part} mass, {res.rule.describe()})")
        targets = [t for t in dict.fromkeys(table["target"]) if t not in ("background", "none")] or \
            list(dict.fromkeys(table["target"]))
        current = self.state.selected_class if self.state.selected_class in targets else self._target.currentText()
        self._target.blockSignals(True)
        self._target.clear()
        self._target.addItems(targets)
        if current in targets:
            self._target.setCurrentText(current)
        self._target.blockSignals(False)
        self._draw_distribution()
        return res

    def _draw_distribution(self) -> None:
        if self.result is None or not self._target.currentText():
            return
        fig = distribution_figure(self.result.local, self._target.currentText(), self._part.currentText())
        self._dist_view.show_figure(fig)

    def _target_changed(self, name: str) -> None:
        if name:
            select_class(self.viewer, name)
            self._draw_distribution()

    def _node_picked(self, event) -> None:
        name = event.artist.get_gid()
        if name:
            self.select_node(name)

    def select_node(self, name: str) -> None:
        """What a click on a node does: select that class everywhere (its map is shown)."""
        select_class(self.viewer, name)
        if self._target.findText(name) >= 0:
            self._target.setCurrentText(name)
        self._highlight(name)

    def _highlight(self, name: str) -> None:
        for n, artist in self._nodes.items():
            artist.set_linewidth(3.0 if n == name else 0.8)
        if self._graph_view.canvas is not None:
            self._graph_view.canvas.draw_idle()

    def _class_selected(self, name: str) -> None:
        try:
            if self._target.findText(name) >= 0 and self._target.currentText() != name:
                self._target.setCurrentText(name)
            self._highlight(name)
        except RuntimeError:
            pass

    def node_position(self, name: str) -> tuple[float, float]:
        """Display (pixel) position of a node's marker (tests click there)."""
        artist = self._nodes[name]
        x, y = np.asarray(artist.get_offsets())[0]
        return tuple(artist.axes.transData.transform((x, y)))
