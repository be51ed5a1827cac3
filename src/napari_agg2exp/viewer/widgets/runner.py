"""Running a :class:`~napari_agg2exp.viewer.jobs.Job` from a widget, in a napari thread worker.

:class:`Runner` runs ``compute`` in a napari thread worker (progress bar in the activity dock, a
:class:`threading.Event` as the core's cancel flag) and ``apply`` in the ``returned`` handler (so a
cancelled or failed run adds no layer). Errors become napari notifications. A second model run
while one is going is refused (one per viewer, through the session's ``busy`` flag).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QLabel, QPushButton, QWidget

from napari_agg2exp.errors import Cancelled
from napari_agg2exp.viewer.jobs import Job
from napari_agg2exp.viewer.session import session
from napari_agg2exp.viewer.widgets.base import notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import FunctionWorker

__all__ = ["PROGRESS_POLL_MS", "Runner"]

#: How often the main thread copies the worker's progress into the activity dock (ms).
PROGRESS_POLL_MS = 100


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

    def __init__(self, viewer: napari.Viewer, parent: QWidget, run_buttons: Iterable[QPushButton] = (),
                 cancel_button: QPushButton | None = None, status: QLabel | None = None, exclusive: bool = True):
        super().__init__(parent)
        self.viewer = viewer
        self.state = session(viewer)
        self.run_buttons = list(run_buttons)
        self.cancel_button = cancel_button
        self.status = status
        self.exclusive = exclusive
        self.worker = None
        self.job: Job | None = None
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

    def start(self, job: Job | Callable[[], Job],
              on_done: Callable[[Any], None] | None = None) -> FunctionWorker | None:
        """Start a job (or a function making one: its user errors become notifications).

        Returns the worker, or None when refused (already running) or the job could not be made.
        """
        if self.running:
            show_warning(f"{self.job.title if self.job else 'a run'} is still running -- wait for it or cancel it")
            return None
        if self.exclusive and self.state.busy:
            show_warning(f"{self.state.busy} is running -- wait for it or cancel it first")
            return None
        if not isinstance(job, Job):
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

