"""Case folders, figures, HTML reports and the analysis commands end to end (tiny synthetic cases)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_agg2exp.data.geometry import resample_labels
from napari_agg2exp.workflows.case_folder import load_case
from napari_agg2exp.workflows.case_importance import case_local_importance
from napari_agg2exp.report.case_figures import best_slices, class_figure, display_limits
from napari_agg2exp.importance.local import local_importance
from napari_agg2exp.report.html import write_cohort_report
from napari_agg2exp.workflows.reports import write_case_report
from napari_agg2exp.importance.tables import read_local_table, write_table
from napari_agg2exp.cli.main import main
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.data.volume import Volume, load_volume, save_volume

CLASSES = ["background", "aorta", "heart", "ribs"]
SHAPE = (14, 12, 10)
AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])


def make_case(root, name="case01", seed=0, targets=("aorta", "heart", "ribs")):
    """Write a case folder like `agg2exp explain` does (random maps, block labels)."""
    rng = np.random.default_rng(seed)
    d = root / name
    (d / "attributions").mkdir(parents=True)
    image = rng.normal(0, 200, SHAPE).astype(np.float32)
    pred = np.zeros(SHAPE, np.uint8)
    pred[2:6, 2:8, 1:9] = 1
    pred[7:12, 3:9, 2:8] = 2
    pred[:, 10:, :] = 3
    gt = pred.copy()
    gt[2:4, 2:8, 1:9] = 0
    save_volume(Volume(image, AFFINE), root / f"{name}_ct.nii.gz")
    save_volume(Volume(gt, AFFINE), root / f"{name}_gt.nii.gz", dtype=np.uint8)
    save_volume(Volume(pred, AFFINE), d / "prediction.nii.gz", dtype=np.uint8)
    (d / "labels.json").write_text(json.dumps({str(i): n for i, n in enumerate(CLASSES)}))
    for t in targets:
        a = rng.standard_normal(SHAPE).astype(np.float32) * (1 + 3 * (pred == CLASSES.index(t)))
        save_volume(Volume(a, AFFINE), d / "attributions" / f"{t}.nii.gz")
    info = {"method": "integrated_gradients", "image": str(root / f"{name}_ct.nii.gz"), "case": name,
            "ground_truth": str(root / f"{name}_gt.nii.gz")}
    (d / "attribution_info.json").write_text(json.dumps(info))
    return d


@pytest.fixture
def case_dir(tmp_path):
    return make_case(tmp_path)


def imgs(html_text):
    return re.findall(r"<img [^>]*>", html_text)


# ---------------------------------------------------------------- case folder

def test_load_case_and_default_local_importance(case_dir):
    case = load_case(case_dir)
    assert case.name == "case01" and list(case.attributions) == ["aorta", "heart", "ribs"]
    assert case.image.shape == SHAPE and case.prediction.array.dtype.kind == "u"
    df = case_local_importance(case)
    maps = {t: load_volume(case_dir / "attributions" / f"{t}.nii.gz").array for t in ("aorta", "heart", "ribs")}
    ref = local_importance(maps, case.prediction.array, CLASSES, case="case01")
    pd.testing.assert_frame_equal(df, ref)


@pytest.mark.parametrize(
    "remove, message",
    [
        ("attribution_info.json", "attribution_info.json"),
        ("labels.json", "labels.json"),
        ("prediction.nii.gz", "prediction"),
        ("attributions", "attributions"),
    ],
)
def test_missing_case_pieces_are_named(case_dir, remove, message):
    p = case_dir / remove
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(Agg2ExpError, match=message):
        load_case(case_dir)


def test_missing_image_is_named(case_dir):
    (case_dir.parent / "case01_ct.nii.gz").unlink()
    with pytest.raises(Agg2ExpError, match="input image"):
        load_case(case_dir)
    assert load_case(case_dir, load_image=False).image is None


def test_resample_labels_nearest_neighbour():
    ref = Volume(np.zeros((8, 8, 8)), np.eye(4))
    coarse = np.zeros((4, 4, 4), np.uint8)
    coarse[1:3, 1:3, 1:3] = 2
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = 0.5  # voxel (i) of the coarse grid covers fine voxels 2i, 2i+1
    out = resample_labels(Volume(coarse, aff), ref)
    expected = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    np.testing.assert_array_equal(out, expected)
    far = np.eye(4)
    far[:3, 3] = 1000
    with pytest.raises(Agg2ExpError, match="does not overlap"):
        resample_labels(Volume(coarse, far), ref)


# ---------------------------------------------------------------- figures and reports

def test_class_figure_follows_the_display_rules(case_dir):
    case = load_case(case_dir)
    pred = case.prediction.array
    assert best_slices(pred == 2) == (7, 3, 2)
    a = case.attributions["heart"]
    vlim, thresh = display_limits(a)
    assert vlim == pytest.approx(np.percentile(np.abs(a), 95))
    assert thresh == pytest.approx(0.01 * np.abs(a).max())
    fig = class_figure(case.image, a, pred, 2, class_name="heart")
    axes = fig.axes
    assert len(axes) == 4  # three planes and the colour bar
    over = axes[0].images[1]
    assert over.get_cmap().name.startswith("bwr")
    assert over.get_clim() == pytest.approx((-vlim, vlim))
    assert axes[0].get_aspect() == pytest.approx(2.0 / 1.0)  # axial-across axis 0: rows z, columns y
    assert axes[0].collections, "the prediction outline is drawn"
    zeroed = class_figure(case.image, a, pred, 2, zero_background=True)
    data = zeroed.axes[0].images[1].get_array()
    assert data.mask[(pred[7].T == 0)].all()


def test_case_report_embeds_every_figure(case_dir):
    (case_dir / "quality.csv").write_text("case,class,dice,iou\ncase01,heart,0.91,0.83\n")
    path = write_case_report(case_dir)
    assert path == case_dir / "report.html"
    text = path.read_text()
    assert "Segmentation quality" in text and "0.910" in text
    tags = imgs(text)
    assert len(tags) == 3
    assert all('src="data:image/png;base64,' in t for t in tags)
    assert "src=\"http" not in text and "<link" not in text
    for t in ("aorta", "heart", "ribs"):
        assert f"<h2>{t}</h2>" in text


def test_cohort_report_embeds_every_figure(tmp_path):
    local = [case_local_importance(make_case(tmp_path, f"c{i}", seed=i)) for i in range(6)]
    tables = [write_table(df, tmp_path / f"c{i}.csv") for i, df in enumerate(local)]
    assert main(["global", *map(str, tables), "--out", str(tmp_path / "cohort")]) == 0
    quality = pd.DataFrame([(f"c{i}", t, 0.5 + 0.05 * i, 0.4) for i in range(6) for t in CLASSES[1:]],
                           columns=["case", "class", "dice", "iou"])
    write_table(quality, tmp_path / "quality.csv")
    assert main(["outliers", "--train", *map(str, tables[:4]), "--test", *map(str, tables[2:]), "--quality",
                 str(tmp_path / "quality.csv"), "--out", str(tmp_path / "cohort" / "outliers")]) == 0
    assert main(["report", "--cohort", str(tmp_path / "cohort"), "--out", str(tmp_path / "r.html")]) == 0
    tags = imgs((tmp_path / "r.html").read_text())
    assert len(tags) == 2 + 3 + 1  # heatmap, graph, 3 distributions, spearman
    assert all("data:image/png;base64," in t for t in tags)
    with pytest.raises(Agg2ExpError, match="global_importance.csv"):
        write_cohort_report(tmp_path)


# ---------------------------------------------------------------- commands

def test_aggregate_command(case_dir, tmp_path, capsys):
    out = tmp_path / "local.csv"
    assert main(["aggregate", "--attributions", str(case_dir), "--out", str(out),
                 "--join", "thing=aorta,heart"]) == 0
    df = read_local_table(out)
    assert set(df["roi"]) == set(CLASSES) | {"thing"}
    assert "wrote" in capsys.readouterr().out
    assert main(["aggregate", "--attributions", str(case_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["aggregate", "--attributions", str(case_dir), "--out", str(out), "--overwrite",
                 "--ground-truth", "--parts", "abs"]) == 0
    gt = read_local_table(out)
    assert set(gt["part"]) == {"abs"}
    assert not np.allclose(gt.set_index(["target", "roi"])["mass"],
                           df[df.part == "abs"].set_index(["target", "roi"]).loc[gt.set_index(["target", "roi"])
                                                                                .index, "mass"])


def test_aggregate_custom_rois_resampled(case_dir, tmp_path):
    coarse = np.zeros((7, 6, 5), np.uint8)
    coarse[3:6, 1:4, 1:4] = 1
    coarse[0:2, 0:2, 0:2] = 2
    aff = AFFINE.copy()
    aff[:3, :3] *= 2
    aff[:3, 3] = [0.75, 0.5, 1.0]
    save_volume(Volume(coarse, aff), tmp_path / "path.nii.gz", dtype=np.uint8)
    (tmp_path / "names.json").write_text(json.dumps({"0": "none", "1": "nodule", "2": "effusion"}))
    out = tmp_path / "custom.csv"
    assert main(["aggregate", "--attributions", str(case_dir), "--rois", str(tmp_path / "path.nii.gz"),
                 "--roi-names", str(tmp_path / "names.json"), "--join", "pathology=nodule,effusion",
                 "--out", str(out)]) == 0
    df = read_local_table(out)
    assert list(df["roi"].unique()) == ["nodule", "effusion", "pathology"]  # label 0 not reported
    up = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    maps = {t: load_volume(case_dir / "attributions" / f"{t}.nii.gz").array for t in ("aorta", "heart", "ribs")}
    ref = local_importance(maps, up, ["none", "nodule", "effusion"], case="case01", skip_labels=[0],
                           joins={"pathology": ("nodule", "effusion")})
    np.testing.assert_allclose(df[["mass", "mean"]], ref[["mass", "mean"]], rtol=1e-6)


def test_global_and_outliers_commands(tmp_path, capsys):
    local = [case_local_importance(make_case(tmp_path, f"c{i}", seed=i)) for i in range(5)]
    tables = [str(write_table(df, tmp_path / f"c{i}.csv")) for i, df in enumerate(local)]
    out = tmp_path / "g"
    assert main(["global", *tables, "--out", str(out), "--keep-mass", "0.5"]) == 0
    g = pd.read_csv(out / "global_importance.csv")
    assert list(g.columns) == ["target", "roi", "part", "mean", "median", "std", "q25", "q75", "n"]
    assert (g["n"] == 5).all()
    for f in ("graph.graphml", "graph.png", "heatmap.png", "distributions/heart.png"):
        assert (out / f).exists()
    assert main(["global", *tables, "--out", str(out)]) == 2  # not empty
    assert main(["global", *tables, "--out", str(tmp_path / "g2"), "--keep-mass", "2"]) == 2
    assert not (tmp_path / "g2").exists()
    quality = pd.DataFrame([(f"c{i}", t, 0.9 - 0.1 * i, 0.5) for i in range(5) for t in CLASSES],
                           columns=["case", "class", "dice", "iou"])
    write_table(quality, tmp_path / "q.csv")
    o = tmp_path / "o"
    assert main(["outliers", "--train", *tables, "--test", *tables[:3], "--quality", str(tmp_path / "q.csv"),
                 "--out", str(o), "--seed", "1"]) == 0
    scores = pd.read_csv(o / "scores.csv")
    assert list(scores.columns) == ["case", "target", "score", "outlier"] and len(scores) == 9
    assert list(pd.read_csv(o / "spearman.csv").columns) == ["target", "rho", "p", "n"]
    assert (o / "spearman.png").exists()


def test_bad_inputs_exit_2(case_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("case,target,roi,mass\nc,h,r,0.1\n")
    assert main(["global", str(bad), "--out", str(tmp_path / "g")]) == 2
    assert "lacks column(s) part, mean" in capsys.readouterr().err
    shutil.rmtree(case_dir / "attributions")
    assert main(["aggregate", "--attributions", str(case_dir), "--out", str(tmp_path / "x.csv")]) == 2
    assert "attributions/ folder" in capsys.readouterr().err
    assert main(["report", str(case_dir)]) == 2
    assert main(["report"]) == 2
    assert "CASE_DIR or --cohort" in capsys.readouterr().err
    good = write_table(pd.DataFrame({"case": ["a", "b"], "target": "h", "roi": "r", "part": "abs", "mass": [0.1, 0.2],
                                     "mean": 0.1}), tmp_path / "good.csv")
    q = write_table(pd.DataFrame({"case": ["a"], "class": ["h"], "dice": [0.9], "iou": [0.8]}), tmp_path / "q.csv")
    assert main(["outliers", "--train", str(good), "--test", str(good), "--quality", str(q),
                 "--out", str(tmp_path / "o")]) == 2
    assert "lacks case(s) b" in capsys.readouterr().err
    assert main(["aggregate", "--attributions", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y.csv")]) == 2
