"""Explain widget: method (from the registry) and its parameters, classes, run with progress + Cancel.

The method list and each method's parameter form come from
:data:`napari_agg2exp.attribution.explainer.METHODS` (paper defaults): a method added to the registry
appears here without new widget code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from napari_agg2exp.attribution.explainer import METHODS
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.display import select_class
from napari_agg2exp.viewer.jobs import explain_job, explain_parameters
from napari_agg2exp.viewer.layer_lookup import find_layer
from napari_agg2exp.viewer.widgets.base import LayerCombo, PluginWidget, run_row
from napari_agg2exp.viewer.widgets.runner import Runner
from napari_agg2exp.viewer.widgets.segment import is_scan

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    import napari
    from magicgui.widgets.bases import ValueWidget
    from napari.qt.threading import FunctionWorker

__all__ = ["ExplainWidget", "parameter_widget"]


def parameter_widget(name: str, default: Any) -> ValueWidget:
    """A magicgui value widget for one method parameter (wide numeric ranges)."""
    from magicgui.widgets import create_widget

    options: dict[str, Any] = {}
    if isinstance(default, bool):
        pass
    elif isinstance(default, int):
        options = {"min": 0 if name == "seed" else 1, "max": 1_000_000}
    elif isinstance(default, float):
        options = {"min": -1e6, "max": 1e6, "step": 0.01}
    return create_widget(value=default, name=name, label=name.replace("_", " "), options=options)


class ExplainWidget(PluginWidget):
    """Explain the segmentation of an image layer with an attribution method (one map per class)."""

    def __init__(self, napari_viewer: napari.Viewer):
        from magicgui.widgets import Container

        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        lay, form = self._frame()
        self._image = LayerCombo(napari_viewer, is_scan)
        form.addRow("Image", self._image)
        self._method = QComboBox()
        for key, info in METHODS.items():
            self._method.addItem(info.title, key)
        form.addRow("Method", self._method)
        self._doc = QLabel()
        self._doc.setOpenExternalLinks(True)
        form.addRow("", self._doc)
        self._params = Container(labels=True)
        self._params.native.layout().setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._params.native)
        lay.addWidget(QLabel("Classes (checked = explained; absent classes are skipped):"))
        self._classes = QListWidget()
        self._classes.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self._classes.setMinimumHeight(120)
        lay.addWidget(self._classes)
        row = QHBoxLayout()
        self._all = QPushButton("All")
        self._present = QPushButton("Present in prediction")
        self._none = QPushButton("None")
        for b in (self._all, self._present, self._none):
            row.addWidget(b)
        lay.addLayout(row)
        self._run, self._cancel, self._status = run_row(lay, "Explain")
        lay.addStretch(1)
        self.runner = Runner(napari_viewer, self, [self._run], self._cancel, self._status)

        self._method.currentIndexChanged.connect(self._method_changed)
        self._image.currentTextChanged.connect(self._fill_classes)
        self._all.clicked.connect(lambda: self._check(lambda n: True))
        self._none.clicked.connect(lambda: self._check(lambda n: False))
        self._present.clicked.connect(lambda: self._check(self._present_names().__contains__))
        self._classes.currentItemChanged.connect(self._item_selected)
        self._run.clicked.connect(self.run)
        self.state.model_changed.connect(self._fill_classes)
        self.state.class_selected.connect(self._class_selected)
        self._method_changed()
        self._fill_classes()

    # ---- method and parameters
    @property
    def method(self) -> str:
        return self._method.currentData()

    def set_method(self, key: str) -> None:
        self._method.setCurrentIndex(self._method.findData(key))

    def _method_changed(self, *_) -> None:
        info = METHODS[self.method]
        self._doc.setText(f'<a href="{info.doc_url}">{info.title}: reference</a>')
        self._params.clear()
        for name, default in explain_parameters(self.method).items():
            self._params.append(parameter_widget(name, default))
        self._params.native.setVisible(len(self._params) > 0)

    def parameters(self) -> dict[str, Any]:
        return {w.name: w.value for w in self._params}

    def set_parameter(self, name: str, value: Any) -> None:
        self._params[name].value = value

    # ---- classes
    def _present_names(self) -> set[str]:
        model = self.state.model
        image = self._image.layer()
        pred = find_layer(self.viewer, "prediction", image.name) if image is not None else None
        if model is None or pred is None:
            return set()
        ids = np.unique(np.asarray(pred.data))
        return {model.class_names[i] for i in ids if 0 <= i < model.num_classes}

    def _fill_classes(self, *_) -> None:
        try:
            self._classes.clear()
        except RuntimeError:
            return
        model = self.state.model
        if model is None:
            item = QListWidgetItem("(no model loaded: all classes present in the prediction)")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self._classes.addItem(item)
            return
        present = self._present_names()
        for name in model.class_names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if not present or name in present else Qt.CheckState.Unchecked)
            self._classes.addItem(item)

    def _items(self) -> list[QListWidgetItem]:
        return [self._classes.item(i) for i in range(self._classes.count())
                if self._classes.item(i).flags() & Qt.ItemFlag.ItemIsUserCheckable]

    def _check(self, pred) -> None:
        for item in self._items():
            item.setCheckState(Qt.CheckState.Checked if pred(item.text()) else Qt.CheckState.Unchecked)

    def set_targets(self, names: Iterable[str]) -> None:
        wanted = set(names)
        self._check(wanted.__contains__)

    def targets(self) -> list[str] | None:
        """Checked classes; None when every class is checked (= every class present)."""
        items = self._items()
        checked = [i.text() for i in items if i.checkState() == Qt.CheckState.Checked]
        if not items or len(checked) == len(items):
            return None
        if not checked:
            raise Agg2ExpError("no class is checked -- check the classes to explain")
        return checked

    def _item_selected(self, item, _previous=None) -> None:
        if item is not None and item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
            select_class(self.viewer, item.text())

    def _class_selected(self, name: str) -> None:
        try:
            for item in self._items():
                if item.text() == name and self._classes.currentItem() is not item:
                    self._classes.setCurrentItem(item)
        except RuntimeError:
            pass

    # ---- run
    def run(self) -> FunctionWorker | None:
        """Explain the chosen image in a worker; returns the worker (None if refused)."""
        image = self._image.layer()
        method = self.method

        def make():
            return explain_job(self.viewer, image, method, self.targets(), **self.parameters())

        return self.runner.start(make, on_done=lambda _layers: self._fill_classes())
