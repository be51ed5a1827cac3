"""Shared widget parts: the dock widgets' base class, the Run / Cancel row, layer pickers and error
notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QBoxLayout,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.session import session

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["LayerCombo", "PluginWidget", "notify_error", "plain_viewer", "run_row"]

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


class PluginWidget(QWidget):
    """Base of the dock widgets: the plain viewer and this viewer's session (model, results)."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = plain_viewer(napari_viewer)
        self.state = session(self.viewer)

    def _frame(self) -> tuple[QVBoxLayout, QFormLayout]:
        """The widget's vertical layout with a form at its top."""
        lay = QVBoxLayout(self)
        form = QFormLayout()
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

