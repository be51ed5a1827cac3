"""napari widgets with a real viewer (pytest-xvfb): manifest, full flow, cancel, refusal, errors,
painted RoIs, reader/writer round trip and the event-loop heartbeat.

Every test uses a tiny UNet (3 classes, 16³ window, 6 mm model grid) on the phantom sample
(96 x 80 x 96 voxels of 3 mm), so a segmentation or a VG explanation takes about a second.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import tiny_spec

from napari_agg2exp import viewer as agg
from napari_agg2exp.errors import Cancelled
from napari_agg2exp.viewer.display import attribution_colormap, class_colours, labels_colormap
from napari_agg2exp.viewer.layers import grid_kwargs

PLUGIN = "napari-agg2exp"
TIMEOUT_MS = 60_000

WIDGET_CLASSES = {
    "Agg2Exp": "Agg2ExpPanel",
    "Results": "ResultsWidget",
    "Model": "ModelWidget",
    "Segment": "SegmentWidget",
    "Explain": "ExplainWidget",
    "RoI importance": "RoiImportanceWidget",
    "Cohort & graph": "CohortGraphWidget",
    "Evaluate": "EvaluateWidget",
}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine an OpenMP team of two
    in the main thread can be 50x slower than one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_tiny_model(folder):
    """A tiny UNet model folder (classes background, a, b; 16³ window; 6 mm model grid)."""
    import torch

    from napari_agg2exp.models.loading import build_network, save_model

    spec = tiny_spec(spacing=(6.0, 6.0, 6.0),
                     arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    torch.manual_seed(3)
    return save_model(build_network(spec), spec, folder)


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def notes(monkeypatch):
    """Notifications shown by the widgets: list of (level, message)."""
    from napari_agg2exp.viewer.widgets import base, runner

    seen: list[tuple[str, str]] = []
    for module in (base, runner):
        for level in ("error", "warning", "info"):
            if hasattr(module, f"show_{level}"):
                monkeypatch.setattr(module, f"show_{level}", lambda msg, _l=level: seen.append((_l, str(msg))))
    return seen


@pytest.fixture
def viewer(make_napari_viewer):
    v = make_napari_viewer()
    agg.open_sample(v)
    return v


@pytest.fixture
def loaded(viewer, tiny_model_folder):
    """Viewer with the sample and the tiny model in its session."""
    agg.load_model(viewer, tiny_model_folder, device="cpu")
    return viewer


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_done(qtbot, widget, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout)


def scan(viewer):
    return viewer.layers["phantom CT"]


# ---------------------------------------------------------------------------------------------- manifest


def test_manifest_lists_widgets_in_one_menu():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution(PLUGIN)
    names = [w.display_name for w in mf.contributions.widgets]
    assert names == list(agg.WIDGETS) and names[0] == "Agg2Exp"  # the main panel first
    assert all(w.autogenerate is False for w in mf.contributions.widgets)
    menu = mf.contributions.menus["napari-agg2exp.menu"]
    assert [m.command for m in menu] == [w.command for w in mf.contributions.widgets]
    # reader, writers and sample data are still there
    assert mf.contributions.readers and len(mf.contributions.writers) == 2 and mf.contributions.sample_data


@pytest.mark.parametrize("name", list(WIDGET_CLASSES))
def test_each_widget_builds_from_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer()
    widget = dock(viewer, name)
    assert type(widget).__name__ == WIDGET_CLASSES[name]


# ---------------------------------------------------------------------------------------------- full flow


def test_full_flow_segment_explain_roi_graph(viewer, tiny_model_folder, qtbot, notes):
    from napari_agg2exp.models.loading import available_devices

    image = scan(viewer)
    # Model: a folder, devices that exist
    model_w = dock(viewer, "Model")
    assert [model_w._device.itemText(i) for i in range(model_w._device.count())] == ["auto", *available_devices()]
    model_w._source.setCurrentText("Model folder")
    model_w._folder.value = str(tiny_model_folder)
    model_w._device.setCurrentText("cpu")
    assert model_w.load() is not None
    wait_done(qtbot, model_w)
    model = agg.session(viewer).model
    assert model is not None and model.class_names == ["background", "a", "b"]
    assert "background" in model_w._info.text()

    # Segment: Labels named after the image, features with names and colours, same geometry
    seg_w = dock(viewer, "Segment")
    assert seg_w._image.currentText() == "phantom CT"
    seg_w.run()
    wait_done(qtbot, seg_w)
    pred = viewer.layers["phantom CT prediction"]
    assert type(pred).__name__ == "Labels" and pred.data.shape == image.data.shape
    assert list(pred.features["class_name"]) == model.class_names
    assert pred.features["color"].str.match(r"^#[0-9a-f]{6}$").all()
    np.testing.assert_allclose(pred.scale, image.scale)
    np.testing.assert_allclose(pred.translate, image.translate)
    np.testing.assert_allclose(pred.affine.affine_matrix, image.affine.affine_matrix)
    np.testing.assert_allclose(pred.metadata["affine"], image.metadata["affine"])

    # Explain VG: one map per present class, diverging colormap, symmetric p95 limits, on the scan
    exp_w = dock(viewer, "Explain")
    assert exp_w._method.currentData() == "vg" and exp_w.parameters() == {}
    exp_w.set_method("ig")
    assert exp_w.parameters()["n_steps"] == 20  # registry default (paper)
    exp_w.set_method("vg")
    n_before = len(viewer.layers)
    exp_w.run()
    wait_done(qtbot, exp_w)
    maps = agg.attribution_layers(viewer, image)
    # default classes: the foreground classes present in the prediction; one layer for the run
    present = {model.class_names[i] for i in np.unique(pred.data)} - {"background"}
    assert set(maps) == present and len(viewer.layers) == n_before + 1
    layer = next(iter(maps.values()))
    lo, hi = layer.contrast_limits
    assert lo == pytest.approx(-hi) and layer.colormap.name.startswith("agg2exp_bwr")
    np.testing.assert_allclose(layer.scale[-3:], image.scale[-3:])
    assert layer.visible
    # the user's class choice is kept for the next run
    exp_w.set_targets(["a"])
    exp_w._fill_classes()
    assert exp_w.targets() == ["a"]
    exp_w.set_targets(sorted(present))
    assert not [n for n in notes if n[0] == "error"], notes

    # RoI importance on the prediction: table + bars; features re-assigned on the RoI layer
    roi_w = dock(viewer, "RoI importance")
    assert roi_w._rois.currentText() == "prediction"
    target = roi_w._target.currentText()
    assert target in maps
    events = []
    pred.events.features.connect(lambda e: events.append(e))
    roi_w.compute()
    wait_done(qtbot, roi_w)
    results = agg.session(viewer).results
    grid = results.roi_table.grid
    assert grid.rowCount() == len(model.class_names)
    masses = [float(grid.item(i, 1).text()) for i in range(grid.rowCount())]
    assert masses == sorted(masses, reverse=True) and sum(masses) == pytest.approx(1, abs=1e-3)
    assert events and "mass_abs" in pred.features and (pred.features["importance_target"] == target).all()
    assert results.roi_plot.figure is not None

    # clicking a row moves the viewer to that RoI's slice of largest area
    from napari_agg2exp.report.case_figures import best_slices

    roi = grid.item(0, 0).text()
    grid.cellClicked.emit(0, 0)
    idx = best_slices(pred.data == model.class_names.index(roi))
    np.testing.assert_allclose(viewer.dims.point[-3:], pred.data_to_world(idx))
    # ... and so does clicking its bar in the chart
    bars = [p for p in results.roi_plot.figure.axes[0].patches if p.get_gid()]
    present = set(np.unique(pred.data).tolist())
    # a bar one can click: of a RoI present in the prediction (an empty RoI has no slice), wide enough to hit
    bar = [b for b in bars if model.class_names.index(b.get_gid()) in present and b.get_width() > 0.02][-1]
    viewer.dims.set_point(range(3), pred.data_to_world((0, 0, 0)))  # away; the click moves it back
    _click(results.roi_plot.canvas, lambda: tuple(bar.get_window_extent().get_points().mean(axis=0)))
    idx = best_slices(pred.data == model.class_names.index(bar.get_gid()))
    np.testing.assert_allclose(viewer.dims.point[-3:], pred.data_to_world(idx))
    # the charts follow napari's theme
    dark = results.roi_plot.figure.get_facecolor()
    viewer.theme = "light"
    assert results.roi_plot.figure.get_facecolor() != dark
    viewer.theme = "dark"

    # Cohort & graph from the session's table; clicking a node selects the class everywhere
    graph_w = dock(viewer, "Cohort & graph")
    res = graph_w.draw()
    assert res is not None and res.graph.number_of_nodes() >= 1
    nodes = [n for n in graph_w._nodes if n in maps]
    assert nodes and results.graph_plot.figure is not None
    node = nodes[-1]
    _click(results.graph_plot.canvas, lambda: graph_w.node_position(node))
    assert agg.session(viewer).selected_class == node
    assert roi_w._target.currentText() == node and exp_w._classes.currentItem().text() == node
    from napari_agg2exp.viewer.display import _shown_index
    from napari_agg2exp.viewer.layer_lookup import map_targets

    assert map_targets(layer)[_shown_index(viewer, layer)] == node
    qtbot.waitUntil(lambda: viewer.layers.selection.active is layer, timeout=2000)  # active follows the map
    assert not [n for n in notes if n[0] == "error"], notes


def _click(canvas, where):
    """Left click at ``where()`` (display pixels, computed after drawing at the canvas's size)."""
    from matplotlib.backend_bases import MouseEvent

    canvas.draw()
    x, y = where()
    MouseEvent("button_press_event", canvas, x, y, button=1)._process()


def test_model_widget_torchscript_with_labels(make_napari_viewer, qtbot, tmp_path, notes):
    import json

    import torch

    from napari_agg2exp.models.loading import build_network

    net = build_network(tiny_spec()).eval()
    ts = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks
        torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)).save(str(ts))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    viewer = make_napari_viewer()
    w = dock(viewer, "Model")
    w._source.setCurrentText("TorchScript + labels")
    assert w._script.native.isVisibleTo(w) and not w._folder.native.isVisibleTo(w)
    w._script.value = str(ts)
    w._labels.value = str(labels)
    w.load()
    wait_done(qtbot, w)
    assert agg.session(viewer).model.class_names == ["background", "liver", "spleen"], notes


def test_evaluate_widget_metrics_table(loaded, qtbot, notes):
    viewer = loaded
    w = dock(viewer, "Evaluate")
    w.set_methods(["vg"])
    w.set_metrics(["faithfulness", "complexity"])
    w._subsets.setValue(3)
    w.run()
    wait_done(qtbot, w)
    assert w.table is not None, notes
    grid = agg.session(viewer).results.metrics_table.grid
    headers = [grid.horizontalHeaderItem(i).text() for i in range(grid.columnCount())]
    assert headers == ["method", "target", "Faithfulness correlation", "Effective complexity"]
    assert grid.rowCount() == w.table["target"].nunique() >= 1
    complexity = w.table[w.table["metric"] == "complexity"]["value"]
    assert ((complexity >= 0) & (complexity <= 1)).all()
    assert not [n for n in notes if n[0] == "error"], notes


# ---------------------------------------------------------------------------------------------- safety


def test_cancel_mid_run_leaves_no_layer(loaded, qtbot, notes):
    viewer = loaded
    exp_w = dock(viewer, "Explain")
    exp_w.set_method("ig")
    exp_w.set_parameter("n_steps", 400)
    n_layers = len(viewer.layers)
    worker = exp_w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: exp_w.runner._latest is not None and exp_w.runner._latest[0] > 5, timeout=TIMEOUT_MS)
    t0 = time.monotonic()
    exp_w._cancel.click()
    wait_done(qtbot, exp_w)
    assert time.monotonic() - t0 < 10
    assert isinstance(exp_w.runner.last_error, Cancelled)
    assert len(viewer.layers) == n_layers  # no prediction, no half-made map
    assert ("info", "Explain phantom CT (Integrated gradients): cancelled") in notes
    assert agg.session(viewer).busy is None and exp_w._run.isEnabled()


def test_second_run_refused_while_one_runs(loaded, qtbot, notes):
    viewer = loaded
    exp_w, seg_w = dock(viewer, "Explain"), dock(viewer, "Segment")
    exp_w.set_method("ig")
    exp_w.set_parameter("n_steps", 400)
    assert exp_w.run() is not None
    assert exp_w.run() is None  # same widget
    assert seg_w.run() is None  # another model run in this viewer
    assert [n for n in notes if n[0] == "warning"] and agg.session(viewer).busy
    exp_w.runner.cancel()
    wait_done(qtbot, exp_w)
    assert seg_w.run() is not None
    wait_done(qtbot, seg_w)
    assert "phantom CT prediction" in viewer.layers


def test_errors_become_notifications(viewer, qtbot, notes, tmp_path):
    # user error while preparing: nothing explained yet
    roi_w = dock(viewer, "RoI importance")
    assert roi_w.compute() is None
    assert notes[-1][0] == "error" and "Explain" in notes[-1][1]
    # user error inside the worker: not a model folder
    model_w = dock(viewer, "Model")
    model_w._source.setCurrentText("Model folder")
    model_w._folder.value = str(tmp_path)
    model_w.load()
    wait_done(qtbot, model_w)
    assert notes[-1][0] == "error" and "model.json" in notes[-1][1]
    assert agg.session(viewer).model is None


# ---------------------------------------------------------------------------------------------- custom RoIs


def test_painted_roi_gets_importance(loaded, qtbot, notes):
    viewer = loaded
    image = scan(viewer)
    agg.explain(viewer, image, "vg")
    painted = viewer.add_labels(np.zeros(image.data.shape, np.int32), name="painted", scale=image.scale,
                                translate=image.translate)
    roi_w = dock(viewer, "RoI importance")
    roi_w.set_rois("painted")
    assert roi_w.roi_layer() is painted
    painted.brush_size = 9
    painted.paint((40, 40, 48), 1)  # one stroke: fires the paint event -> recompute after a short delay
    qtbot.waitUntil(lambda: roi_w.table is not None and not roi_w.runner.running, timeout=TIMEOUT_MS)
    rows = roi_w.rows()
    assert list(rows["roi"]) == ["label_1"] and rows["mass"].iloc[0] > 0
    assert painted.features["mass_abs"].iloc[1] == pytest.approx(rows["mass"].iloc[0])
    first = rows["mass"].iloc[0]
    painted.paint((60, 30, 30), 1)  # a bigger region -> a new table
    qtbot.waitUntil(lambda: roi_w.rows()["mass"].iloc[0] != first and not roi_w.runner.running,
                    timeout=TIMEOUT_MS)
    assert roi_w.rows()["mass"].iloc[0] > first
    # the user's labelled layer (class names in features) works as RoIs too
    table = agg.roi_importance(viewer, image, "phantom labels")
    assert "heart" in set(table["roi"]) and "background" not in set(table["roi"])
    assert not [n for n in notes if n[0] == "error"], notes


# ---------------------------------------------------------------------------------------------- reader / writer


def test_reader_writer_round_trip(loaded, tmp_path):
    viewer = loaded
    image = scan(viewer)
    pred = agg.segment(viewer, image)
    agg.explain(viewer, image, "vg")
    out = {}
    for layer in (image, pred, agg.attribution_layer(viewer, image)):
        path = tmp_path / f"{layer.name.replace(' ', '_')}.nii.gz"
        written = layer.save(str(path), plugin=PLUGIN)
        assert written and path.exists()
        out[layer.name] = path
    for name, path in out.items():
        new = viewer.open(str(path), plugin=PLUGIN)[0]
        src = viewer.layers[name]
        assert type(new).__name__ == type(src).__name__
        np.testing.assert_allclose(np.asarray(new.data), np.asarray(src.data), rtol=1e-6)
        np.testing.assert_allclose(new.scale, src.scale)
        np.testing.assert_allclose(new.translate, src.translate)
        np.testing.assert_allclose(new.metadata["affine"], image.metadata["affine"])


# ---------------------------------------------------------------------------------------------- responsiveness


def test_event_loop_heartbeat_during_run(loaded, qtbot, notes):
    """A QTimer ticking every 10 ms keeps ticking while an explanation runs in its worker (no gap of
    100 ms or more); the result is then added one layer per event-loop turn, each turn bounded by
    napari's own cost of adding a layer."""
    from qtpy.QtCore import QTimer

    viewer = loaded
    image = scan(viewer)
    # reference: napari's own cost of adding one Image and one Labels layer of this size (the
    # result is added one layer per event-loop turn; each turn can't be cheaper than that)
    add_cost = 0.0
    for add in (lambda: viewer.add_image(np.zeros(image.data.shape, np.float32), contrast_limits=(-1, 1),
                                         colormap=attribution_colormap(), **grid_kwargs(image)),
                lambda: viewer.add_labels(np.zeros(image.data.shape, np.uint8), **grid_kwargs(image),
                                          colormap=labels_colormap(class_colours(3)))):
        t = time.perf_counter()
        ref = add()
        qtbot.wait(1)
        add_cost = max(add_cost, time.perf_counter() - t)
        viewer.layers.remove(ref)

    exp_w = dock(viewer, "Explain")
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(100)
    returned: list[float] = []
    worker = exp_w.run()
    t_start = time.perf_counter()
    worker.returned.connect(lambda *_: returned.append(time.perf_counter()))
    wait_done(qtbot, exp_w)
    t_end = time.perf_counter()
    qtbot.wait(30)
    timer.stop()
    layers = agg.attribution_layers(viewer, image)
    assert layers and returned, notes
    tk = np.array(ticks)
    gaps = np.diff(tk) * 1000
    ends = tk[1:]
    computing = gaps[(ends > t_start) & (ends <= returned[0])]
    adding = gaps[(ends > returned[0]) & (ends <= t_end + 0.03)]
    print(f"heartbeat: max gap {computing.max():.0f} ms while the worker ran ({len(computing)} ticks), "
          f"{adding.max():.0f} ms while adding layers (napari add_layer: {1000 * add_cost:.0f} ms)")
    assert len(computing) > 10, "the run was too short to measure"
    assert computing.max() < 100, (f"event loop blocked for {computing.max():.0f} ms while the worker ran "
                                   f"(median tick {np.median(computing):.0f} ms)")
    # the prediction and each map are added one per event-loop turn; a turn is napari's own
    # add_layer (vispy visuals, layer controls: 80-500 ms on a loaded 2-core machine, varying with
    # the load), nothing else: no percentile or resampling is left on the main thread
    assert len(adding) >= len({id(ly) for ly in layers.values()}), adding
    assert adding.max() < max(100.0, 4000 * add_cost + 50), (adding.round(), add_cost)


def test_explain_a_painted_region(loaded, qtbot, notes):
    """The Explain section's Region picker: a painted Labels layer is passed as the target region
    (the run's provenance records it); an empty region is refused before any work."""
    viewer = loaded
    image = scan(viewer)
    agg.segment(viewer, image)
    region = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="nodule", **grid_kwargs(image))
    exp_w = dock(viewer, "Explain")
    exp_w._region.setCurrentText("nodule")
    assert exp_w.run() is None and "empty" in notes[-1][1]  # nothing painted yet
    n_notes = len(notes)
    pred = viewer.layers["phantom CT prediction"]
    ids, counts = np.unique(np.asarray(pred.data), return_counts=True)
    cls = int(ids[1:][np.argmax(counts[1:])])  # the largest foreground class
    mask = np.asarray(pred.data) == cls
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    region.data[..., z - 2:z + 3] = mask[..., z - 2:z + 3]  # a slab of that class
    region.refresh()
    exp_w.set_targets([agg.session(viewer).model.class_names[cls]])
    assert exp_w.run() is not None
    wait_done(qtbot, exp_w)
    layer = agg.attribution_layer(viewer, image) if hasattr(agg, "attribution_layer") else \
        next(iter(agg.attribution_layers(viewer, image).values()))
    assert "target_region" in layer.metadata["agg2exp"]["info"], layer.metadata["agg2exp"]["info"].keys()
    assert not [n for n in notes[n_notes:] if n[0] == "error"], notes
