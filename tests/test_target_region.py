"""Explain a region, not only a class (issue 14 item 9): ``f_c = Σ_{M_c ∩ R} z_c``.

On a linear model ``z_c = w_c·x + b_c`` the vanilla gradient of that score is ``w_c`` on ``M_c ∩ R`` and 0
elsewhere, exactly (the sliding-window blend weights sum to one per voxel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import LinearSeg, model_grid_case, write_labels_json

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.workflows.case import run_case
from napari_agg2exp.workflows.case_folder import CaseFolder

W, B = (0.0, 1.0, 2.0), (0.0, -0.3, -1.0)  # class 0 below x=0.3, class 1 up to 0.7, class 2 above


def _case():
    x = torch.linspace(0, 1, 20).view(-1, 1, 1).expand(20, 18, 16).contiguous() + 0.02 * torch.randn(20, 18, 16)
    return model_grid_case(LinearSeg(W, B), x, (8, 8, 8), overlap=0.5, blend="gaussian")


def _box():
    region = np.zeros((20, 18, 16), np.uint8)
    region[4:15, 3:9, 5:12] = 1
    return region


def test_vg_is_the_slope_on_region_and_prediction_and_zero_elsewhere(tmp_path):
    case = _case()
    region = _box()
    assert {0, 1, 2} <= set(np.unique(case.labels[region > 0]))
    res = run_case(case.model, case.image, prepared=case, explainer=Explainer("vg"), target_region=Volume(region),
                   out=CaseFolder(tmp_path / "c"))
    e = res.explanation
    assert e.targets == ["c0", "c1", "c2"]
    for name, c in zip(e.targets, e.target_ids):
        expected = W[c] * ((case.labels == c) & (region > 0))
        written = load_volume(tmp_path / "c" / "attributions" / f"{name}.nii.gz").array
        np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-6)
        # the explained score is the class's logit sum over the region only
        x = case.inputs.numpy()
        assert e.scores[name] == pytest.approx(float((W[c] * x + B[c])[expected != 0 if c else
                                                                         (case.labels == 0) & (region > 0)].sum()),
                                               rel=1e-4, abs=1e-4)
    info = json.loads((tmp_path / "c" / "attribution_info.json").read_text())
    assert info["target_region"]["model_voxels"] == int(region.sum())
    assert set(res.local_importance["target"]) == set(e.targets)  # local importance as usual


def test_region_on_another_grid_is_placed_by_its_affine():
    """A region file covering a larger field of view (shifted origin) lands on the same model voxels."""
    case = _case()
    box = _box()
    big = np.zeros((26, 24, 22), np.uint8)
    big[3:23, 3:21, 3:19] = box
    aff = np.eye(4)
    aff[:3, 3] = -3  # voxel (3, 3, 3) of the big grid is voxel (0, 0, 0) of the scan
    e = Explainer("vg").explain(case, ["c1"], target_region=Volume(big, aff))
    np.testing.assert_allclose(e.maps_model[0], W[1] * ((case.labels == 1) & (box > 0)), atol=1e-6)
    e2 = Explainer("vg").explain(case, ["c2"], target_region=Volume(np.where(big > 0, 7, 0).astype(np.uint8), aff))
    assert e2.region.voxels == int(box.sum())


def test_region_errors_are_one_line():
    case = _case()
    only_low = np.zeros((20, 18, 16), np.uint8)
    only_low[:3] = 1  # x < 0.3: class 0 only
    with pytest.raises(Agg2ExpError, match="does not overlap the prediction of c2"):
        Explainer("vg").explain(case, ["c2"], target_region=only_low)
    with pytest.raises(Agg2ExpError, match="no affine"):
        Explainer("vg").explain(case, ["c1"], target_region=np.ones((5, 5, 5), np.uint8))
    with pytest.raises(Agg2ExpError, match="empty"):
        Explainer("vg").explain(case, ["c1"], target_region=np.zeros((20, 18, 16), np.uint8))
    # "all" inside a region: only the classes predicted there, the others skipped
    e = Explainer("vg").explain(case, None, target_region=only_low)
    assert e.targets == ["c0"] and e.skipped == ["c1", "c2"]


@pytest.fixture
def linear_ts(tmp_path):
    path = tmp_path / "linear.pt"
    torch.jit.script(LinearSeg(W, B)).save(str(path))
    return path, write_labels_json(tmp_path / "labels.json", ["c0", "c1", "c2"])


def test_cli_target_region(tmp_path, linear_ts, capsys):
    model, labels = linear_ts
    rng = np.random.default_rng(0)
    hu = np.linspace(-1024, 1024, 20)[:, None, None] + rng.normal(0, 20, (20, 18, 16))  # default window: 0..1
    aff = np.diag([1.5, 1.5, 1.5, 1.0])  # the TorchScript default preprocessing: RAS, 1.5 mm -> model grid = image
    save_volume(Volume(hu.astype(np.float32), aff), tmp_path / "ct.nii.gz")
    regions = _box() * 2
    regions[16:, :, :] = 5
    save_volume(Volume(regions, aff), tmp_path / "region.nii.gz")
    base = ["explain", str(tmp_path / "ct.nii.gz"), "--model", str(model), "--label-names", str(labels),
            "--method", "vg", "--window-size", "16", "--device", "cpu"]
    out = tmp_path / "out"
    assert main(base + ["--target-region", f"{tmp_path / 'region.nii.gz'}:2", "--out", str(out)]) == 0
    pred = load_volume(out / "prediction_model_grid.nii.gz").array
    info = json.loads((out / "attribution_info.json").read_text())
    assert info["target_region"]["label"] == 2 and info["target_region"]["source"].endswith("region.nii.gz")
    for name in info["targets"]:
        c = int(name[1:])
        got = load_volume(out / "attributions" / f"{name}.nii.gz").array
        np.testing.assert_allclose(got, W[c] * ((pred == c) & (regions == 2)), atol=1e-6)
    assert (out / "local_importance.csv").exists()
    # errors: one line, exit 2, nothing written
    for spec, msg in ((f"{tmp_path / 'region.nii.gz'}:9", "no voxel has label 9"),
                      (f"{tmp_path / 'missing.nii.gz'}", "missing.nii.gz")):
        capsys.readouterr()
        assert main(base + ["--target-region", spec, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("agg2exp: error:") and msg in err[-1] and not (tmp_path / "bad").exists()
    low = np.zeros_like(regions)
    low[:2] = 1  # HU -1024..: class 0 only
    save_volume(Volume(low, aff), tmp_path / "low.nii.gz")
    assert main(base + ["--classes", "c2", "--target-region", str(tmp_path / "low.nii.gz"), "--out",
                        str(tmp_path / "bad")]) == 2
    assert "does not overlap" in capsys.readouterr().err and not (tmp_path / "bad").exists()
