"""The main panel on a full-HD screen: every widget of the manifest fits 1920×1080 with the canvas
keeping at least half the window width; plots follow the theme; sections share one selection;
cohort folders in every layout the project writes; the reader preference button.

pytest-xvfb runs these on a 1920×1080 virtual screen (``xvfb_width`` / ``xvfb_height`` in
pyproject.toml).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_agg2exp import viewer as agg
from napari_agg2exp.errors import Agg2ExpError

PLUGIN = "napari-agg2exp"


def _screen():
    from qtpy.QtGui import QGuiApplication

    return QGuiApplication.primaryScreen().geometry()


def test_every_manifest_widget_fits_a_full_hd_screen(make_napari_viewer, qtbot):
    from npe2 import PluginManifest

    screen = _screen()
    assert (screen.width(), screen.height()) == (1920, 1080), "pytest-xvfb screen size (pyproject.toml)"
    viewer = make_napari_viewer(show=True)
    agg.open_sample(viewer)
    window = viewer.window._qt_window
    window.resize(screen.width(), screen.height())  # maximised (Xvfb has no window manager)
    qtbot.wait(50)
    names = [w.display_name for w in PluginManifest.from_distribution(PLUGIN).contributions.widgets]
    assert names[0] == "Agg2Exp" and set(agg.WIDGETS) == set(names)
    for name in names:  # all of them at once
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    qtbot.wait(100)
    frame = window.frameGeometry()
    assert frame.width() <= screen.width() and frame.height() <= screen.height(), (frame, screen)
    assert window.minimumSizeHint().height() <= screen.height()
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.isVisible() and canvas.width() >= window.width() / 2, (canvas.width(), window.width())


def test_panel_sections_and_results_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    agg.open_sample(viewer)
    viewer.window._qt_window.resize(1920, 1080)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp")
    qtbot.waitUntil(lambda: agg.session(viewer).results is not None, timeout=5000)
    assert [panel.tabs.tabText(i) for i in range(panel.tabs.count())] == ["Model", "Segment", "Explain", "RoIs",
                                                                         "Cohort", "Evaluate"]
    # one results dock, under the panel (same column: the canvas keeps its width)
    results = agg.session(viewer).results
    docks = viewer.window._wrapped_dock_widgets
    main, res = docks[f"Agg2Exp ({PLUGIN})"], docks[f"Results ({PLUGIN})"]
    qtbot.wait(50)
    assert abs(main.x() - res.x()) < 5 and res.y() > main.y()
    panel.show_section("Evaluate")
    assert results.tabs.tabText(results.tabs.currentIndex()) == "Metrics"
    panel.show_section("Cohort")
    assert results.tabs.tabText(results.tabs.currentIndex()) == "Cohort"
    # the same selection everywhere: the case chosen in one section is the case of the others
    sel = agg.session(viewer).selection
    viewer.add_image(np.zeros((8, 8, 8), np.float32), name="other scan")
    panel.segment._image.setCurrentText("other scan")
    assert sel.case == "other scan"
    assert panel.explain._image.currentText() == panel.evaluate._image.currentText() == "other scan"
    assert panel.roi._image.currentText() == "other scan"


def _roi_table(case="phantom CT"):
    rows = []
    for target in ("heart", "aorta"):
        for roi, mass in (("heart", 0.5), ("aorta", 0.3), ("trachea", 0.2)):
            for part in ("abs", "pos", "neg"):
                rows.append({"case": case, "target": target, "roi": roi, "part": part, "mass": mass,
                             "mean": mass / 10})
    return pd.DataFrame(rows)


def _pred_layer(viewer):
    """A prediction layer for the phantom CT from the phantom's labels (no model needed)."""
    from napari_agg2exp.viewer.add_layers import add_prediction

    image = viewer.layers["phantom CT"]
    labels = viewer.layers["phantom labels"]
    names = labels.features["class_name"].tolist()
    return add_prediction(viewer, image, np.asarray(labels.data), names, "test"), names


def test_roi_results_follow_selection_bars_coloured_click_highlights(make_napari_viewer, qtbot, tmp_path):
    from matplotlib.colors import to_hex

    from napari_agg2exp.report.case_figures import best_slices

    viewer = make_napari_viewer(show=True)
    agg.open_sample(viewer)
    pred, names = _pred_layer(viewer)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp")
    state = agg.session(viewer)
    state.add_table(("phantom CT", "prediction"), _roi_table())
    roi = panel.roi
    roi._source_changed()
    roi._target.setCurrentText("heart")
    results = state.results
    assert results.roi_table.column(0) == ["heart", "aorta", "trachea"]
    fig = results.roi_plot.figure
    bars = {p.get_gid(): p for p in fig.axes[0].patches if p.get_gid()}
    # bars in the RoI's label colour (the prediction layer's colormap)
    for name, bar in bars.items():
        expected = to_hex(pred.colormap.map(np.array([names.index(name)]))[0][:3])
        assert to_hex(bar.get_facecolor()[:3]) == expected, name
    # hover tooltip on a bar
    fv = results.roi_plot
    fv.canvas.draw()
    x, y = bars["aorta"].get_window_extent().get_points().mean(axis=0)
    assert fv.tooltip_at(x, y).startswith("aorta")
    # clicking a bar: that RoI alone is shown (napari's show selected label) at its largest slice
    from matplotlib.backend_bases import MouseEvent

    MouseEvent("button_press_event", fv.canvas, x, y, button=1)._process()
    aorta = names.index("aorta")
    assert pred.show_selected_label and pred.selected_label == aorta
    idx = best_slices(np.asarray(pred.data) == aorta)
    np.testing.assert_allclose(viewer.dims.point[-3:], pred.data_to_world(idx))
    # the chart redrawn with the highlight keeps every bar's label colour (napari hides the others)
    bars = {p.get_gid(): p for p in results.roi_plot.figure.axes[0].patches if p.get_gid()}
    for name, bar in bars.items():
        assert to_hex(bar.get_facecolor()[:3]) == to_hex(pred.colormap.color_dict[names.index(name)][:3]), name
    # CSV export of the shown table
    out = tmp_path / "t.csv"
    results.roi_table.export(str(out))
    assert pd.read_csv(out)["roi"].tolist() == ["heart", "aorta", "trachea"]
    # measure change: table and chart together
    state.selection.measure = "mean"
    assert roi._measure.currentText() == "mean"
    assert results.roi_plot.figure.axes[0].get_xlabel() == "abs mean"
    # another RoI source without a table: table AND chart emptied (no stale chart)
    viewer.add_labels(np.zeros(pred.data.shape, np.uint8), name="painted", scale=pred.scale)
    state.selection.rois = "painted"
    assert roi._rois.currentText() == "painted"
    assert results.roi_table.grid.rowCount() == 0 and results.roi_plot.figure is None


def test_plots_follow_theme_changes_both_ways(make_napari_viewer):
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure
    from napari.utils.theme import get_theme

    from napari_agg2exp.viewer.widgets.figure import FigureView

    viewer = make_napari_viewer()
    view = FigureView(viewer)
    fig = Figure()
    ax = fig.add_subplot()
    ax.set_title("title")
    ax.set_xlabel("x")
    ax.text(0, 0, "red on purpose", color="red")
    view.show_figure(fig)
    assert view.toolbar is not None and {a.text() for a in view.toolbar.actions()} >= {"Pan", "Zoom", "Save"}
    for theme in ("light", "dark", "light"):
        viewer.theme = theme
        fg = get_theme(theme).text.as_hex()
        assert to_hex(ax.title.get_color()) == to_hex(fg), theme
        assert to_hex(ax.xaxis.label.get_color()) == to_hex(fg), theme
        assert to_hex(fig.get_facecolor()) == to_hex(get_theme(theme).background.as_hex())
    assert to_hex(ax.texts[0].get_color()) == to_hex("red")
    view.deleteLater()


def test_graph_shows_top_edges_legend_outside_and_node_click(make_napari_viewer, qtbot):
    from matplotlib.transforms import Bbox

    viewer = make_napari_viewer(show=True)
    agg.open_sample(viewer)
    pred, names = _pred_layer(viewer)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp")
    rng = np.random.default_rng(0)
    fg = [n for n in names if n != "background"]
    rows = [{"case": f"c{c}", "target": t, "roi": r, "part": "abs", "mass": float(rng.random()),
             "mean": 0.1} for c in range(3) for t in fg for r in fg]
    table = pd.DataFrame(rows)
    res = agg.show_graph(viewer, table, keep_fraction=1.0)
    cohort = panel.cohort
    assert res.kept > 25
    cohort._shown.setValue(10)
    fig = state_fig = agg.session(viewer).results.graph_plot.figure
    assert len([p for p in fig.axes[0].patches]) == 10  # one arrow per shown edge
    # the legend is outside the axes that hold the nodes
    assert fig.legends and not fig.axes[0].get_legend()
    fig.canvas.draw()
    leg_box = fig.legends[0].get_window_extent()
    centres = [np.asarray(cohort.node_position(n)) for n in cohort._nodes]
    node_boxes = [Bbox([c - 10, c + 10]) for c in centres]  # markers of s=260 points²: ~9 px radius at 100 dpi
    assert not any(leg_box.overlaps(b) for b in node_boxes)
    # hover and click on a node
    node = next(iter(cohort._nodes))
    x, y = cohort.node_position(node)
    assert agg.session(viewer).results.graph_plot.tooltip_at(x, y).startswith(node)
    from matplotlib.backend_bases import MouseEvent

    MouseEvent("button_press_event", state_fig.canvas, x, y, button=1)._process()
    assert agg.session(viewer).selected_class == node
    assert pred.show_selected_label and pred.selected_label == names.index(node)


def test_cohort_folder_layouts(tmp_path):
    from napari_agg2exp.data.volume import Volume, save_volume
    from napari_agg2exp.workflows.discover import discover_cases

    vol = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4))
    # case_XXXX/image.nii.gz, as `agg2exp phantom` writes
    ph = tmp_path / "phantom"
    for i in range(2):
        save_volume(vol, ph / f"case_{i:04d}" / "image.nii.gz")
        save_volume(vol, ph / f"case_{i:04d}" / "labels.nii.gz")
    (ph / "labels.json").write_text("{}")
    rows = discover_cases(ph)
    assert [r["case"] for r in rows] == ["case_0000", "case_0001"] and all("labels" in r for r in rows)
    # flat files (label files are not scans)
    flat = tmp_path / "flat"
    for n in ("a.nii.gz", "b.nii", "b_labels.nii.gz"):
        save_volume(vol, flat / n)
    assert [r["case"] for r in discover_cases(flat)] == ["a", "b"]
    # a manifest, as a file or in the folder
    (flat / "manifest.csv").write_text("case,image\nx,a.nii.gz\n")
    assert [r["case"] for r in discover_cases(flat)] == ["x"]
    assert discover_cases(flat / "manifest.csv")[0]["image"] == str((flat / "a.nii.gz").resolve())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Agg2ExpError, match="case_XXXX|<case>/image"):
        discover_cases(empty)


def test_reader_default_button(make_napari_viewer):
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp")
    plugins = get_settings().plugins
    before = dict(plugins.extension2reader)
    try:
        assert panel.model._reader.isEnabled()
        panel.model._reader.click()
        assert plugins.extension2reader["*.nii.gz"] == PLUGIN and plugins.extension2reader["*.nii"] == PLUGIN
        assert not panel.model._reader.isEnabled()
        # napari now picks this plugin for a .nii.gz without asking
        from napari.plugins.utils import get_preferred_reader

        assert get_preferred_reader("/data/scan.nii.gz") == PLUGIN
    finally:
        plugins.extension2reader = before


def test_shapes_region_is_rasterised_on_the_image_grid(make_napari_viewer):
    from napari_agg2exp.viewer.widgets.explain import region_volume

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((10, 12, 14), np.float32), scale=(2.0, 1.0, 1.0), translate=(4.0, 0, 0))
    # a rectangle on data slice 3 (world z = 4 + 2*3 = 10), rows 2..5, cols 3..7 in world units
    shapes = viewer.add_shapes([np.array([[10, 2, 3], [10, 2, 7], [10, 5, 7], [10, 5, 3]], float)],
                               shape_type="rectangle")
    vol = region_volume(shapes, image)
    assert vol.shape == image.data.shape
    zs, ys, xs = np.nonzero(vol.array)
    assert set(zs) == {3} and ys.min() >= 2 and ys.max() <= 5 and xs.min() >= 3 and xs.max() <= 7
    assert 9 <= len(zs) <= 20
    empty = viewer.add_labels(np.zeros((10, 12, 14), np.uint8))
    with pytest.raises(Agg2ExpError, match="empty"):
        region_volume(empty, image)


def test_painted_rois_can_be_named(make_napari_viewer):
    from napari_agg2exp.viewer.layer_lookup import feature_names

    viewer = make_napari_viewer()
    agg.open_sample(viewer)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp")
    roi = panel.roi
    layer = roi.new_roi_layer()
    assert layer.data.shape == viewer.layers["phantom CT"].data.shape and roi._rois.currentText() == layer.name
    layer.paint((40, 40, 48), 1)
    layer.selected_label = 1
    roi._name.setText("nodule")
    roi._name_button.click()
    assert feature_names(layer)[1] == "nodule"
    assert agg.roi_label_ids(layer, "nodule") == [1]
    layer.selected_label = 2
    roi._name.setText("nodule")  # a second label may not take the same name
    with pytest.raises(Agg2ExpError, match="already named"):
        from napari_agg2exp.viewer.widgets.roi import name_label

        name_label(layer, 2, "nodule")


def test_model_section_passes_bundle_and_tta_options(make_napari_viewer, qtbot, tiny_model_dir, monkeypatch):
    from napari_agg2exp.models import loading
    from napari_agg2exp.viewer.widgets import model as model_section

    seen = {}
    real = loading.load_model

    def spy(path, *, trust_bundle=False, tta=False, **kwargs):
        seen.update(trust_bundle=trust_bundle, tta=tta)
        return real(path, device="cpu")

    monkeypatch.setattr(model_section.models, "load_model", spy)
    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp")
    w = panel.model
    assert model_section.load_options() == {"trust_bundle", "tta"}
    assert not w._trust_bundle.isHidden() and not w._tta.isHidden()
    w._source.setCurrentText("Model folder")
    w._folder.value = str(tiny_model_dir)
    w._trust_bundle.setChecked(True)
    w._tta.setChecked(True)
    w.load()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30_000)
    assert seen.get("trust_bundle") is True and seen.get("tta") is True
    assert agg.session(viewer).model is not None
