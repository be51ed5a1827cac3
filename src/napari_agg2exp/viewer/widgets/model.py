"""Model section: the bundled default model, a model folder (agg2exp, MONAI bundle or nnU-Net), or a
TorchScript file + label names; and a button making this plugin napari's reader for NIfTI files."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QComboBox, QLabel, QPushButton

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models import loading as models
from napari_agg2exp.models.loading import available_devices
from napari_agg2exp.viewer.docks import PLUGIN
from napari_agg2exp.viewer.jobs import Job, load_model_job
from napari_agg2exp.viewer.session import session
from napari_agg2exp.viewer.widgets.base import PluginWidget, run_row
from napari_agg2exp.viewer.widgets.runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import FunctionWorker

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = ["NIFTI_PATTERNS", "ModelWidget", "load_options", "nifti_reader_is_default", "set_default_nifti_reader"]

SOURCES = ("Bundled default", "Model folder", "TorchScript + labels")
#: napari's reader-preference patterns this plugin can take over
NIFTI_PATTERNS = ("*.nii.gz", "*.nii")


def load_options() -> set[str]:
    """Optional keywords of :func:`~napari_agg2exp.models.loading.load_model` this install supports
    (``trust_bundle``, ``tta``): the Model section shows a checkbox for each."""
    params = inspect.signature(models.load_model).parameters
    return {k for k in ("trust_bundle", "tta") if k in params}


def set_default_nifti_reader() -> None:
    """Make this plugin napari's reader for ``.nii.gz`` / ``.nii`` (napari's setting
    ``plugins.extension2reader``, saved with napari's preferences): File › Open and ``viewer.open(path)``
    then use it without asking."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader, **dict.fromkeys(NIFTI_PATTERNS, PLUGIN)}


def nifti_reader_is_default() -> bool:
    from napari.settings import get_settings

    return get_settings().plugins.extension2reader.get("*.nii.gz") == PLUGIN


def _load_job(viewer: napari.Viewer, path: str | None, options: dict[str, Any], **kwargs: Any) -> Job:
    """:func:`~napari_agg2exp.viewer.jobs.load_model_job`, or the same with ``options`` passed to
    ``load_model`` (trust_bundle, tta) when any is set."""
    if not options:
        return load_model_job(viewer, path, **kwargs)
    if path is None:
        raise Agg2ExpError("bundle / test-time options apply to a model folder -- choose 'Model folder'")
    state = session(viewer)

    def compute(progress, cancel):
        return models.load_model(path, **kwargs, **options)

    return Job("Load model", compute, lambda m: (state.set_model(m), m)[1])


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
        self._folder_label.setToolTip("an agg2exp model folder (model.json), a MONAI bundle folder or an nnU-Net "
                                      "results folder")
        self._folder.native.setToolTip(self._folder_label.toolTip())
        form.addRow(self._folder_label, self._folder.native)
        form.addRow(self._script_label, self._script.native)
        form.addRow(self._labels_label, self._labels.native)
        self._device = QComboBox()
        self._device.addItems(["auto", *available_devices()])
        self._device.setToolTip("auto = cuda > mps > cpu; only devices present on this machine are listed")
        form.addRow("Device", self._device)
        self._trust = QCheckBox("Trust pickle checkpoints (runs code from the file!)")
        form.addRow(self._trust)
        supported = load_options()
        self._trust_bundle = QCheckBox("Trust bundle code ($ expressions, custom modules: runs code!)")
        self._trust_bundle.setToolTip("a MONAI bundle's config may run Python code; allow it only for bundles you trust")
        self._tta = QCheckBox("Test-time mirroring (nnU-Net; slower)")
        for box, key in ((self._trust_bundle, "trust_bundle"), (self._tta, "tta")):
            box.setVisible(key in supported)
            form.addRow(box)
        self._reader = QPushButton("Open .nii.gz with this plugin by default")
        self._reader.setToolTip("sets napari's preference plugins.extension2reader['*.nii.gz'] (File › Open and "
                                "viewer.open then stop asking which reader to use)")
        self._reader.clicked.connect(self._set_reader)
        self._load, self._cancel, self._status = run_row(lay, "Load model")
        self._info = QLabel(describe_model(self.state.model))
        self._info.setWordWrap(True)
        lay.addWidget(self._info)
        lay.addWidget(self._reader)
        lay.addStretch(1)
        self._reader_changed()
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

        supported = load_options()
        options = {k: True for k, box in (("trust_bundle", self._trust_bundle), ("tta", self._tta))
                   if k in supported and box.isChecked()}

        def make():
            kwargs = {"device": device, "trust_checkpoint": self._trust.isChecked()}
            if src == SOURCES[0]:
                return _load_job(self.viewer, None, options, **kwargs)
            if src == SOURCES[1]:
                return _load_job(self.viewer, _path(self._folder.value, "model folder"), options, **kwargs)
            return _load_job(self.viewer, _path(self._script.value, "TorchScript file"), options,
                             label_names=_path(self._labels.value, "label names file"), **kwargs)

        return self.runner.start(make)

    def _set_reader(self) -> None:
        set_default_nifti_reader()
        show_info(f"{PLUGIN} now opens .nii.gz / .nii files (napari preferences › plugins › extension2reader)")
        self._reader_changed()

    def _reader_changed(self) -> None:
        default = nifti_reader_is_default()
        self._reader.setEnabled(not default)
        self._reader.setText("This plugin opens .nii.gz by default" if default
                             else "Open .nii.gz with this plugin by default")

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
