"""matplotlib figures in napari's theme: the theme's colours, re-colouring a figure, and
:class:`FigureView`, a Qt canvas with matplotlib's navigation toolbar (zoom, pan, save) that follows
theme changes and shows hover tooltips."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from matplotlib.backend_bases import MouseEvent
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.colors import same_color, to_rgb
from matplotlib.text import Text
from qtpy.QtCore import QSize
from qtpy.QtWidgets import QSizePolicy, QToolTip, QVBoxLayout, QWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure

__all__ = ["FigureView", "style_figure", "theme_colours"]

#: attribute of a figure recording the text colour it was last styled with (to restyle on theme change)
_STYLED = "_agg2exp_text_colour"


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
    """Re-colour a matplotlib figure for the napari theme (background, text, axes, legends).

    Text in matplotlib's default black, or in the text colour of the theme the figure was styled
    with before, takes the theme's text colour; text coloured on purpose keeps its colour.
    """
    bg, fg = colours["background"], colours["text"]
    before = getattr(fig, _STYLED, None)
    fig.patch.set_facecolor(bg)
    for ax in fig.axes:
        ax.set_facecolor(bg)
        ax.tick_params(colors=fg, which="both")
        for sp in ax.spines.values():
            sp.set_color(fg)
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    for leg in legends:
        if leg is not None:
            leg.get_frame().set_facecolor(bg)
            leg.get_frame().set_edgecolor(colours["highlight"])
    for t in fig.findobj(Text):
        c = t.get_color()
        if sum(to_rgb(c)) < 0.3 or (before is not None and same_color(c, before)):
            t.set_color(fg)
    setattr(fig, _STYLED, fg)


class FigureView(QWidget):
    """Shows a matplotlib Figure (Qt canvas + navigation toolbar) in napari's theme.

    Swap figures with :meth:`show_figure`; :meth:`clear` removes the figure (no stale chart).
    ``hover(artist) -> str | None`` (set with :meth:`show_figure`) gives the tooltip of the artist
    under the mouse.
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None, min_height: int = 160):
        super().__init__(parent)
        self.viewer = viewer
        self.canvas = None
        self.toolbar = None
        self.figure = None
        self._hover: Callable[[Artist], str | None] | None = None
        self._hover_artists: list = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        self.setMinimumHeight(min_height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        viewer.events.theme.connect(self._restyle)

    def sizeHint(self) -> QSize:
        return QSize(360, 320)

    def show_figure(self, fig: Figure, on_pick: Callable | None = None, on_click: Callable | None = None,
                    layout: str | None = "constrained",
                    hover: Callable[[Artist], str | None] | None = None) -> None:
        """Show ``fig``; ``layout`` (a matplotlib layout engine) re-fits it whenever the dock is resized,
        so labels are never clipped. ``hover`` gives tooltips of the artists it knows (others: None)."""
        if layout:
            fig.set_layout_engine(layout)
        style_figure(fig, theme_colours(self.viewer))
        self.clear()
        self.figure = fig
        self.canvas = FigureCanvasQTAgg(fig)
        # the figure takes the dock's size (its own size hint would make the window grow)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.canvas.setMinimumSize(120, 100)
        self.toolbar = NavigationToolbar2QT(self.canvas, self, coordinates=False)
        self.toolbar.setIconSize(QSize(16, 16))
        if on_pick is not None:
            self.canvas.mpl_connect("pick_event", on_pick)
        if on_click is not None:
            self.canvas.mpl_connect("button_press_event", on_click)
        self._hover = hover
        self._hover_artists = [a for ax in fig.axes for a in (*ax.patches, *ax.collections) if a.get_gid()]
        if hover is not None:
            self.canvas.mpl_connect("motion_notify_event", self._on_motion)
        self.layout().addWidget(self.toolbar)
        self.layout().addWidget(self.canvas, 1)
        self.canvas.draw_idle()

    def clear(self) -> None:
        """Remove the figure (and its toolbar)."""
        for w in (self.toolbar, self.canvas):
            if w is not None:
                self.layout().removeWidget(w)
                w.setParent(None)
                w.deleteLater()
        self.canvas = self.toolbar = self.figure = None
        self._hover_artists = []

    def tooltip_at(self, x: float, y: float) -> str | None:
        """The tooltip at display position ``(x, y)`` (matplotlib pixels), or None."""
        if self.canvas is None or self._hover is None:
            return None
        event = MouseEvent("motion_notify_event", self.canvas, x, y)
        for artist in self._hover_artists:
            if artist.contains(event)[0]:
                text = self._hover(artist)
                if text:
                    return text
        return None

    def _on_motion(self, event) -> None:
        if event.x is None or self.canvas is None:
            return
        text = self.tooltip_at(event.x, event.y)
        self.canvas.setToolTip(text or "")
        if text:
            from qtpy.QtGui import QCursor

            QToolTip.showText(QCursor.pos(), text, self.canvas)
        else:
            QToolTip.hideText()

    def _restyle(self, event=None) -> None:
        if self.figure is not None and self.canvas is not None:
            try:
                style_figure(self.figure, theme_colours(self.viewer))
                self.canvas.draw_idle()
            except RuntimeError:  # canvas deleted with the viewer
                pass
