"""Shared widget parts: the dock widgets' base class, the Run / Cancel row, layer pickers and error
notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QBoxLayout,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.display import select_class
from napari_agg2exp.viewer.layer_lookup import all_attribution_layers, provenance
from napari_agg2exp.viewer.session import session

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["LayerCombo", "PluginWidget", "label_colour", "notify_error", "plain_viewer", "run_row", "scrolled",
           "show_target"]

log = logging.getLogger(__name__)


def plain_viewer(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer itself from the public-only proxy napari hands to plugin widgets.

    The proxy makes a new wrapper at each attribute access, so layers fetched through it are never
    identical (``is``) to the layers of the viewer; the widgets use only public viewer API either way.
    """
    return getattr(viewer, "__wrapped__", viewer)


def notify_error(exc: BaseException, title: str = "") -> None:
    """Show an exception as a napari notification (user errors as they are, others with their type)."""
    if isinstance(exc, Agg2ExpError):
        show_error(str(exc))
    else:
        log.debug("%s failed", title, exc_info=exc)
        show_error(f"{title + ' failed: ' if title else ''}{type(exc).__name__}: {exc}")


def show_target(viewer: napari.Viewer, name: str | None, case: str | None = None) -> None:
    """Select class ``name`` everywhere and show its map; the active layer follows the shown map
    (of image ``case`` when given, else of any image)."""
    if not name:
        return
    select_class(viewer, name)
    shown = [ly for ly in viewer.layers if ly.visible and provenance(ly).get("kind") == "attribution"
             and (case is None or provenance(ly).get("image") == case)]
    if case is not None and not shown and case in viewer.layers:
        shown = [ly for ly in all_attribution_layers(viewer, case) if ly.visible]
    if shown:
        best = next((ly for ly in shown if provenance(ly).get("target") == name), shown[0])
        if viewer.layers.selection.active is not best:
            # next event-loop turn: a layer just inserted gets its layer controls first
            QTimer.singleShot(0, lambda: _activate(viewer, best))


def _activate(viewer: napari.Viewer, layer: napari.layers.Layer) -> None:
    if layer in viewer.layers and viewer.layers.selection.active is not layer:
        viewer.layers.selection.active = layer


def label_colour(layer: napari.layers.Labels, label: int) -> str | None:
    """``#rrggbb`` of a label in a Labels layer's colormap (None if it has none)."""
    try:  # the colormap's own colours: mapping hides the other labels while "show selected label" is on
        direct = getattr(layer.colormap, "color_dict", None)
        if direct and int(label) in direct:
            rgba = np.asarray(direct[int(label)], float).ravel()[:4]
        else:
            rgba = np.asarray(layer.colormap.map(np.asarray([int(label)], dtype=layer.data.dtype)), float).ravel()[:4]
    except Exception:  # noqa: BLE001 - napari versions differ; a bar without colour is fine
        return None
    if rgba.size < 3 or (rgba.size == 4 and rgba[3] == 0):
        return None
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])


def scrolled(widget: QWidget) -> QScrollArea:
    """``widget`` in a frameless vertical scroll area (a dock section never forces the window taller)."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(widget)
    area.setMinimumHeight(60)
    return area


class PluginWidget(QWidget):
    """Base of the dock widgets: the plain viewer and this viewer's session (model, results)."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = plain_viewer(napari_viewer)
        self.state = session(self.viewer)

    def _frame(self) -> tuple[QVBoxLayout, QFormLayout]:
        """The section's vertical layout with a form at its top, in a scroll area (so a section, in the
        panel or as its own dock, never forces the window taller than the screen)."""
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        inner = QWidget()
        outer.addWidget(scrolled(inner))
        lay = QVBoxLayout(inner)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        lay.addLayout(form)
        return lay, form


def run_row(parent_layout: QBoxLayout, run_text: str = "Run") -> tuple[QPushButton, QPushButton, QLabel]:
    """A Run / Cancel button row and a status line under it."""
    run, cancel = QPushButton(run_text), QPushButton("Cancel")
    row = QHBoxLayout()
    row.addWidget(run)
    row.addWidget(cancel)
    parent_layout.addLayout(row)
    status = QLabel("")
    status.setWordWrap(True)
    status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    parent_layout.addWidget(status)
    return run, cancel, status


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept(layer)``, kept in sync with the layer list.

    Args:
        viewer: the viewer.
        accept: layer filter.
        extra: fixed entries listed first (e.g. ``"prediction"``).
    """

    def __init__(self, viewer: napari.Viewer, accept: Callable[[Any], bool], extra: tuple[str, ...] = (),
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer, self.accept, self.extra = viewer, accept, extra
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        for ev in ("inserted", "removed", "moved", "changed", "renamed"):
            emitter = getattr(viewer.layers.events, ev, None)
            if emitter is not None:
                emitter.connect(self.refresh)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self.refresh()

    def names(self) -> list[str]:
        return [self.itemText(i) for i in range(self.count())]

    def bind(self, selection: Any, field: str = "case") -> None:
        """Keep this box and ``selection.<field>`` (an evented dataclass field) in step, both ways."""
        if getattr(selection, field) in self.names():
            self.setCurrentText(getattr(selection, field))
        elif self.currentText():
            setattr(selection, field, self.currentText())
        self.currentTextChanged.connect(lambda name: setattr(selection, field, name) if name else None)
        getattr(selection.events, field).connect(self._follow_selection)

    def _follow_selection(self, name: Any) -> None:
        try:
            if name and name != self.currentText() and name in self.names():
                self.setCurrentText(name)
        except RuntimeError:  # widget deleted with the viewer
            pass

    def refresh(self, *_: Any) -> None:
        try:
            current = self.currentText()
            wanted = list(self.extra) + [ly.name for ly in self.viewer.layers if self.accept(ly)]
        except RuntimeError:  # widget deleted with the viewer
            return
        if wanted == self.names():
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(wanted)
        if current in wanted:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def _follow_active(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        try:
            if layer is not None and self.accept(layer) and layer.name in self.names():
                self.setCurrentText(layer.name)
        except RuntimeError:
            pass

    def layer(self) -> napari.layers.Layer | None:
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

