"""The :class:`Job` type (a long operation split into worker and main-thread steps), watching a job's
input layer, and the model a job runs with."""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models import loading as models
from napari_agg2exp.progress import CancelFlag, ProgressCallback, is_cancelled
from napari_agg2exp.viewer.session import Session

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = ["InputWatch", "Job", "finish", "model_for", "notify_gone"]


@dataclass
class Job:
    """A long operation split for threading.

    Attributes:
        title: shown in the activity dock and in notifications.
        compute: ``compute(progress, cancel) -> result``; calls the core only (any thread).
        apply: ``apply(result) -> value``; updates the viewer (main thread). It may be a generator
            function that yields between layer additions (napari needs ~0.1 s to add a layer): the
            widgets then run one step per event-loop turn, so the viewer stays responsive; the
            generator's return value is the value.
    """

    title: str
    compute: Callable[[ProgressCallback | None, CancelFlag | None], Any]
    apply: Callable[[Any], Any]

    def run(self, progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Any:
        """Run both steps in the calling thread; returns what ``apply`` returns."""
        return finish(self.apply(self.compute(progress, cancel)))


def finish(value: Any) -> Any:
    """Run a stepwise ``apply`` (a generator) to its end and return its value; other values as they are."""
    if not inspect.isgenerator(value):
        return value
    while True:
        try:
            next(value)
        except StopIteration as stop:
            return stop.value


class InputWatch:
    """Watches a job's input layer: :meth:`flag` is the core's cancel flag, also set when the layer is
    deleted from the viewer (the run stops at the core's next cancel check); :meth:`still_there`,
    called in ``apply``, stops watching and says whether the layer is still open (no orphan result)."""

    def __init__(self, viewer: napari.Viewer, layer: napari.layers.Layer):
        self.removed = threading.Event()
        self._layers, self._ref = viewer.layers, weakref.ref(layer)
        self._layers.events.removed.connect(self._on_removed)

    def _on_removed(self, event) -> None:
        if event.value is self._ref():
            self.removed.set()

    def flag(self, cancel: CancelFlag | None) -> Callable[[], bool]:
        return lambda: self.removed.is_set() or is_cancelled(cancel)

    def still_there(self) -> bool:
        try:
            self._layers.events.removed.disconnect(self._on_removed)
        except (RuntimeError, ValueError, TypeError):  # pragma: no cover - already disconnected
            pass
        layer = self._ref()
        return not self.removed.is_set() and layer is not None and layer in self._layers


def notify_gone(title: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"{title}: cancelled -- its image layer was deleted")


def model_for(state: Session, model: SegmentationModel | str | Path | None) -> tuple[SegmentationModel, bool]:
    """(model to use, whether to store it in the session: when it has none) -- called in the worker."""
    if model is not None:
        if isinstance(model, (str, Path)):
            model = models.load_model(model)
        return model, state.model is None
    if state.model is not None:
        return state.model, False
    return _load_default(), True


def _load_default():
    if not models.bundled_model_path().exists():
        raise Agg2ExpError("no model is loaded and the bundled default model is not installed -- load a model "
                           "in the Model widget (or agg.load_model(viewer, PATH)) first")
    return models.load_model(None)
