"""Model widget: the bundled default model, a model folder, or a TorchScript file + label names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QCheckBox, QComboBox, QLabel

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.loading import available_devices
from napari_agg2exp.viewer.jobs import load_model_job
from napari_agg2exp.viewer.widgets.base import PluginWidget, run_row
from napari_agg2exp.viewer.widgets.runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import FunctionWorker

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = ["ModelWidget"]

SOURCES = ("Bundled default", "Model folder", "TorchScript + labels")


def describe_model(model: SegmentationModel | None) -> str:
    if model is None:
        return "No model loaded (Segment / Explain load the bundled default when needed)."
    names = ", ".join(model.class_names)
    return (f"<b>{model.source or 'model'}</b><br>{model.num_classes} classes on {model.device}, "
            f"window {'×'.join(str(v) for v in model.window_size)}<br><small>{names}</small>")


class ModelWidget(PluginWidget):
    """Choose and load the segmentation model used by the other widgets of this viewer.

    The device list shows only the devices that exist here (``auto``: cuda > mps > cpu).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        from magicgui.widgets import FileEdit

        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        lay, form = self._frame()
        self._source = QComboBox()
        self._source.addItems(SOURCES)
        form.addRow("Source", self._source)
        self._folder = FileEdit(mode="d", label="Model folder")
        self._script = FileEdit(mode="r", label="TorchScript file", filter="*.pt *.pth *.ts *.torchscript")
        self._labels = FileEdit(mode="r", label="Label names (JSON)", filter="*.json")
        self._folder_label, self._script_label, self._labels_label = (
            QLabel("Folder"), QLabel("TorchScript"), QLabel("Labels JSON"))
        form.addRow(self._folder_label, self._folder.native)
        form.addRow(self._script_label, self._script.native)
        form.addRow(self._labels_label, self._labels.native)
        self._device = QComboBox()
        self._device.addItems(["auto", *available_devices()])
        self._device.setToolTip("auto = cuda > mps > cpu; only devices present on this machine are listed")
        form.addRow("Device", self._device)
        self._trust = QCheckBox("Trust pickle checkpoints (runs code from the file!)")
        form.addRow(self._trust)
        self._load, self._cancel, self._status = run_row(lay, "Load model")
        self._info = QLabel(describe_model(self.state.model))
        self._info.setWordWrap(True)
        lay.addWidget(self._info)
        lay.addStretch(1)
        self.runner = Runner(napari_viewer, self, [self._load], self._cancel, self._status)
        self._source.currentIndexChanged.connect(self._source_changed)
        self._load.clicked.connect(self.load)
        self.state.model_changed.connect(self._model_changed)
        self._source_changed()

    def _source_changed(self, *_) -> None:
        src = self._source.currentText()
        for w, lab, shown in ((self._folder, self._folder_label, src == SOURCES[1]),
                              (self._script, self._script_label, src == SOURCES[2]),
                              (self._labels, self._labels_label, src == SOURCES[2])):
            w.native.setVisible(shown)
            lab.setVisible(shown)

    def load(self) -> FunctionWorker | None:
        """Load the chosen model in a worker; returns the worker (None if refused)."""
        src = self._source.currentText()
        device = self._device.currentText()

        def make():
            kwargs = {"device": device, "trust_checkpoint": self._trust.isChecked()}
            if src == SOURCES[0]:
                return load_model_job(self.viewer, None, **kwargs)
            if src == SOURCES[1]:
                return load_model_job(self.viewer, _path(self._folder.value, "model folder"), **kwargs)
            return load_model_job(self.viewer, _path(self._script.value, "TorchScript file"),
                                      label_names=_path(self._labels.value, "label names file"), **kwargs)

        return self.runner.start(make)

    def _model_changed(self, model) -> None:
        try:
            self._info.setText(describe_model(model))
        except RuntimeError:  # widget already deleted
            pass


def _path(value, what: str) -> str:
    text = str(value or "").strip()
    if text in ("", "."):
        raise Agg2ExpError(f"choose a {what} first")
    return text
