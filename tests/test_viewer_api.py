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
    maps = agg.explain(viewer, "phantom CT", method="vg")
    target = maps[0].metadata["agg2exp"]["target"]
    table = agg.roi_importance(viewer, "phantom CT", target=target)
    result = agg.show_graph(viewer)

    assert pred.name == "phantom CT prediction" and maps[0].name.startswith("phantom CT vg ")
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
    assert len(viewer.layers) == n and [a is b for a, b in zip(first, again)] == [True] * len(first)


def test_select_class_shows_only_its_map(loaded):
    viewer = loaded
    maps = agg.explain(viewer, method="vg")
    if len(maps) < 2:
        pytest.skip("the tiny model predicts a single class here")
    name = maps[-1].metadata["agg2exp"]["target"]
    agg.select_class(viewer, name)
    assert agg.session(viewer).selected_class == name
    assert [ly.visible for ly in maps] == [ly is maps[-1] for ly in maps]


def test_cohort_over_open_scans_then_tables_and_folder(loaded, tmp_path):
    from napari_agg2exp.importance.tables import write_table
    from napari_agg2exp.data.volume import Volume, save_volume

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
    assert list(agg.attribution_layers(viewer).values()) == ig  # the latest method by default
    assert list(agg.attribution_layers(viewer, method="vg").values()) == vg
    assert not any(ly.visible for ly in vg) and sum(ly.visible for ly in ig) == 1
    name = ig[-1].metadata["agg2exp"]["target"]
    agg.select_class(viewer, name)
    assert [ly.visible for ly in vg + ig] == [ly is ig[-1] for ly in vg + ig]
    table = agg.roi_importance(viewer)
    assert set(table["target"]) == {ly.metadata["agg2exp"]["target"] for ly in ig}
