"""Drive a real napari viewer through the plugin's main panel and save the README screenshots.

    python scripts/screenshots.py [--model PATH] [--out docs/screenshots] [--method vg] [--target heart]

Without a display it re-runs itself under ``xvfb-run`` (``make apt`` installs it) on a 1920×1080
screen. The window is 1920×1080 with the main panel (Agg2Exp) and the results dock open; the flow
uses the panel's sections themselves (Model -> Segment -> Explain -> RoIs -> Cohort), each run in its
thread worker, and writes, in the dark and the light theme (``<name>_dark.png``, ``<name>_light.png``;
one process per theme, ``--theme`` picks one):

* ``explain``  -- the attribution map of the target class over the CT (prediction outlined), Explain section;
* ``rois``     -- the RoIs section, the results dock's table + bar chart, the clicked RoI highlighted;
* ``graph``    -- the Cohort section, the results dock's graph + distribution plot;

and ``overlay.png``, the canvas alone (dark theme).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/_display.py, also when loaded by file path
from _display import SIZE, ensure_display as _ensure_display  # noqa: E402


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
    ap.add_argument("--theme", choices=("dark", "light", "both"), default="both",
                    help="napari theme of the screenshots (both: one run per theme, each in its own process)")
    args = ap.parse_args(argv)
    _ensure_display()
    if args.theme == "both":  # a fresh viewer per theme: napari re-themes a running window imperfectly under Xvfb
        import subprocess

        base = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--theme")]
        for theme in ("dark", "light"):
            rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), *base, "--theme", theme])
            if rc:
                return rc
        return 0

    import napari
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_agg2exp import viewer as agg
    from napari_agg2exp.models.loading import bundled_model_path

    if args.model is None and not bundled_model_path().exists():
        sys.exit(f"the bundled model is not installed ({bundled_model_path()}) -- pass --model FOLDER")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-agg2exp", show=True)
    viewer.theme = args.theme
    window = viewer.window._qt_window
    window.resize(*SIZE)
    app = QApplication.instance()
    agg.open_sample(viewer)
    panel = agg.open_widget(viewer, "Agg2Exp")  # the main panel (it opens the results dock under it)
    _settle(app)
    state = agg.session(viewer)

    def shoot(name: str) -> None:
        window.resize(*SIZE)
        _settle(app, 0.8)
        path = out / f"{name}_{args.theme}.png"
        viewer.window.screenshot(str(path), canvas_only=False, flash=False)
        print(path, flush=True)

    # Model -> Segment -> Explain, through the panel's sections
    model_w = panel.show_section("Model")
    if args.model is not None:
        model_w._source.setCurrentText("Model folder")
        model_w._folder.value = str(Path(args.model).resolve())
    model_w._device.setCurrentText(args.device)
    model_w.load()
    _wait(app, model_w)
    print("model:", state.model.source, flush=True)

    seg_w = panel.show_section("Segment")
    seg_w.run()
    _wait(app, seg_w)
    print("segmented", flush=True)

    exp_w = panel.show_section("Explain")
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
    pred.contour = 1
    pred.opacity = 1.0
    viewer.layers.move(viewer.layers.index(pred), len(viewer.layers))
    agg.go_to_roi(viewer, pred, target)
    viewer.reset_view()
    _settle(app)
    if args.theme == "dark":
        viewer.window.screenshot(str(out / "overlay.png"), canvas_only=True, flash=False)
    shoot("explain")

    # RoIs: local importance of the target class (RoIs = the prediction); a click on the target's row
    roi_w = panel.show_section("RoIs")
    roi_w._target.setCurrentText(target)
    roi_w.compute()
    _wait(app, roi_w)
    state.selection.roi = target  # what a click on its bar / row does: highlight it, go to its largest slice
    viewer.reset_view()
    shoot("rois")
    pred.show_selected_label = False

    # Cohort: this scan's prediction RoIs and its pathology as custom RoIs ("aggregated twice")
    table = agg.roi_importance(viewer, image, "phantom pathology", target=target)
    combined = pd.concat([state.tables[(image.name, "prediction")], table], ignore_index=True)
    panel.show_section("Cohort")
    agg.show_graph(viewer, combined)
    panel.cohort.select_node(target)
    pred.show_selected_label = False
    shoot("graph")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
