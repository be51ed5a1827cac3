"""Shared widget parts: running jobs in napari thread workers, layer pickers, themed matplotlib.

:class:`Runner` runs a :class:`~napari_agg2exp.viewer.session.Job`: ``compute`` in a napari thread
worker (progress bar in the activity dock, a :class:`threading.Event` as the core's cancel flag),
``apply`` in the ``returned`` handler (so a cancelled or failed run adds no layer). Errors become
napari notifications. A second model run while one is going is refused (one per viewer, through
the session's ``busy`` flag).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_agg2exp.viewer import session as api
from napari_agg2exp.errors import Agg2ExpError, Cancelled

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["FigureView", "LayerCombo", "Runner", "notify_error", "plain_viewer", "style_figure", "theme_colours"]

log = logging.getLogger(__name__)

#: How often the main thread copies the worker's progress into the activity dock (ms).
PROGRESS_POLL_MS = 100


def plain_viewer(viewer):
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


class Runner(QObject):
    """Runs jobs of one widget in napari thread workers.

    Args:
        viewer: the viewer (its session holds the one-model-run-at-a-time flag).
        parent: the widget.
        run_buttons: disabled while a job runs.
        cancel_button: enabled while a job runs; sets the cancel flag.
        status: label showing the state of the last job.
        exclusive: take the session's busy flag (model runs); ``False`` for light jobs.
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget, run_buttons=(), cancel_button: QPushButton | None = None,
                 status: QLabel | None = None, exclusive: bool = True):
        super().__init__(parent)
        self.viewer = viewer
        self.state = api.session(viewer)
        self.run_buttons = list(run_buttons)
        self.cancel_button = cancel_button
        self.status = status
        self.exclusive = exclusive
        self.worker = None
        self.job: api.Job | None = None
        self.cancel_event: threading.Event | None = None
        self.last_result: Any = None
        self.last_error: BaseException | None = None
        self._latest: tuple[int, int, str] | None = None
        self._shown: tuple[int, int, str] | None = None
        self._on_done: Callable[[Any], None] | None = None
        self._steps = None  # stepwise apply in progress (a generator)
        self._worker_finished = False
        self._timer = QTimer(self)
        self._timer.setInterval(PROGRESS_POLL_MS)
        self._timer.timeout.connect(self._show_progress)
        if cancel_button is not None:
            cancel_button.setEnabled(False)
            cancel_button.clicked.connect(self.cancel)

    @property
    def running(self) -> bool:
        """A job is computing or its result is being added to the viewer."""
        return self.worker is not None or self._steps is not None

    def start(self, job: api.Job | Callable[[], api.Job], on_done: Callable[[Any], None] | None = None):
        """Start a job (or a function making one: its user errors become notifications).

        Returns the worker, or None when refused (already running) or the job could not be made.
        """
        if self.running:
            show_warning(f"{self.job.title if self.job else 'a run'} is still running -- wait for it or cancel it")
            return None
        if self.exclusive and self.state.busy:
            show_warning(f"{self.state.busy} is running -- wait for it or cancel it first")
            return None
        if not isinstance(job, api.Job):
            try:
                job = job()
            except Exception as e:  # noqa: BLE001 - user errors while preparing (no image, no map, ...)
                notify_error(e)
                return None
        from napari.qt.threading import create_worker

        self.job, self._on_done = job, on_done
        self.cancel_event = threading.Event()
        self.last_result, self.last_error = None, None
        self._latest = self._shown = None
        cancel = self.cancel_event
        self.destroyed.connect(cancel.set)  # the viewer closes mid-run: stop the worker too

        def compute():
            return job.compute(self._progress, cancel)

        worker = create_worker(
            compute,
            _progress={"desc": job.title},
            _start_thread=False,
            _connect={"returned": self._returned, "errored": self._errored, "finished": self._finished,
                      "warned": self._warned},
        )
        self.worker = worker
        self._worker_finished = False
        if self.exclusive:
            self.state.set_busy(job.title)
        self._set_running(True, f"{job.title}…")
        self._timer.start()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop (it stops at the core's next cancel check)."""
        if self.cancel_event is not None and self.running:
            self.cancel_event.set()
            if self.status is not None:
                self.status.setText("cancelling…")

    # worker thread: only store the numbers, the main thread's timer shows them
    def _progress(self, done: int, total: int, message: str = "") -> None:
        self._latest = (int(done), int(total), str(message))

    def _show_progress(self) -> None:
        latest, worker = self._latest, self.worker
        if latest is None or latest == self._shown or worker is None:
            return
        self._shown = latest
        done, total, message = latest
        pbar = getattr(worker, "pbar", None)
        if pbar is not None:
            if total and pbar.total != total:
                pbar.total = total
            if done != pbar.n:
                pbar.update(done - pbar.n)
            if message:
                pbar.set_description(f"{self.job.title}: {message}" if self.job else message)
        if self.status is not None:
            pct = f" {100 * done // total}%" if total else ""
            self.status.setText(f"{self.job.title if self.job else ''}{pct} {message}".strip())

    def _returned(self, result) -> None:
        job = self.job
        if self.cancel_button is not None:  # the result is in: it is added whole
            self.cancel_button.setEnabled(False)
        try:
            value = job.apply(result) if job is not None else result
        except Exception as e:  # noqa: BLE001 - shown as a notification, never a console traceback
            self._apply_failed(e)
            return
        if inspect.isgenerator(value):  # one step per event-loop turn
            self._steps = value
            QTimer.singleShot(0, self._step)
        else:
            self._done(value)

    def _step(self) -> None:
        steps = self._steps
        if steps is None:
            return
        try:
            next(steps)
        except StopIteration as stop:
            self._steps = None
            self._done(stop.value)
        except Exception as e:  # noqa: BLE001 - shown as a notification
            self._steps = None
            self._apply_failed(e)
        else:
            QTimer.singleShot(0, self._step)
            return
        if self._worker_finished:
            self._end()

    def _apply_failed(self, e: Exception) -> None:
        self.last_error = e
        notify_error(e, self.job.title if self.job else "")
        self._status(f"failed: {e}")

    def _done(self, value) -> None:
        job = self.job
        self.last_result = value
        self._status(f"{job.title if job else 'done'}: done")
        if self._on_done is not None:
            try:
                self._on_done(value)
            except Exception as e:  # noqa: BLE001 - shown as a notification
                notify_error(e, job.title if job else "")

    def _errored(self, exc: BaseException) -> None:
        self.last_error = exc
        title = self.job.title if self.job else ""
        if isinstance(exc, Cancelled):
            show_info(f"{title}: cancelled")
            self._status("cancelled")
        else:
            notify_error(exc, title)
            self._status(f"failed: {exc}")

    def _warned(self, w) -> None:
        show_warning(str(w[0]) if isinstance(w, tuple) and w else str(w))

    def _finished(self) -> None:
        self._timer.stop()
        self._worker_finished = True
        if self._steps is None:
            self._end()

    def _end(self) -> None:
        self.worker = None
        if self.exclusive and self.state.busy == (self.job.title if self.job else None):
            self.state.set_busy(None)
        self._set_running(False)

    def _status(self, text: str) -> None:
        if self.status is not None:
            self.status.setText(text)

    def _set_running(self, running: bool, text: str | None = None) -> None:
        for b in self.run_buttons:
            b.setEnabled(not running)
        if self.cancel_button is not None:
            self.cancel_button.setEnabled(running)
        if text is not None:
            self._status(text)

    def wait(self, timeout: float = 60.0) -> None:
        """Process events until the running job has finished (tests and scripts)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.running and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        if self.running:
            raise TimeoutError(f"{self.job.title if self.job else 'job'} did not finish within {timeout} s")


class PluginWidget(QWidget):
    """Base of the dock widgets: the plain viewer and this viewer's session (model, results)."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = plain_viewer(napari_viewer)
        self.state = api.session(self.viewer)

    def _frame(self) -> tuple[QVBoxLayout, QFormLayout]:
        """The widget's vertical layout with a form at its top."""
        lay = QVBoxLayout(self)
        form = QFormLayout()
        lay.addLayout(form)
        return lay, form


def run_row(parent_layout, run_text: str = "Run") -> tuple[QPushButton, QPushButton, QLabel]:
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

    def __init__(self, viewer: napari.Viewer, accept: Callable[[Any], bool], extra: tuple[str, ...] = (), parent=None):
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

    def refresh(self, *_) -> None:
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

    def layer(self):
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None


def theme_colours(viewer: napari.Viewer) -> dict[str, str]:
    """Background, text and grid colours of the viewer's napari theme."""
    from napari.utils.theme import get_theme

    try:
        t = get_theme(viewer.theme)
    except Exception:  # noqa: BLE001 - unknown or custom theme name
        t = get_theme("dark")
    return {"background": t.background.as_hex(), "text": t.text.as_hex(), "foreground": t.foreground.as_hex(),
            "highlight": t.highlight.as_hex()}


def style_figure(fig, colours: dict[str, str]) -> None:
    """Re-colour a matplotlib figure for the napari theme (background, text, axes, legends)."""
    from matplotlib.colors import to_rgb
    from matplotlib.text import Text

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

    def __init__(self, viewer: napari.Viewer, parent=None, min_height: int = 260):
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

    def show_figure(self, fig, on_pick: Callable | None = None, on_click: Callable | None = None,
                    layout: str | None = "tight") -> None:
        """Show ``fig``; ``layout`` (a matplotlib layout engine) re-fits it whenever the dock is resized."""
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

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
