"""Measure how long the plugin blocks napari's event loop during a full segment + explain run.

    python scripts/heartbeat.py [--model PATH] [--method vg] [--interval-ms 10] [--json OUT.json]

A QTimer ticks every ``--interval-ms`` while the phantom sample is segmented and explained through
the widgets' own machinery (:class:`~napari_agg2exp.viewer.widgets.runner.Runner`: the core runs in
a napari thread worker, the results are added one step per event-loop turn). Each gap between two
ticks is one event-loop turn. napari's own ``add_layer`` calls are timed separately, so the report
gives:

* the longest turn while the worker computes (the plugin must not hold the GIL or the loop);
* the longest turn while the results are added, and the same turn without napari's own
  ``add_layer`` (the plugin's own main-thread work per turn: the figure the README quotes);
* every ``add_layer`` call's duration (napari's cost, not the plugin's).

Without a display it re-runs itself under ``xvfb-run`` on a 1920x1080 screen (like
``scripts/screenshots.py``). Uses the bundled default model unless ``--model`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
import time

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/_display.py, also when loaded by file path
from _display import SIZE, ensure_display as _ensure_display  # noqa: E402


def _timed_add_layer(calls: list[tuple[float, float]]):
    """Wrap napari's ``ViewerModel.add_image`` / ``add_labels`` / ``add_layer`` (layer construction,
    vispy visual, layer controls: napari's own cost of a new layer) to record (start, end) of each
    outermost call; returns the undo function."""
    from napari.components.viewer_model import ViewerModel

    depth = [0]
    originals = {name: getattr(ViewerModel, name) for name in ("add_image", "add_labels", "add_layer")}

    def wrap(original):
        def timed(self, *args, **kwargs):
            t = time.perf_counter()
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    calls.append((t, time.perf_counter()))

        return timed

    for name, original in originals.items():
        setattr(ViewerModel, name, wrap(original))
    return lambda: [setattr(ViewerModel, name, original) for name, original in originals.items()]


def _timed_job(job, steps: list[tuple[float, float]]):
    """The job with its main-thread ``apply`` timed: (start, end) of the call and of each step."""
    import inspect

    from napari_agg2exp.viewer.jobs import Job

    def apply(result):
        t = time.perf_counter()
        value = job.apply(result)
        steps.append((t, time.perf_counter()))
        if not inspect.isgenerator(value):
            return value
        return _timed_steps(value, steps)

    return Job(job.title, job.compute, apply)


def _timed_steps(gen, steps):
    while True:
        t = time.perf_counter()
        try:
            next(gen)
        except StopIteration as stop:
            steps.append((t, time.perf_counter()))
            return stop.value
        steps.append((t, time.perf_counter()))
        yield


def measure(model: str | None = None, method: str = "vg", interval_ms: int = 10, viewer=None) -> dict:
    """Run segment + explain on the phantom in ``viewer`` (a new shown viewer if None) with a
    heartbeat; returns the figures (ms)."""
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QWidget

    from napari_agg2exp import viewer as agg
    from napari_agg2exp.viewer.widgets.runner import Runner

    own = viewer is None
    viewer = napari.Viewer(show=True) if viewer is None else viewer
    if own:
        viewer.window._qt_window.resize(*SIZE)
    agg.open_sample(viewer)
    agg.load_model(viewer, model, device="cpu")
    app = QApplication.instance()
    parent = QWidget()
    runner = Runner(viewer, parent)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    adds: list[tuple[float, float]] = []
    undo = _timed_add_layer(adds)
    phases: list[tuple[str, float, float, float]] = []  # (job, start, returned, end)
    steps: list[tuple[float, float]] = []  # the plugin's main-thread apply steps
    try:
        timer.start()
        end = time.perf_counter() + 2.0  # idle baseline: the machine's own noise
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)
        n_idle = len(ticks)
        for make in (lambda: agg.segment_job(viewer, "phantom CT"),
                     lambda: agg.explain_job(viewer, "phantom CT", method)):
            returned: list[float] = []
            t0 = time.perf_counter()
            worker = runner.start(_timed_job(make(), steps))
            worker.returned.connect(lambda *_, r=returned: r.append(time.perf_counter()))
            while runner.running:
                app.processEvents()
                time.sleep(0.001)
            if runner.last_error is not None:
                raise SystemExit(f"run failed: {runner.last_error}")
            phases.append((runner.job.title, t0, returned[0] if returned else time.perf_counter(),
                           time.perf_counter()))
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)
    finally:
        timer.stop()
        undo()
        parent.deleteLater()
    idle = np.diff(np.asarray(ticks[:n_idle])) * 1000
    tk = np.asarray(ticks[n_idle - 1:])
    starts, ends = tk[:-1], tk[1:]
    gaps = (ends - starts) * 1000
    step_ms = [1000 * (b - a) for a, b in steps]
    own_ms = [1000 * ((b - a) - sum(max(0.0, min(b, d) - max(a, c)) for c, d in adds)) for a, b in steps]
    computing = np.zeros(len(gaps), bool)
    adding = np.zeros(len(gaps), bool)
    for _, t0, ret, t1 in phases:
        computing |= (ends > t0) & (ends <= ret)
        adding |= (ends > ret) & (ends <= t1 + 0.05)
    result = {
        "interval_ms": interval_ms,
        "runs": [p[0] for p in phases],
        "run_seconds": round(sum(p[3] - p[1] for p in phases), 2),
        "turns": len(gaps),
        "max_turn_computing_ms": round(float(gaps[computing].max()), 1) if computing.any() else None,
        "max_turn_adding_ms": round(float(gaps[adding].max()), 1) if adding.any() else None,
        "idle_max_turn_ms": round(float(idle.max()), 1) if idle.size else None,
        "apply_steps_ms": [round(v, 1) for v in step_ms],
        "max_plugin_turn_ms": round(float(max(own_ms)), 1),
        "p99_turn_ms": round(float(np.percentile(gaps, 99)), 1),
        "napari_add_layer_ms": [round(1000 * (b - a), 1) for a, b in adds],
    }
    if own:
        viewer.close()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--method", default="vg")
    ap.add_argument("--interval-ms", type=int, default=10)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    _ensure_display()
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # leave a core to the event loop
    res = measure(args.model, args.method, args.interval_ms)
    print(f"heartbeat over {', '.join(res['runs'])} ({res['run_seconds']} s, {res['turns']} turns of "
          f"{res['interval_ms']} ms):")
    print(f"  longest turn with nothing running:      {res['idle_max_turn_ms']} ms (the machine's own noise)")
    print(f"  longest turn while the worker computed: {res['max_turn_computing_ms']} ms")
    print(f"  longest turn while results were added:  {res['max_turn_adding_ms']} ms "
          f"(napari add_layer calls: {res['napari_add_layer_ms']} ms)")
    print(f"  main-thread apply steps: {res['apply_steps_ms']} ms")
    print(f"  plugin's own main-thread work per turn (steps minus napari's add_layer): "
          f"{res['max_plugin_turn_ms']} ms at most")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
