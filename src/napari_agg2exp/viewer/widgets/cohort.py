"""Cohort section: local importance tables of a cohort -> the class-to-RoI graph (SPEC §5) and the
per-class distribution plots, drawn in the results dock with matplotlib in napari's theme.

Tables come from CSV/Parquet files, from a small cohort run here (the open scans, a cohort folder in
any layout the project writes, or a manifest), or from the RoI importance computed in this session.
The graph shows the heaviest kept edges only (the "Edges shown" slider); clicking a node selects
that class everywhere and highlights the RoI in the viewer; hovering a node lists its edges.
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
    QSlider,
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
from napari_agg2exp.viewer.docks import results_widget
from napari_agg2exp.viewer.widgets.base import PluginWidget, notify_error, run_row, show_target
from napari_agg2exp.viewer.widgets.runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import napari
    import networkx as nx
    from matplotlib.figure import Figure
    from napari.qt.threading import FunctionWorker

__all__ = ["DEFAULT_EDGES_SHOWN", "CohortGraphWidget", "node_artists", "top_edges"]

#: edges drawn by default (the heaviest of the kept ones): a readable graph, not a hairball
DEFAULT_EDGES_SHOWN = 25

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


def top_edges(graph: nx.DiGraph, n: int) -> nx.DiGraph:
    """The subgraph of the ``n`` heaviest edges (their nodes only); graph attributes kept."""
    edges = sorted(graph.edges(data=True), key=lambda e: -float(e[2].get("weight", 0.0)))[: max(int(n), 0)]
    sub = graph.edge_subgraph([(u, v) for u, v, _ in edges]).copy()
    sub.graph.update(graph.graph)
    return sub


def node_tooltip(graph: nx.DiGraph, name: str, top: int = 5) -> str:
    """Hover text of a node: its group and its heaviest incoming / outgoing edges."""
    d = graph.nodes[name]
    lines = [f"{name}" + (f" ({d['group']})" if d.get("group") else "")]
    for label, edges in (("explained by", graph.in_edges(name, data=True)), ("explains", graph.out_edges(name, data=True))):
        ranked = sorted(edges, key=lambda e: -float(e[2].get("weight", 0.0)))
        if ranked:
            other = 0 if label == "explained by" else 1
            lines.append(f"{label}: " + ", ".join(f"{e[other]} {float(e[2].get('weight', 0.0)):.3g}"
                                                  for e in ranked[:top]))
    return "\n".join(lines)


class CohortGraphWidget(PluginWidget):
    """Cohort tables -> global importance graph + distributions; node click selects the class."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.result: GraphResult | None = None
        self._nodes: dict[str, object] = {}

        lay, form = self._frame()
        buttons = QGridLayout()
        self._load = QPushButton("Load tables…")
        self._results = QPushButton("Results folder…")
        self._results.setToolTip("a case folder (agg2exp explain, demo) or a cohort folder (agg2exp cohort)")
        self._session = QPushButton("Session tables")
        self._open = QPushButton("Run: open scans")
        self._folder = QPushButton("Run: folder…")
        self._folder.setToolTip("case_XXXX/image.nii.gz folders (agg2exp phantom), flat <case>.nii.gz scans, "
                                "or a folder with manifest.csv")
        self._manifest = QPushButton("Run: manifest…")
        self._manifest.setToolTip("a CSV with columns case,image (paths relative to the CSV)")
        buttons.addWidget(self._load, 0, 0)
        buttons.addWidget(self._session, 0, 1)
        buttons.addWidget(self._open, 1, 0)
        buttons.addWidget(self._folder, 1, 1)
        buttons.addWidget(self._results, 2, 0)
        buttons.addWidget(self._manifest, 2, 1)
        lay.addLayout(buttons)
        form2 = QFormLayout()
        lay.addLayout(form2)
        form = form2
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
        self._rule.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self._rule.setMinimumContentsLength(12)
        self._keep = QDoubleSpinBox()
        keep_row = QHBoxLayout()
        keep_row.addWidget(self._rule, 1)
        keep_row.addWidget(self._keep)
        form.addRow("Keep edges", keep_row)
        self._rule_changed()
        self._shown = QSlider(Qt.Orientation.Horizontal)
        self._shown.setRange(1, 200)
        self._shown.setValue(DEFAULT_EDGES_SHOWN)
        self._shown.setToolTip("draw only the heaviest kept edges")
        self._shown_label = QLabel(str(DEFAULT_EDGES_SHOWN))
        shown_row = QHBoxLayout()
        shown_row.addWidget(self._shown, 1)
        shown_row.addWidget(self._shown_label)
        form.addRow("Edges shown", shown_row)
        self._target = QComboBox()
        form.addRow("Distribution of", self._target)
        self._draw, self._cancel, self._status = run_row(lay, "Draw")
        self._info = QLabel("")
        self._info.setWordWrap(True)
        lay.addWidget(self._info)
        lay.addStretch(1)

        self.runner = Runner(napari_viewer, self, [self._open, self._folder, self._manifest], self._cancel,
                             self._status)
        self._load.clicked.connect(self._load_dialog)
        self._results.clicked.connect(self._results_dialog)
        self._session.clicked.connect(self.use_session)
        self._open.clicked.connect(lambda: self.run_cohort(None))
        self._folder.clicked.connect(self._folder_dialog)
        self._manifest.clicked.connect(self._manifest_dialog)
        self._shown.valueChanged.connect(lambda v: self._shown_label.setText(str(v)))
        self._shown.sliderReleased.connect(self._redraw_graph)
        self._shown.valueChanged.connect(lambda *_: None if self._shown.isSliderDown() else self._redraw_graph())
        self.state.selection.events.part.connect(self._part_selected)
        self._draw.clicked.connect(lambda: self.draw())
        self._part.currentTextChanged.connect(lambda *_: self.draw() if self.result is not None else None)
        self._part.currentTextChanged.connect(lambda p: setattr(self.state.selection, "part", p))
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
        folder = QFileDialog.getExistingDirectory(self, "Cohort folder (case folders, scans or manifest.csv)")
        if folder:
            self.run_cohort(folder)

    def _manifest_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cohort manifest", "", "CSV (*.csv);;All files (*)")
        if path:
            self.run_cohort(path)

    def _part_selected(self, part: str) -> None:
        try:
            if part != self._part.currentText():
                self._part.setCurrentText(part)
        except RuntimeError:
            pass

    def run_cohort(self,
                   images: Sequence[napari.layers.Image | str] | str | Path | None = None) -> FunctionWorker | None:
        """Explain every scan (open layers, a cohort folder or a manifest) and draw; returns the worker
        (None if refused)."""
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
        n_cases = table["case"].nunique()
        self._info.setText(f"{n_cases} case{'s' if n_cases != 1 else ''}, {res.graph.number_of_nodes()} nodes; "
                           f"{counts} ({res.part} mass, {res.rule.describe()})")
        self._redraw_graph()
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
        results_widget(self.viewer).show_tab("Cohort")
        return res

    def _redraw_graph(self) -> None:
        """Draw the heaviest ``Edges shown`` kept edges of the current graph, legend under the nodes."""
        res = self.result
        if res is None:
            return
        shown = top_edges(res.graph, self._shown.value())
        n = shown.number_of_edges()
        fig = graph_figure(shown, title=f"RoI → class importance ({res.part} mass)\nheaviest {n} of "
                                        f"{res.kept} kept edges ({res.candidates} candidates)")
        ax = fig.axes[0]
        ax.title.set_fontsize(9)
        leg = ax.get_legend()
        if leg is not None:  # outside the axes, under the ring of nodes
            handles, labels = leg.legend_handles, [t.get_text() for t in leg.get_texts()]
            leg.remove()
            fig.legend(handles=handles, labels=labels, loc="outside lower center", ncols=min(4, len(labels)),
                       fontsize=7, frameon=False)
        self._nodes = node_artists(fig, shown)
        for name, artist in self._nodes.items():
            artist.set_picker(6)
            artist.set_gid(name)
        graph = res.graph
        self._graph_view.show_figure(fig, on_pick=self._node_picked, layout="constrained",
                                     hover=lambda a: node_tooltip(graph, a.get_gid()) if a.get_gid() in graph
                                     else None)
        if self.state.selected_class in self._nodes:
            self._highlight(self.state.selected_class)

    @property
    def _graph_view(self):
        return results_widget(self.viewer).graph_plot

    @property
    def _dist_view(self):
        return results_widget(self.viewer).dist_plot

    def _draw_distribution(self) -> None:
        if self.result is None or not self._target.currentText():
            return
        fig = distribution_figure(self.result.local, self._target.currentText(), self._part.currentText())
        leg = fig.axes[0].get_legend()
        if leg is not None:
            handles, labels = leg.legend_handles, [t.get_text() for t in leg.get_texts()]
            leg.remove()
            fig.legend(handles=handles, labels=labels, loc="outside right upper", fontsize=7, frameon=False)
        for ax in fig.axes:
            ax.title.set_fontsize(9)
            ax.tick_params(labelsize=7)
        self._dist_view.show_figure(fig, layout="constrained")

    def _target_changed(self, name: str) -> None:
        if name:
            show_target(self.viewer, name)
            self._draw_distribution()

    def _node_picked(self, event) -> None:
        name = event.artist.get_gid()
        if name:
            self.select_node(name)

    def select_node(self, name: str) -> None:
        """What a click on a node does: select that class everywhere (its map is shown) and highlight
        that RoI in the viewer (``selection.roi``)."""
        show_target(self.viewer, name)
        if self._target.findText(name) >= 0:
            self._target.setCurrentText(name)
        self._highlight(name)
        self.state.selection.roi = None
        self.state.selection.roi = name

    def _highlight(self, name: str) -> None:
        if not self._nodes:  # no graph drawn: nothing to highlight (and no results dock to open)
            return
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
