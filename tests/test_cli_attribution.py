"""``agg2exp explain``: files, formats, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import Volume, load_volume, save_volume


@pytest.fixture
def bn_model_dir(tmp_path):
    import torch

    from napari_agg2exp.models.loading import build_network, save_model

    from conftest import tiny_spec

    spec = tiny_spec(arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    torch.manual_seed(2)
    return save_model(build_network(spec), spec, tmp_path / "bn_model")


@pytest.mark.parametrize("method,extra", [("vg", []), ("ig", ["--steps", "8"]), ("sg", ["--samples", "2"]),
                                          ("kernelshap-semantic", ["--samples", "30", "--features", "GT"]),
                                          ("kernelshap-cubes", ["--samples", "20", "--batch-size", "10"])])
def test_explain_writes_case_folder(method, extra, tmp_path, bn_model_dir, ct_file):
    out = tmp_path / "out"
    gt = load_volume(ct_file)
    save_volume(Volume((gt.array > 300).astype(np.uint8) * 2, gt.affine), tmp_path / "gt.nii.gz")
    extra = [str(tmp_path / "gt.nii.gz") if a == "GT" else a for a in extra]
    rc = main(["explain", str(ct_file), "--model", str(bn_model_dir), "--method", method, "--ground-truth",
               str(tmp_path / "gt.nii.gz"), "--out", str(out)] + extra)
    assert rc == 0
    info = json.loads((out / "attribution_info.json").read_text())
    assert info["method"] == method and info["seconds"] >= 0 and "parameters" in info
    assert info["image"].endswith("ct.nii.gz")
    maps = sorted((out / "attributions").glob("*.nii.gz"))
    assert [m.name.split(".")[0] for m in maps] and set(info["targets"]) == {m.name[: -len(".nii.gz")] for m in maps}
    for m in maps:
        img = nib.load(str(m))
        assert img.get_data_dtype() == np.float32 and img.shape == gt.shape
        np.testing.assert_allclose(img.affine, gt.affine)
    if method == "ig":
        assert set(info["ig_completeness_relative_error"]) == set(info["targets"])
    table = pd.read_csv(out / "local_importance.csv")
    assert list(table.columns) == ["case", "target", "roi", "part", "mass", "mean"]
    sums = table[table.part == "abs"].groupby("target")["mass"].sum()
    np.testing.assert_allclose(sums.values, 1.0, atol=1e-6)
    assert (out / "quality.csv").exists() and (out / "prediction.nii.gz").exists()


def test_explain_absent_class_reported(tmp_path, bn_model_dir, ct_file, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(ct_file), "--model", str(bn_model_dir), "--method", "vg", "--out", str(out)]) == 0
    present = json.loads((out / "attribution_info.json").read_text())["targets"]
    absent = [c for c in ("background", "a", "b") if c not in present]
    capsys.readouterr()
    if absent:
        out2 = tmp_path / "out2"
        assert main(["explain", str(ct_file), "--model", str(bn_model_dir), "--method", "vg",
                     "--classes", f"{present[0]},{absent[0]}", "--out", str(out2)]) == 0
        assert absent[0] in capsys.readouterr().out
        assert json.loads((out2 / "attribution_info.json").read_text())["skipped"] == [absent[0]]


@pytest.mark.parametrize("args,words", [(["--method", "smoothgrad"], "unknown method"),
                                        (["--method", "vg", "--classes", "liver"], "unknown class"),
                                        (["--method", "vg", "--classes", "9"], "out of range")])
def test_explain_bad_options(args, words, tmp_path, bn_model_dir, ct_file, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(ct_file), "--model", str(bn_model_dir), "--out", str(out)] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not out.exists() or not any(out.iterdir())
