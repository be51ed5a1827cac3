"""Evaluate section: explanation-quality metrics (SPEC §6) of attribution methods on the current scan
(the table is shown in the results dock, with CSV export).

Methods and metrics are listed from their registries (:data:`~napari_agg2exp.attribution.explainer.METHODS`,
:data:`napari_agg2exp.evaluation.evaluate.METRICS`); the metrics package is imported only when the widget opens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
)

from napari_agg2exp.attribution.explainer import METHODS
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.evaluate import METRICS, PAPER_METRICS
from napari_agg2exp.viewer.display import metric_table
from napari_agg2exp.viewer.docks import results_widget
from napari_agg2exp.viewer.jobs import evaluate_job
from napari_agg2exp.viewer.widgets.base import LayerCombo, PluginWidget, run_row
from napari_agg2exp.viewer.widgets.runner import Runner
from napari_agg2exp.viewer.widgets.segment import is_scan

if TYPE_CHECKING:  # pragma: no cover
    import napari
    import pandas as pd
    from napari.qt.threading import FunctionWorker

__all__ = ["EvaluateWidget"]

ALL_CLASSES = "all present classes"


def _checklist(items: dict[str, str], checked: set[str]) -> QListWidget:
    lst = QListWidget()
    for key, title in items.items():
        item = QListWidgetItem(title)
        item.setData(Qt.ItemDataRole.UserRole, key)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if key in checked else Qt.CheckState.Unchecked)
        lst.addItem(item)
    lst.setMaximumHeight(22 * len(items) + 8)
    return lst


def _checked(lst: QListWidget) -> list[str]:
    return [lst.item(i).data(Qt.ItemDataRole.UserRole) for i in range(lst.count())
            if lst.item(i).checkState() == Qt.CheckState.Checked]


def _set_checked(lst: QListWidget, keys) -> None:
    keys = set(keys)
    for i in range(lst.count()):
        item = lst.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in keys
                           else Qt.CheckState.Unchecked)


class EvaluateWidget(PluginWidget):
    """Faithfulness, sensitivity, complexity and randomisation of the chosen methods on one scan."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.table = None
        self._metrics_info = METRICS
        lay, form = self._frame()
        self._image = LayerCombo(napari_viewer, is_scan)
        form.addRow("Image", self._image)
        self._image.bind(self.state.selection)
        self._target = QComboBox()
        self._target.addItem(ALL_CLASSES)
        form.addRow("Class", self._target)
        lay.addWidget(QLabel("Methods"))
        self._methods = _checklist({k: v.title for k, v in METHODS.items()}, {"vg"})
        lay.addWidget(self._methods)
        lay.addWidget(QLabel("Metrics"))
        arrow = {"higher": "↑", "lower": "↓"}
        self._metrics = _checklist({k: f"{v.title} {arrow.get(v.better, '')}" for k, v in METRICS.items()},
                                   set(PAPER_METRICS))
        lay.addWidget(self._metrics)
        self._subsets = QSpinBox()
        self._subsets.setRange(2, 10_000)
        self._subsets.setValue(100)
        form2 = QFormLayout()
        form2.addRow("Faithfulness subsets", self._subsets)
        self._noise = QSpinBox()
        self._noise.setRange(1, 100)
        self._noise.setValue(3)
        form2.addRow("Sensitivity samples", self._noise)
        self._seed = QSpinBox()
        self._seed.setRange(0, 1_000_000)
        form2.addRow("Seed", self._seed)
        lay.addLayout(form2)
        self._run, self._cancel, self._status = run_row(lay, "Evaluate")
        lay.addWidget(QLabel("The metrics table is shown in the results dock (Metrics tab)."))
        lay.addStretch(1)
        self.runner = Runner(napari_viewer, self, [self._run], self._cancel, self._status)
        self._run.clicked.connect(self.run)
        self.state.model_changed.connect(self._fill_targets)
        self.state.class_selected.connect(self._class_selected)
        self._fill_targets()

    def _fill_targets(self, *_) -> None:
        try:
            current = self._target.currentText()
            self._target.clear()
        except RuntimeError:
            return
        names = list(self.state.model.class_names) if self.state.model is not None else []
        self._target.addItems([ALL_CLASSES, *names])
        if current in names:
            self._target.setCurrentText(current)

    def _class_selected(self, name: str) -> None:
        try:
            if self._target.findText(name) >= 0:
                self._target.setCurrentText(name)
        except RuntimeError:
            pass

    def set_methods(self, keys: Iterable[str]) -> None:
        _set_checked(self._methods, keys)

    def set_metrics(self, keys: Iterable[str]) -> None:
        _set_checked(self._metrics, keys)

    def run(self) -> FunctionWorker | None:
        """Evaluate in a worker; returns the worker (None if refused)."""
        image = self._image.layer()
        methods, metrics = _checked(self._methods), _checked(self._metrics)
        target = self._target.currentText()
        targets = None if target in ("", ALL_CLASSES) else [target]
        settings = {"n_subsets": self._subsets.value(), "n_noise": self._noise.value(), "seed": self._seed.value()}

        def make():
            if not methods or not metrics:
                raise Agg2ExpError("check at least one method and one metric")
            return evaluate_job(self.viewer, image, methods, metrics, targets, **settings)

        return self.runner.start(make, on_done=self.show_table)

    def show_table(self, table: pd.DataFrame) -> None:
        """Show an evaluation table (one row per method × class) in the results dock's Metrics tab."""
        self.table = table
        wide = metric_table(table)
        metric_cols = [c for c in wide.columns if c not in ("method", "target")]
        headers = ["method", "target"] + [self._metrics_info[c].title if c in self._metrics_info else c
                                          for c in metric_cols]
        skipped = table.attrs.get("skipped") if hasattr(table, "attrs") else None
        caption = f"absent classes not evaluated: {', '.join(skipped)}" if skipped else ""
        results = results_widget(self.viewer)
        results.show_metrics(wide, headers, caption)
        results.show_tab("Metrics")
        if skipped:
            self._status.setText(f"done (absent classes not evaluated: {', '.join(skipped)})")
