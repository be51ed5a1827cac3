"""Scripted napari sessions (:mod:`napari_agg2exp.viewer`) on a real viewer with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from test_widgets import save_tiny_model

from napari_agg2exp import viewer as agg
from napari_agg2exp.errors import Agg2ExpError


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: scripted runs happen in the main thread, where an OpenMP team of two can
    be 50x slower than one thread on a busy 2-core machine (see test_widgets)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def viewer(make_napari_viewer):
    v = make_napari_viewer()
    agg.open_sample(v)
    return v


@pytest.fixture
def loaded(viewer, tiny_model_folder):
    agg.load_model(viewer, tiny_model_folder, device="cpu")
    return viewer


def test_readme_session(make_napari_viewer, tiny_model_folder):
    """The README example, with the tiny model instead of the bundled one."""
    viewer = make_napari_viewer()
    agg.open_sample(viewer)
    agg.load_model(viewer, tiny_model_folder, device="cpu")
    pred = agg.segment(viewer, "phantom CT")
    layer = agg.explain(viewer, "phantom CT", method="vg")
    target = layer.metadata["agg2exp"]["targets"][0]
    table = agg.roi_importance(viewer, "phantom CT", target=target)
    result = agg.show_graph(viewer)

    assert pred.name == "phantom CT prediction" and layer.name == "phantom CT vg"
    assert set(table.columns) == {"case", "target", "roi", "part", "mass", "mean"}
    sums = table[table["part"] == "abs"].groupby("target")["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    assert pred.features["importance_target"].iloc[0] == target
    assert result is not None and result.graph.number_of_nodes() >= 1
    assert agg.open_widget(viewer, "Cohort & graph").result is result


def test_rerun_updates_layers_in_place(loaded):
    viewer = loaded
    agg.segment(viewer)
    first = agg.explain(viewer, method="vg")
    n = len(viewer.layers)
    again = agg.explain(viewer, method="vg")
    assert len(viewer.layers) == n and again is first


def test_one_layer_per_run_with_a_class_axis(loaded, tiny_model_folder):
    """The run's layer stacks the core's maps on the image grid along a class axis; the class slider
    is labelled with the shown class, whose symmetric p95 limits and colormap the layer shows."""
    from napari_agg2exp.attribution.explainer import Explainer
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.workflows.case import run_case

    viewer = loaded
    n = len(viewer.layers)
    layer = agg.explain(viewer, method="vg")
    assert len(viewer.layers) == n + 2  # the prediction and one map layer
    targets = layer.metadata["agg2exp"]["targets"]
    pred = agg.prediction_layer(viewer)
    names = list(pred.features["class_name"])
    assert targets == [names[i] for i in np.unique(pred.data) if i != 0]  # foreground present by default
    ct = viewer.layers["phantom CT"]
    core = run_case(load_model(tiny_model_folder, device="cpu"), agg.layer_volume(ct), explainer=Explainer("vg"),
                    targets=targets, local=False).explanation
    assert layer.data.shape == (len(targets), *ct.data.shape)
    for k, t in enumerate(targets):
        np.testing.assert_allclose(layer.data[k], core.map_on_input(t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.scale[1:], ct.scale)
    np.testing.assert_allclose(layer.translate[1:], ct.translate)
    for k, t in enumerate(targets):
        agg.select_class(viewer, t)
        assert viewer.dims.point[0] == k and viewer.dims.axis_labels[0] == f"class: {t}"
        assert agg.session(viewer).selected_class == t
        p95 = float(np.percentile(np.abs(layer.data[k]), 95))
        assert tuple(layer.contrast_limits) == pytest.approx((-p95, p95), rel=1e-5)
    layer.contrast_limits = (-0.1 * p95, 2 * p95)  # dragging one end keeps the limits symmetric
    assert tuple(layer.contrast_limits) == pytest.approx((-2 * p95, 2 * p95))
    # moving the slider itself selects the class
    viewer.dims.set_point(0, 0)
    assert agg.session(viewer).selected_class == targets[0] and viewer.dims.axis_labels[0] == f"class: {targets[0]}"


def test_three_d_rendering_shows_both_signs(make_napari_viewer, qtbot):
    from napari_agg2exp.viewer.add_layers import add_attribution, attribution_kwargs

    viewer = make_napari_viewer(show=True)
    ct = viewer.add_image(np.zeros((20, 20, 20), np.float32), colormap="gray", contrast_limits=(0, 1))
    data = np.zeros((1, 20, 20, 20), np.float32)
    data[0, 5:15, 5:15, 2:8] = 1.0  # side by side across the view
    data[0, 5:15, 5:15, 12:18] = -1.0
    add_attribution(viewer, ct, data, attribution_kwargs(ct, "vg", ["a"], [1.0], [0.01], {}))
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    qtbot.wait(20)
    rgb = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    red = (rgb[..., 0] > rgb[..., 2] + 60).sum()
    blue = (rgb[..., 2] > rgb[..., 0] + 60).sum()
    assert red > 50 and blue > 50, (red, blue)


def test_class_choice_is_remembered(loaded):
    viewer = loaded
    layer = agg.explain(viewer, method="vg")
    first = layer.metadata["agg2exp"]["targets"]
    agg.explain(viewer, method="vg", targets=[first[-1]])
    again = agg.explain(viewer, method="vg")  # no choice given: the last one
    assert again.metadata["agg2exp"]["targets"] == [first[-1]]
    assert agg.default_targets(["background", "a", "b"], [0, 2]) == ["b"]
    assert agg.default_targets(["background", "a", "b"], [0, 2], ["a", "zz"]) == ["a"]
    assert agg.default_targets(["background", "a", "b"], [0]) == ["background"]


def test_deleting_the_image_mid_run_cancels_it(loaded, qtbot):
    from qtpy.QtWidgets import QWidget

    from napari_agg2exp.errors import Cancelled
    from napari_agg2exp.viewer.widgets.runner import Runner

    viewer = loaded
    parent = QWidget()
    runner = Runner(viewer, parent)
    n = len(viewer.layers)
    runner.start(agg.explain_job(viewer, "phantom CT", method="ig", n_steps=8))
    viewer.layers.remove("phantom CT")
    runner.wait(120)
    assert isinstance(runner.last_error, Cancelled) or runner.last_result is None
    assert len(viewer.layers) == n - 1 and not [ly for ly in viewer.layers if agg.layer_kind(ly)]
    parent.deleteLater()


def test_cohort_over_open_scans_then_tables_and_folder(loaded, tmp_path):
    from napari_agg2exp.data.volume import Volume, save_volume
    from napari_agg2exp.importance.tables import write_table

    viewer = loaded
    ct = viewer.layers["phantom CT"]
    small = ct.data[::2, ::2, ::2].copy()
    viewer.add_image(small, name="half CT", scale=tuple(2 * np.asarray(ct.scale)), translate=ct.translate)
    table = agg.cohort(viewer, method="vg")
    assert sorted(table["case"].unique()) == ["half CT", "phantom CT"]
    assert not [ly for ly in viewer.layers if agg.layer_kind(ly) == "attribution"]  # a cohort adds no layer

    csv = write_table(table, tmp_path / "local.csv")
    res = agg.show_graph(viewer, [csv], part="abs", keep_mass=0.5)
    assert res.keep_mass == 0.5 and res.local["case"].nunique() == 2

    folder = tmp_path / "scans"
    aff = np.diag([6.0, 6.0, 6.0, 1.0])
    save_volume(Volume(small, aff), folder / "a.nii.gz")
    save_volume(Volume(small[::-1].copy(), aff), folder / "b.nii.gz")
    table2 = agg.cohort(viewer, folder)
    assert sorted(table2["case"].unique()) == ["a", "b"]


def test_user_errors_name_the_fix(make_napari_viewer, tiny_model_folder):
    viewer = make_napari_viewer()
    with pytest.raises(Agg2ExpError, match="no image layer"):
        agg.segment(viewer)
    agg.open_sample(viewer)
    with pytest.raises(Agg2ExpError, match="did you mean 'ig'"):
        agg.explain(viewer, method="ik")
    with pytest.raises(Agg2ExpError, match="run Explain"):
        agg.roi_importance(viewer)
    with pytest.raises(Agg2ExpError, match="Image layer"):
        agg.segment(viewer, "phantom labels")
    with pytest.raises(Agg2ExpError, match="unknown widget"):
        agg.open_widget(viewer, "Explainer")


def test_go_to_roi_moves_to_largest_slice(viewer):
    from napari_agg2exp.report.case_figures import best_slices

    labels = viewer.layers["phantom labels"]
    idx = agg.go_to_roi(viewer, labels, "heart")
    heart = list(labels.features["class_name"]).index("heart")
    assert idx == best_slices(labels.data == heart)
    np.testing.assert_allclose(viewer.dims.point, labels.data_to_world(idx))
    assert agg.go_to_roi(viewer, labels, "no_such_roi") is None


def test_session_is_per_viewer(make_napari_viewer):
    v1, v2 = make_napari_viewer(), make_napari_viewer()
    assert agg.session(v1) is agg.session(v1) and agg.session(v1) is not agg.session(v2)


def test_roi_layer_on_another_grid_is_resampled(loaded):
    viewer = loaded
    ct = viewer.layers["phantom CT"]
    agg.explain(viewer, ct, "vg")
    coarse = np.zeros(tuple(s // 2 for s in ct.data.shape), np.int32)
    coarse[10:20, 10:20, 10:20] = 3
    layer = viewer.add_labels(coarse, name="coarse", scale=tuple(2 * np.asarray(ct.scale)),
                              translate=tuple(np.asarray(ct.translate) + 0.5 * np.asarray(ct.scale)))
    table = agg.roi_importance(viewer, ct, layer)
    rows = table[table["part"] == "abs"]
    assert set(rows["roi"]) == {"label_3"} and (rows["mass"] > 0).all()
    assert layer.features["mass_abs"].iloc[3] > 0


def test_two_methods_on_one_image(loaded):
    viewer = loaded
    vg = agg.explain(viewer, method="vg")
    ig = agg.explain(viewer, method="ig", n_steps=2)
    assert agg.attribution_layer(viewer) is ig  # the latest method by default
    assert agg.attribution_layer(viewer, method="vg") is vg
    assert not vg.visible and ig.visible
    name = ig.metadata["agg2exp"]["targets"][-1]
    agg.select_class(viewer, name)
    assert ig.visible and not vg.visible and viewer.dims.axis_labels[0] == f"class: {name}"
    table = agg.roi_importance(viewer)
    assert set(table["target"]) == set(ig.metadata["agg2exp"]["targets"])


def test_heartbeat_script_plugin_work_per_turn(make_napari_viewer, tiny_model_folder):
    """scripts/heartbeat.py on a shown viewer with the tiny model: the plugin's own main-thread work
    per event-loop turn (apply steps minus napari's add_layer) stays under a generous bound."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("heartbeat", Path(__file__).parents[1] / "scripts" / "heartbeat.py")
    heartbeat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heartbeat)
    res = heartbeat.measure(str(tiny_model_folder), "vg", viewer=make_napari_viewer(show=True))
    print(res)
    assert res["turns"] > 10 and len(res["napari_add_layer_ms"]) >= 2
    assert res["max_plugin_turn_ms"] < 1000, res
