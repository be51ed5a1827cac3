"""CLI ``evaluate`` and ``compare`` end to end on tiny phantoms, and their bad-input cases (issue 5 items 2, 4)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_agg2exp.cli.main import main

from test_metrics import PHANTOM_GRID, tiny_thorax_model_dir, train_tiny_model  # noqa: F401 (fixture)

FAST = ["--subsets", "5", "--subset-size", "300", "--noise-samples", "1", "--steps", "2",
        "--samples", "sg=2,kernelshap-cubes=8,kernelshap-semantic=8", "--device", "cpu"]


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    from napari_agg2exp.data.phantom.cohort import write_phantom_cohort

    out = tmp_path_factory.mktemp("cohort") / "phantoms"
    write_phantom_cohort(out, 3, seed=3, pathology=False, **PHANTOM_GRID)
    return out


@pytest.fixture(scope="session")
def second_model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("models2") / "tiny_b", steps=4, seed=1)


def _no_outputs(out):
    return not out.exists() or not any(out.iterdir())


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.startswith("agg2exp: warning")]
    assert len(err) == 1 and err[0].startswith("agg2exp: error:"), err
    for f in fragments:
        assert f in err[0], err[0]


def test_evaluate_one_image_all_methods_and_metrics(tmp_path, tiny_thorax_model_dir, cohort, capsys):
    out = tmp_path / "eval"
    case = cohort / "case_0000"
    rc = main(["evaluate", str(case / "image.nii.gz"), "--model", str(tiny_thorax_model_dir), "--labels",
               str(case / "labels.nii.gz"), "--classes", "heart,vertebrae", "--case", "c0", "--out", str(out), *FAST])
    assert rc == 0
    df = pd.read_csv(out / "metrics.csv")
    assert list(df.columns) == ["case", "method", "target", "metric", "value"]
    assert len(df) == 5 * 2 * 4 and set(df["case"]) == {"c0"}
    assert set(df["method"]) == {"vg", "ig", "sg", "kernelshap-cubes", "kernelshap-semantic"}
    assert df["value"].notna().all()
    md = (out / "metrics.md").read_text()
    assert md.count("\n| ") == 5 and "| KernelSHAP (semantic) |" in md and "±" in md
    assert "Faithfulness correlation ↑" in md and "- subsets: 5" in md
    stdout = capsys.readouterr().out
    assert "| Integrated gradients |" in stdout and "wrote" in stdout
    info = json.loads((out / "evaluation_info.json").read_text())
    assert info["cases"][0]["targets"] == ["heart", "vertebrae"] and info["cases"][0]["subset_size"] == 300
    assert info["method_parameters"]["ig"]["n_steps"] == 2
    q = pd.read_csv(out / "quality.csv")
    assert list(q.columns) == ["case", "class", "dice", "iou"] and len(q) == 17


def test_evaluate_manifest_several_cases(tmp_path, tiny_thorax_model_dir, cohort, capsys):
    man = tmp_path / "cases.csv"
    rows = ["case,image,labels"] + [f"p{i},{cohort}/case_000{i}/image.nii.gz,{cohort}/case_000{i}/labels.nii.gz"
                                    for i in range(2)]
    man.write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    rc = main(["evaluate", "--manifest", str(man), "--model", str(tiny_thorax_model_dir), "--methods", "vg,sg",
               "--metrics", "complexity,faithfulness", "--classes", "heart", "--out", str(out), *FAST])
    assert rc == 0
    df = pd.read_csv(out / "metrics.csv")
    assert sorted(df["case"].unique()) == ["p0", "p1"] and len(df) == 2 * 2 * 1 * 2
    md = (out / "metrics.md").read_text()
    assert "over 2 case(s)" in md and "| SmoothGrad |" in md
    assert set(pd.read_csv(out / "quality.csv")["case"]) == {"p0", "p1"}


def test_evaluate_deletion_insertion_writes_curves(tmp_path, tiny_thorax_model_dir, cohort, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", str(cohort / "case_0000" / "image.nii.gz"), "--model", str(tiny_thorax_model_dir),
               "--methods", "vg,ig", "--metrics", "deletion,insertion", "--classes", "heart", "--case", "c0",
               "--curve-step", "12.5%", "--out", str(out), *FAST])
    assert rc == 0
    df = pd.read_csv(out / "metrics.csv")
    assert len(df) == 2 * 1 * 2 and set(df["metric"]) == {"deletion", "insertion"} and df["value"].notna().all()
    cur = pd.read_csv(out / "curves.csv")
    assert list(cur.columns) == ["case", "method", "target", "metric", "step", "fraction", "score"]
    assert len(cur) == 2 * 1 * 2 * 9 and set(cur["case"]) == {"c0"} and cur["step"].max() == 8
    for (method, metric), g in cur.groupby(["method", "metric"]):
        v = df[(df["method"] == method) & (df["metric"] == metric)]["value"].iloc[0]
        s = g["score"].to_numpy()
        expected = np.mean(1 - s[1:]) if metric == "deletion" else np.trapezoid(s, g["fraction"].to_numpy())
        assert v == pytest.approx(expected, abs=1e-6)
    md = (out / "metrics.md").read_text()
    assert "Deletion AOPC ↑" in md and "Insertion AUC ↑" in md and "- curve step (asked): 0.125" in md
    info = json.loads((out / "evaluation_info.json").read_text())
    assert info["cases"][0]["curve_step"] == 1000  # 12.5 % of the 20³ model grid (padded to the window)
    assert "curves.csv" in capsys.readouterr().out
    # without a curve metric, no curves.csv
    out2 = tmp_path / "eval2"
    assert main(["evaluate", str(cohort / "case_0000" / "image.nii.gz"), "--model", str(tiny_thorax_model_dir),
                 "--methods", "vg", "--metrics", "complexity", "--classes", "heart", "--out", str(out2), *FAST]) == 0
    assert not (out2 / "curves.csv").exists()


def test_compare_two_models_dice_and_anova(tmp_path, tiny_thorax_model_dir, second_model_dir, cohort, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", str(tiny_thorax_model_dir), str(second_model_dir), "--data", str(cohort),
               "--names", "A,B", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    dice = pd.read_csv(out / "dice.csv")
    assert list(dice.columns) == ["case", "model", "class", "dice"]
    assert len(dice) == 3 * 2 * 16 and set(dice["model"]) == {"A", "B"}
    anova = pd.read_csv(out / "anova.csv")
    assert list(anova.columns) == ["class", "f", "p", "significant"] and anova["class"].iloc[-1] == "overall"
    md = (out / "comparison.md").read_text()
    assert "| class | A | B | ANOVA p |" in md and "| **overall** |" in md
    stdout = capsys.readouterr().out
    assert "| class | A | B | ANOVA p |" in stdout
    # one model, no --out: the table only
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["compare", str(tiny_thorax_model_dir), "--data", str(cohort), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "ANOVA needs two or more models" in captured.err and "| class | tiny_thorax | ANOVA p |" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args, fragments", [
    (["--methods", "vg,gradcam"], ["unknown method 'gradcam'"]),
    (["--metrics", "faithfullness"], ["did you mean 'faithfulness'"]),
    (["--subsets", "1"], ["--subsets"]),
    (["--samples", "ig=4"], ["--samples", "'ig'"]),
    (["--samples", "lots"], ["--samples"]),
    (["--classes", "hart"], ["unknown class 'hart'", "heart"]),
    (["--threshold", "2"], ["--threshold"]),
    (["--curve-step", "1.5"], ["--curve-step", "'1.5'"]),
    (["--curve-step", "lots"], ["--curve-step"]),
    (["--curve-steps", "0"], ["--curve-steps"]),
])
def test_evaluate_bad_options(tmp_path, tiny_thorax_model_dir, cohort, capsys, args, fragments):
    out = tmp_path / "eval"
    rc = main(["evaluate", str(cohort / "case_0000" / "image.nii.gz"), "--model", str(tiny_thorax_model_dir),
               "--out", str(out), "--device", "cpu", *args])
    assert rc == 2
    _one_line_error(capsys, *fragments)
    assert _no_outputs(out)


def test_evaluate_bad_inputs(tmp_path, tiny_thorax_model_dir, cohort, capsys):
    model = ["--model", str(tiny_thorax_model_dir), "--device", "cpu"]
    out = tmp_path / "eval"
    img = str(cohort / "case_0000" / "image.nii.gz")
    cases = [
        (["evaluate", "--out", str(out), *model], ["IMAGE or --manifest"]),
        (["evaluate", img, "--manifest", "x.csv", "--out", str(out), *model], ["exactly one"]),
        (["evaluate", str(tmp_path / "missing.nii.gz"), "--out", str(out), *model], ["not found"]),
        (["evaluate", img, "--labels", str(cohort / "labels.json"), "--out", str(out), *model], ["NIfTI"]),
        (["evaluate", "--manifest", str(tmp_path / "none.csv"), "--out", str(out), *model], ["manifest not found"]),
    ]
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("name,path\na,b\n")
    cases.append((["evaluate", "--manifest", str(bad_cols), "--out", str(out), *model], ["lacks column", "image"]))
    missing = tmp_path / "missing.csv"
    missing.write_text("case,image\na,nowhere.nii.gz\n")
    cases.append((["evaluate", "--manifest", str(missing), "--out", str(out), *model], ["case a", "not found"]))
    dup = tmp_path / "dup.csv"
    dup.write_text(f"case,image\na,{img}\na,{img}\n")
    cases.append((["evaluate", "--manifest", str(dup), "--out", str(out), *model], ["appears twice"]))
    cases.append((["evaluate", img, "--model", str(tmp_path / "nomodel"), "--out", str(out)], ["model not found"]))
    for argv, fragments in cases:
        assert main(argv) == 2, argv
        _one_line_error(capsys, *fragments)
        assert _no_outputs(out)
    # an output folder with results is refused before any work
    out.mkdir()
    (out / "metrics.csv").write_text("keep\n")
    assert main(["evaluate", img, "--out", str(out), "--classes", "heart", *model, *FAST[:4]]) == 2
    _one_line_error(capsys, "already holds results", "--overwrite")
    assert (out / "metrics.csv").read_text() == "keep\n"


def test_compare_bad_inputs(tmp_path, tiny_thorax_model_dir, cohort, capsys):
    m = str(tiny_thorax_model_dir)
    out = tmp_path / "cmp"
    empty = tmp_path / "empty"
    empty.mkdir()
    nolabels = tmp_path / "nolabels" / "case_0000"
    nolabels.mkdir(parents=True)
    (nolabels / "image.nii.gz").write_bytes((cohort / "case_0000" / "image.nii.gz").read_bytes())
    cases = [
        ([m, "--data", str(tmp_path / "nowhere")], ["data folder not found"]),
        ([m, "--data", str(empty)], ["no cases"]),
        ([m, "--data", str(nolabels.parent)], ["has no labels.nii.gz"]),
        ([m, m, "--data", str(cohort), "--names", "A"], ["--names gives 1 name(s) for 2 model(s)"]),
        ([m, str(tmp_path / "nomodel"), "--data", str(cohort)], ["model not found"]),
        ([m, "--data", str(cohort), "--alpha", "1.5"], ["--alpha"]),
    ]
    for argv, fragments in cases:
        assert main(["compare", *argv, "--out", str(out), "--device", "cpu"]) == 2, argv
        _one_line_error(capsys, *fragments)
        assert _no_outputs(out)
