"""matplotlib figures in napari's theme: the theme's colours, re-colouring a figure, and
:class:`FigureView`, a Qt canvas that follows theme changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.colors import to_rgb
from matplotlib.text import Text
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from matplotlib.figure import Figure

__all__ = ["FigureView", "style_figure", "theme_colours"]


def theme_colours(viewer: napari.Viewer) -> dict[str, str]:
    """Background, text and grid colours of the viewer's napari theme."""
    from napari.utils.theme import get_theme

    try:
        t = get_theme(viewer.theme)
    except Exception:  # noqa: BLE001 - unknown or custom theme name
        t = get_theme("dark")
    return {"background": t.background.as_hex(), "text": t.text.as_hex(), "foreground": t.foreground.as_hex(),
            "highlight": t.highlight.as_hex()}


def style_figure(fig: Figure, colours: dict[str, str]) -> None:
    """Re-colour a matplotlib figure for the napari theme (background, text, axes, legends)."""
    bg, fg = colours["background"], colours["text"]
    fig.patch.set_facecolor(bg)
    for ax in fig.axes:
        ax.set_facecolor(bg)
        ax.tick_params(colors=fg, which="both")
        for sp in ax.spines.values():
            sp.set_color(fg)
        leg = ax.get_legend()
        if leg is not None:
            leg.get_frame().set_facecolor(bg)
            leg.get_frame().set_edgecolor(colours["highlight"])
    for t in fig.findobj(Text):
        if sum(to_rgb(t.get_color())) < 0.3:  # matplotlib's default black text
            t.set_color(fg)


class FigureView(QWidget):
    """Shows a matplotlib Figure (Qt canvas) following napari's theme; swap figures with :meth:`show_figure`."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None, min_height: int = 260):
        super().__init__(parent)
        self.viewer = viewer
        self.canvas = None
        self.figure = None
        self._pick_handler: Callable | None = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.setMinimumHeight(min_height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        viewer.events.theme.connect(self._restyle)

    def show_figure(self, fig: Figure, on_pick: Callable | None = None, on_click: Callable | None = None,
                    layout: str | None = "tight") -> None:
        """Show ``fig``; ``layout`` (a matplotlib layout engine) re-fits it whenever the dock is resized."""
        if layout:
            fig.set_layout_engine(layout)
        style_figure(fig, theme_colours(self.viewer))
        old = self.canvas
        self.figure = fig
        self.canvas = FigureCanvasQTAgg(fig)
        # the figure takes the dock's size (its own size hint would make the window grow)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.canvas.setMinimumSize(120, 120)
        if on_pick is not None:
            self.canvas.mpl_connect("pick_event", on_pick)
        if on_click is not None:
            self.canvas.mpl_connect("button_press_event", on_click)
        self.layout().addWidget(self.canvas)
        if old is not None:
            self.layout().removeWidget(old)
            old.setParent(None)
            old.deleteLater()
        self.canvas.draw_idle()

    def _restyle(self, event=None) -> None:
        if self.figure is not None and self.canvas is not None:
            try:
                style_figure(self.figure, theme_colours(self.viewer))
                self.canvas.draw_idle()
            except RuntimeError:  # canvas deleted with the viewer
                pass
