"""The main job on the bundled model and sample (short SmoothGrad so the suite stays quick)."""

from __future__ import annotations

import json

import pandas as pd

from napari_agg2exp.cli.main import main
from napari_agg2exp.models.loading import bundled_model_path, load_model


def test_bundled_model_loads_and_is_small():
    files = list(bundled_model_path().iterdir())
    assert sum(f.stat().st_size for f in files) < 20 * 1024**2
    m = load_model(device="cpu")
    assert m.num_classes == 17 and m.class_names[16] == "costal_cartilages"


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "mean (foreground)" in text and "case report" in text
    q = pd.read_csv(out / "quality.csv")
    fg = q[q["class"] != "background"]["dice"]
    assert fg.mean() > 0.8  # the bundled model segments its own kind of data well
    info = json.loads((out / "attribution_info.json").read_text())
    assert info["method"] == "sg" and len(info["targets"]) == 17
    assert len(list((out / "attributions").glob("*.nii.gz"))) == 17
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 17
    assert (out / "local_importance.csv").exists()
    # the recorded image path (relative to the case folder) points into the final output folder
    assert (out / info["image"]).resolve() == (out / "sample" / "image.nii.gz").resolve()
