"""Drive a real napari viewer through the plugin's flow and save the README screenshots.

    python scripts/screenshots.py [--model PATH] [--out docs/screenshots] [--method vg] [--target heart]

Without a display it re-runs itself under ``xvfb-run`` (``make apt`` installs it). The flow uses the
dock widgets themselves (Model -> Segment -> Explain -> RoI importance -> Cohort & graph), each run in
its thread worker, and writes:

* ``overlay.png``  -- the attribution map of the target class over the CT, prediction outlined;
* ``roi_table.png`` -- the viewer with the RoI importance dock (table + bar chart);
* ``graph.png``     -- the viewer with the Cohort & graph dock (graph + distribution plot);
* ``explain.png``   -- the viewer with the Model / Segment / Explain docks after the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1680, 1000)


def _ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("AGG2EXP_NO_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: run `make apt` (installs xvfb) or set DISPLAY")
    os.environ["AGG2EXP_NO_XVFB"] = "1"
    args = [xvfb, "-a", "-s", f"-screen 0 {SIZE[0] + 80}x{SIZE[1] + 80}x24", sys.executable, *sys.argv]
    os.execv(xvfb, args)


def _wait(app, widget, timeout: float = 1800.0) -> None:
    end = time.monotonic() + timeout
    while widget.runner.running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    if widget.runner.running:
        sys.exit(f"{type(widget).__name__} did not finish within {timeout:.0f} s")
    if widget.runner.last_error is not None:
        sys.exit(f"{type(widget).__name__} failed: {widget.runner.last_error}")


def _settle(app, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or model.json (default: the bundled model)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="output folder")
    ap.add_argument("--method", default="vg", help="attribution method (default: vg)")
    ap.add_argument("--target", default="heart", help="class shown (default: heart)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    _ensure_display()

    import napari
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap
    from qtpy.QtWidgets import QApplication

    from napari_agg2exp import viewer as agg
    from napari_agg2exp.models.loading import bundled_model_path

    if args.model is None and not bundled_model_path().exists():
        sys.exit(f"the bundled model is not installed ({bundled_model_path()}) -- pass --model FOLDER")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-agg2exp", show=True)
    viewer.window.resize(*SIZE)
    app = QApplication.instance()
    agg.open_sample(viewer)
    docks = {}

    def dock(name):
        if name not in docks:
            docks[name] = viewer.window.add_plugin_dock_widget(agg.PLUGIN, name)
        return docks[name][1]

    def only(*names):
        for n, (dw, _) in docks.items():
            dw.setVisible(n in names)
        _settle(app)
        viewer.window.resize(*SIZE)  # docks added while others were shown made the window grow
        _settle(app)

    # Model -> Segment -> Explain, through the widgets
    model_w = dock("Model")
    if args.model is not None:
        model_w._source.setCurrentText("Model folder")
        model_w._folder.value = str(Path(args.model).resolve())
    model_w._device.setCurrentText(args.device)
    model_w.load()
    _wait(app, model_w)
    print("model:", agg.session(viewer).model.source, flush=True)

    seg_w = dock("Segment")
    seg_w.run()
    _wait(app, seg_w)
    print("segmented", flush=True)

    exp_w = dock("Explain")
    exp_w.set_method(args.method)
    t0 = time.monotonic()
    exp_w.run()
    _wait(app, exp_w)
    print(f"explained in {time.monotonic() - t0:.0f} s", flush=True)

    image = viewer.layers["phantom CT"]
    pred = agg.prediction_layer(viewer, image)
    maps = agg.attribution_layers(viewer, image)
    target = args.target if args.target in maps else next(iter(maps))
    agg.select_class(viewer, target)
    for name in ("phantom labels", "phantom pathology"):
        viewer.layers[name].visible = False
    # axial slices, radiological convention (anterior up, patient's right on the left)
    viewer.dims.order = (2, 1, 0)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.orientation2d = ("up", "left")
    # the prediction of the target class outlined in yellow, above the map (SPEC §8)
    names = pred.features["class_name"].tolist()
    pred.colormap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), names.index(target): (1, 1, 0, 1)})
    pred.contour = 1
    pred.opacity = 1.0
    viewer.layers.move(viewer.layers.index(pred), len(viewer.layers))
    viewer.layers.selection.active = maps[target]
    agg.go_to_roi(viewer, pred, target)
    viewer.reset_view()
    only("Model", "Segment", "Explain")
    viewer.window.screenshot(str(out / "explain.png"), canvas_only=False)
    viewer.window.screenshot(str(out / "overlay.png"), canvas_only=True)

    # RoI importance of the target class, RoIs = the prediction
    roi_w = dock("RoI importance")
    roi_w._target.setCurrentText(target)
    roi_w.compute()
    _wait(app, roi_w)
    row = [roi_w._grid.item(i, 0).text() for i in range(roi_w._grid.rowCount())].index(target)
    roi_w._grid.selectRow(row)
    roi_w._row_clicked(row)  # what a click on the row does: go to the RoI's largest slice
    viewer.reset_view()
    docks["RoI importance"][0].setMinimumWidth(480)
    only("RoI importance")
    viewer.window.screenshot(str(out / "roi_table.png"), canvas_only=False)

    # the pathology as custom RoIs joins the graph ("aggregated twice")
    table = agg.roi_importance(viewer, image, "phantom pathology", target=target)
    combined = pd.concat([agg.session(viewer).tables[(image.name, "prediction")], table], ignore_index=True)
    graph_w = dock("Cohort & graph")
    agg.show_graph(viewer, combined)
    graph_w.select_node(target)
    docks["Cohort & graph"][0].setMinimumWidth(720)
    only("Cohort & graph")
    viewer.window.screenshot(str(out / "graph.png"), canvas_only=False)
    for name in ("explain", "overlay", "roi_table", "graph"):
        print(out / f"{name}.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
