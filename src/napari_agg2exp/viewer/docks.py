"""The plugin's dock widgets by display name (as in ``napari.yaml``), opened from scripts.

The only scripted entry point that needs Qt (napari opens the dock widget).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_agg2exp.errors import Agg2ExpError

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.viewer.widgets.base import PluginWidget

__all__ = ["PLUGIN", "WIDGETS", "open_widget"]

#: npe2 plugin name and the display names of its dock widgets (as in ``napari.yaml``).
PLUGIN = "napari-agg2exp"
WIDGETS = ("Model", "Segment", "Explain", "RoI importance", "Cohort & graph", "Evaluate")


def open_widget(viewer: napari.Viewer, name: str) -> PluginWidget:
    """Open (or find) one of the plugin's dock widgets by display name; returns the widget."""
    if name not in WIDGETS:
        raise Agg2ExpError(f"unknown widget {name!r}; widgets: {', '.join(WIDGETS)}")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget
