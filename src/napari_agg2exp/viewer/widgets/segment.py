"""Segment widget: an image layer -> a Labels layer on the image's grid, class names in ``features``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QDoubleSpinBox, QLabel

from napari_agg2exp.viewer.jobs import segment_job
from napari_agg2exp.viewer.layer_lookup import layer_kind
from napari_agg2exp.viewer.widgets.base import LayerCombo, PluginWidget, run_row
from napari_agg2exp.viewer.widgets.model import describe_model
from napari_agg2exp.viewer.widgets.runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import FunctionWorker

__all__ = ["SegmentWidget", "is_scan"]


def is_scan(layer: napari.layers.Layer) -> bool:
    """A 3D scan: an Image layer that is not an attribution map of this plugin."""
    from napari.layers import Image

    return isinstance(layer, Image) and layer_kind(layer) is None and not layer.rgb


class SegmentWidget(PluginWidget):
    """Segment an image layer with the session's model (sliding window, in a thread worker)."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        lay, form = self._frame()
        self._image = LayerCombo(napari_viewer, is_scan)
        form.addRow("Image", self._image)
        self._image.bind(self.state.selection)
        self._overlap = QDoubleSpinBox()
        self._overlap.setRange(0.0, 0.9)
        self._overlap.setSingleStep(0.05)
        self._overlap.setValue(0.25)
        form.addRow("Window overlap", self._overlap)
        self._run, self._cancel, self._status = run_row(lay, "Segment")
        self._model = QLabel(describe_model(self.state.model))
        self._model.setWordWrap(True)
        lay.addWidget(self._model)
        lay.addStretch(1)
        self.runner = Runner(napari_viewer, self, [self._run], self._cancel, self._status)
        self._run.clicked.connect(self.run)
        self.state.model_changed.connect(self._model_changed)

    def run(self) -> FunctionWorker | None:
        """Segment the chosen image in a worker; returns the worker (None if refused)."""
        image = self._image.layer()
        overlap = self._overlap.value()
        return self.runner.start(lambda: segment_job(self.viewer, image, overlap=overlap))

    def _model_changed(self, model) -> None:
        try:
            self._model.setText(describe_model(model))
        except RuntimeError:
            pass
