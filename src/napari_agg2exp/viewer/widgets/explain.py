"""Explain widget: method (from the registry) and its parameters, classes, run with progress + Cancel.

The method list and each method's parameter form come from
:data:`napari_agg2exp.attribution.explainer.METHODS` (paper defaults): a method added to the registry
appears here without new widget code.
"""

from __future__ import annotations

import inspect
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
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.jobs import explain_job, explain_parameters
from napari_agg2exp.viewer.layer_lookup import find_layer, layer_kind
from napari_agg2exp.viewer.layers import layer_affine, layer_volume
from napari_agg2exp.viewer.widgets.base import LayerCombo, PluginWidget, run_row, show_target
from napari_agg2exp.viewer.widgets.runner import Runner
from napari_agg2exp.viewer.widgets.segment import is_scan

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    import napari
    from magicgui.widgets.bases import ValueWidget
    from napari.qt.threading import FunctionWorker

__all__ = ["NO_REGION", "ExplainWidget", "parameter_widget", "region_volume"]

#: the region picker's first entry: explain each class over its whole prediction
NO_REGION = "whole class"


def _is_region_layer(layer) -> bool:
    from napari.layers import Labels, Shapes

    return (isinstance(layer, Labels) and layer_kind(layer) != "prediction") or isinstance(layer, Shapes)


def region_volume(layer: napari.layers.Labels | napari.layers.Shapes, image: napari.layers.Image) -> Volume:
    """A region layer as a label volume: a Labels layer as it is (its own grid and affine), a Shapes
    layer rasterised to a mask on the image's grid (each shape on the slice it was drawn on)."""
    from napari.layers import Labels, Shapes

    if isinstance(layer, Labels):
        vol = layer_volume(layer)
        if not np.any(vol.array):
            raise Agg2ExpError(f"region layer {layer.name!r} is empty -- paint the region first")
        return Volume(np.asarray(vol.array).copy(), vol.affine, layer.name)
    if not isinstance(layer, Shapes) or len(layer.data) == 0:
        raise Agg2ExpError(f"region layer {layer.name!r} has no shape -- draw the region first")
    shape = tuple(image.data.shape[-3:])
    data = []
    for verts in layer.data:
        v = np.asarray(verts, float)
        if v.shape[1] < 3:
            raise Agg2ExpError(f"region layer {layer.name!r} is 2D -- draw the shapes on the 3D scan")
        world = np.array([layer.data_to_world(p) for p in v])
        data.append(np.array([image.world_to_data(p) for p in world])[:, -3:])
    mask = Shapes(data, shape_type=list(layer.shape_type), ndim=3).to_labels(labels_shape=shape)
    if not np.any(mask):
        raise Agg2ExpError(f"the shapes of {layer.name!r} lie outside {image.name!r} -- draw them on the scan")
    return Volume((mask > 0).astype(np.uint8), layer_affine(image), layer.name)


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
        self._image.bind(self.state.selection)
        self._region = LayerCombo(napari_viewer, _is_region_layer, extra=(NO_REGION,))
        self._region.setToolTip("explain each class's score over (its prediction ∩ this region) only: paint a "
                                "Labels layer or draw a Shapes layer (e.g. one nodule)")
        form.addRow("Region", self._region)
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
        classes_label = QLabel("Classes (checked = explained; absent classes are skipped):")
        classes_label.setWordWrap(True)
        lay.addWidget(classes_label)
        self._classes = QListWidget()
        self._classes.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self._classes.setMinimumHeight(80)
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
        self._classes.itemChanged.connect(self._remember)
        self._run.clicked.connect(self.run)
        self.state.model_changed.connect(self._fill_classes)
        napari_viewer.layers.events.inserted.connect(
            lambda *_: self._fill_classes() if getattr(self, "_chosen", None) is None else None)
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
        # the user's choice is kept between runs; by default the foreground classes present in the prediction
        chosen = getattr(self, "_chosen", None)
        present = self._present_names() - {model.class_names[0]} if chosen is None else set()
        self._classes.blockSignals(True)
        for name in model.class_names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = name in chosen if chosen is not None else (name in present if present else True)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self._classes.addItem(item)
        self._classes.blockSignals(False)

    def _remember(self, *_) -> None:
        """The user (un)checked a class: keep that choice for the next runs and images."""
        self._chosen = {i.text() for i in self._items() if i.checkState() == Qt.CheckState.Checked}

    def _items(self) -> list[QListWidgetItem]:
        return [self._classes.item(i) for i in range(self._classes.count())
                if self._classes.item(i).flags() & Qt.ItemFlag.ItemIsUserCheckable]

    def _check(self, pred) -> None:
        for item in self._items():
            item.setCheckState(Qt.CheckState.Checked if pred(item.text()) else Qt.CheckState.Unchecked)

    def set_targets(self, names: Iterable[str]) -> None:
        wanted = set(names)
        self._check(wanted.__contains__)

    def targets(self) -> list[str] | str | None:
        """Checked classes; ``"all"`` when every class is checked (= every class present); None when
        no model is loaded yet (the job's default: the foreground classes present)."""
        items = self._items()
        checked = [i.text() for i in items if i.checkState() == Qt.CheckState.Checked]
        if not items:
            return None
        if not checked:
            raise Agg2ExpError("no class is checked -- check the classes to explain")
        return "all" if len(checked) == len(items) else checked

    def _item_selected(self, item, _previous=None) -> None:
        if item is not None and item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
            show_target(self.viewer, item.text(), self._image.currentText() or None)

    def _class_selected(self, name: str) -> None:
        try:
            for item in self._items():
                if item.text() == name and self._classes.currentItem() is not item:
                    self._classes.blockSignals(True)  # selected elsewhere: no second select_class
                    self._classes.setCurrentItem(item)
                    self._classes.blockSignals(False)
        except RuntimeError:
            pass

    # ---- run
    def run(self) -> FunctionWorker | None:
        """Explain the chosen image in a worker; returns the worker (None if refused)."""
        image = self._image.layer()
        method = self.method
        region = self._region.layer() if self._region.currentText() != NO_REGION else None

        def make():
            kwargs = self.parameters()
            if region is not None:
                if image is None:
                    raise Agg2ExpError("choose the image to explain first")
                if "target_region" not in inspect.signature(explain_job).parameters:
                    raise Agg2ExpError("this version's explain takes no region -- choose 'whole class'")
                kwargs["target_region"] = region_volume(region, image)
            return explain_job(self.viewer, image, method, self.targets(), **kwargs)

        return self.runner.start(make)
