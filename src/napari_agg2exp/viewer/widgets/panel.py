"""The main panel: every section of the plugin in one compact dock (tabs Model · Segment · Explain ·
RoIs · Cohort · Evaluate), with one results dock for plots and tables opened under it.

Each section scrolls on its own, so the panel never makes the window taller than the screen; the
results dock follows the section shown (RoIs, Cohort, Metrics). Every section shares the viewer's
:class:`~napari_agg2exp.viewer.session.Selection` (case, class, RoI source, measure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import QTabWidget, QVBoxLayout

from napari_agg2exp.viewer.docks import PANEL_WIDTH, results_widget
from napari_agg2exp.viewer.widgets.base import PluginWidget
from napari_agg2exp.viewer.widgets.cohort import CohortGraphWidget
from napari_agg2exp.viewer.widgets.evaluate import EvaluateWidget
from napari_agg2exp.viewer.widgets.explain import ExplainWidget
from napari_agg2exp.viewer.widgets.model import ModelWidget
from napari_agg2exp.viewer.widgets.roi import RoiImportanceWidget
from napari_agg2exp.viewer.widgets.segment import SegmentWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.viewer.widgets.results import ResultsWidget

__all__ = ["PANEL_WIDTH", "SECTIONS", "Agg2ExpPanel"]

#: tab titles of the sections, in workflow order
SECTIONS = ("Model", "Segment", "Explain", "RoIs", "Cohort", "Evaluate")
#: the results tab shown with each section
_RESULT_TABS = {"RoIs": "RoIs", "Cohort": "Cohort", "Evaluate": "Metrics"}


class Agg2ExpPanel(PluginWidget):
    """Model, Segment, Explain, RoIs, Cohort and Evaluate as tabs of one dock.

    Attributes ``model``, ``segment``, ``explain``, ``roi``, ``cohort``, ``evaluate``: the sections
    (the same classes as the single-section docks); ``results``: the results dock's widget.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(napari_viewer)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        self.tabs.setDocumentMode(True)
        lay.addWidget(self.tabs)
        self.model = ModelWidget(self.viewer)
        self.segment = SegmentWidget(self.viewer)
        self.explain = ExplainWidget(self.viewer)
        self.roi = RoiImportanceWidget(self.viewer)
        self.cohort = CohortGraphWidget(self.viewer)
        self.evaluate = EvaluateWidget(self.viewer)
        for title, section in zip(SECTIONS, self.sections()):
            self.tabs.addTab(section, title)  # each section scrolls on its own
        self.tabs.currentChanged.connect(self._tab_changed)
        QTimer.singleShot(0, self._open_results)

    def sections(self) -> list[PluginWidget]:
        return [self.model, self.segment, self.explain, self.roi, self.cohort, self.evaluate]

    def show_section(self, title: str) -> PluginWidget:
        """Show the section ``title`` (one of :data:`SECTIONS`); returns it."""
        i = SECTIONS.index(title)
        self.tabs.setCurrentIndex(i)
        return self.sections()[i]

    @property
    def results(self) -> ResultsWidget:
        return results_widget(self.viewer)

    def sizeHint(self) -> QSize:
        return QSize(PANEL_WIDTH, 460)

    def minimumSizeHint(self) -> QSize:
        return QSize(280, 220)

    def _open_results(self) -> None:
        try:
            results_widget(self.viewer)
        except RuntimeError:  # closed before the event loop turned
            pass

    def _tab_changed(self, index: int) -> None:
        tab = _RESULT_TABS.get(SECTIONS[index]) if 0 <= index < len(SECTIONS) else None
        if tab is not None and self.state.results is not None:
            try:
                self.state.results.show_tab(tab)
            except RuntimeError:
                pass
