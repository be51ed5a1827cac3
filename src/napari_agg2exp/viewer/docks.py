"""The plugin's dock widgets by display name (as in ``napari.yaml``), opened from scripts, and the
viewer's one results dock.

The only scripted entry point that needs Qt (napari opens the dock widget).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer.session import session

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.viewer.widgets.base import PluginWidget
    from napari_agg2exp.viewer.widgets.results import ResultsWidget

__all__ = ["MAIN", "PLUGIN", "RESULTS", "WIDGETS", "cohort_section", "open_widget", "results_widget"]

#: npe2 plugin name and the display names of its dock widgets (as in ``napari.yaml``).
PLUGIN = "napari-agg2exp"
#: the main panel (every section in one compact widget) and the results dock (plots and tables)
MAIN, RESULTS = "Agg2Exp", "Results"
#: width of the panel's column (px): the canvas keeps most of a 1920 px screen
PANEL_WIDTH = 460
WIDGETS = (MAIN, RESULTS, "Model", "Segment", "Explain", "RoI importance", "Cohort & graph", "Evaluate")


def open_widget(viewer: napari.Viewer, name: str) -> PluginWidget:
    """Open (or find) one of the plugin's dock widgets by display name; returns the widget."""
    if name not in WIDGETS:
        raise Agg2ExpError(f"unknown widget {name!r}; widgets: {', '.join(WIDGETS)}")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _main_dock(viewer: napari.Viewer):
    docks = getattr(viewer.window, "_wrapped_dock_widgets", {})
    return docks.get(f"{MAIN} ({PLUGIN})")


def cohort_section(viewer: napari.Viewer) -> PluginWidget:
    """The Cohort section of the open main panel, else the "Cohort & graph" dock (opened)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    dock = _main_dock(viewer)
    if dock is not None:
        return dock.inner_widget().cohort
    return open_widget(viewer, "Cohort & graph")


def _alive(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:  # deleted with its dock
        return False
    return True


def results_widget(viewer: napari.Viewer) -> ResultsWidget:
    """The viewer's results dock (opened under the main panel if that is open); made on first use."""
    from qtpy.QtCore import Qt

    viewer = getattr(viewer, "__wrapped__", viewer)  # plugin widgets get a public-only proxy of the viewer
    state = session(viewer)
    if state.results is not None and _alive(state.results):
        dock = _dock_of(state.results)
        if dock is not None and not dock.isVisible():
            dock.show()
        return state.results
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, RESULTS)
    panel = _main_dock(viewer)
    if panel is not None and panel is not dock:
        from qtpy.QtCore import QTimer

        main = viewer.window._qt_window
        main.splitDockWidget(panel, dock, Qt.Orientation.Vertical)

        def share() -> None:  # the panel's controls are short; the plots get the larger part
            try:
                h = max(main.height() - 120, 400)
                main.resizeDocks([panel, dock], [int(0.42 * h), int(0.58 * h)], Qt.Orientation.Vertical)
                main.resizeDocks([panel], [PANEL_WIDTH], Qt.Orientation.Horizontal)
            except RuntimeError:  # window closed meanwhile
                pass

        share()
        QTimer.singleShot(0, share)
    return widget


def _dock_of(widget):
    from qtpy.QtWidgets import QDockWidget

    p = widget.parent()
    while p is not None and not isinstance(p, QDockWidget):
        p = p.parent()
    return p
