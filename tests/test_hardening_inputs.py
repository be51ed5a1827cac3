"""Hostile inputs (issue 15 items 1, 8, 10-15): one clear line, exit 2, nothing written; NaN scans filled.

Each test runs the CLI in-process (``main``) and checks the exit status, that stderr holds exactly one
``agg2exp: error:`` line naming the problem, and that no output was left behind.
"""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_spec

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.data.preprocessing import PreprocessingSpec, preprocess
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.loading import build_network, save_model
from napari_agg2exp.workflows.manifest import read_manifest


def _one_error(capsys, *words):
    err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("agg2exp: warning")]
    assert len(err) == 1 and err[0].startswith("agg2exp: error:"), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _segment(ct, out, *extra, model=None):
    return main(["segment", str(ct), "--out", str(out), *(["--model", str(model)] if model else []), *extra])


def _edit_spec(model_dir, **changes):
    spec = json.loads((model_dir / "model.json").read_text())
    for k, v in changes.items():
        if k.startswith("pre_"):
            spec.setdefault("preprocessing", {})[k[4:]] = v
        elif k.startswith("arg_"):
            spec["arguments"][k[4:]] = v
        else:
            spec[k] = v
    (model_dir / "model.json").write_text(json.dumps(spec))


# --- item 1: NaN/Inf voxels -------------------------------------------------------------------------

def test_nan_voxels_are_filled_with_the_minimum_and_reported(tiny_model_dir, ct_file, tmp_path, capsys):
    vol = load_volume(ct_file)
    arr = vol.array.astype(np.float32)
    bad = np.zeros(arr.shape, bool)
    bad[6:10, 5:9, 4:8] = True  # inside the bright block: 64 voxels
    arr_nan = np.where(bad, np.nan, arr)
    arr_nan[0, 0, 0] = np.inf
    bad[0, 0, 0] = True
    fill = float(arr[~bad].min())
    nan_file = save_volume(Volume(arr_nan, vol.affine), tmp_path / "nan.nii.gz")
    filled_file = save_volume(Volume(np.where(bad, fill, arr).astype(np.float32), vol.affine), tmp_path / "filled.nii.gz")

    assert _segment(nan_file, tmp_path / "a", model=tiny_model_dir) == 0
    warn = [e for e in capsys.readouterr().err.splitlines() if e.startswith("agg2exp: warning")]
    assert len(warn) == 1 and "65 NaN/Inf voxels" in warn[0] and f"{65 / arr.size:.2%}" in warn[0], warn
    assert _segment(filled_file, tmp_path / "b", model=tiny_model_dir) == 0
    a = nib.load(str(tmp_path / "a" / "prediction.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "b" / "prediction.nii.gz")).get_fdata()
    np.testing.assert_array_equal(a, b)  # the scan with those voxels replaced by the same value


def test_nan_voxels_can_be_refused():
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    with pytest.raises(Agg2ExpError, match="1 NaN/Inf voxels"):
        preprocess(Volume(arr), PreprocessingSpec(spacing=None), nonfinite="refuse")
    with pytest.raises(Agg2ExpError, match="no finite voxel"):
        preprocess(Volume(np.full((4, 4, 4), np.nan, np.float32)), PreprocessingSpec(spacing=None))


# --- item 8: cohort scheduler and bad model ---------------------------------------------------------

@pytest.fixture
def manifest(tmp_path, ct_file):
    m = tmp_path / "m.csv"
    m.write_text(f"case,image\nc0,{ct_file}\nc1,{ct_file}\n")
    return m


def test_cohort_unreachable_scheduler_fails_fast(manifest, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cohort"
    t0 = time.perf_counter()
    rc = main(["cohort", str(manifest), "--method", "vg", "--model", str(tiny_model_dir), "--scheduler",
               "tcp://127.0.0.1:1", "--out", str(out)])
    assert rc == 2 and time.perf_counter() - t0 < 10
    _one_error(capsys, "tcp://127.0.0.1:1", "scheduler")
    assert not out.exists()


def test_cohort_bad_model_fails_once_before_anything_is_written(manifest, tiny_model_dir, tmp_path, capsys):
    (tiny_model_dir / "weights.safetensors").write_bytes(b"")
    out = tmp_path / "cohort"
    rc = main(["cohort", str(manifest), "--method", "vg", "--model", str(tiny_model_dir), "--out", str(out)])
    assert rc == 2
    _one_error(capsys, "weights")
    assert not out.exists()  # no cohort.json, no failed.csv


# --- item 10: broken weights ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, (10**15).to_bytes(8, "little") + b"{}",
                                     (5).to_bytes(8, "little") + b"{abcd"], ids=["empty", "corrupt", "huge-header",
                                                                                 "bad-header"])
def test_broken_weights_one_line(content, tiny_model_dir, ct_file, tmp_path, capsys):
    (tiny_model_dir / "weights.safetensors").write_bytes(content)
    assert _segment(ct_file, tmp_path / "o", model=tiny_model_dir) == 2
    _one_error(capsys, "cannot read weights", "corrupt")
    assert not (tmp_path / "o").exists()


def test_broken_weights_in_compare(tiny_model_dir, ct_file, tmp_path, capsys):
    data = tmp_path / "data" / "case_0"
    data.mkdir(parents=True)
    vol = load_volume(ct_file)
    save_volume(vol, data / "image.nii.gz")
    save_volume(vol.like((vol.array > 500).astype(np.uint8)), data / "labels.nii.gz")
    (tiny_model_dir / "weights.safetensors").write_bytes(b"\x00" * 3)
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_model_dir), str(tiny_model_dir), "--data", str(tmp_path / "data"),
                 "--out", str(out)]) == 2
    _one_error(capsys, "cannot read weights")
    assert not out.exists()


# --- item 11: scans that cannot be used -------------------------------------------------------------

def test_rgb_nifti(tiny_model_dir, tmp_path, capsys):
    rgb = np.zeros((6, 6, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    f = _nifti(tmp_path / "rgb.nii.gz", rgb)
    assert _segment(f, tmp_path / "o", model=tiny_model_dir) == 2
    _one_error(capsys, "RGB", "greyscale")
    f = _nifti(tmp_path / "rgb4d.nii.gz", np.zeros((6, 6, 6, 3), np.uint8))
    assert _segment(f, tmp_path / "o", model=tiny_model_dir) == 2
    _one_error(capsys, "RGB", "(6, 6, 6, 3)")
    assert not (tmp_path / "o").exists()


def test_singular_affine(tiny_model_dir, tmp_path, capsys):
    img = nib.Nifti1Image(np.zeros((6, 6, 6), np.float32), np.eye(4))
    aff = np.eye(4)
    aff[0, 0] = 0.0
    img.set_sform(aff, code=2)
    img.set_qform(None, code=0)
    f = tmp_path / "sing.nii.gz"
    nib.save(img, str(f))
    assert _segment(f, tmp_path / "o", model=tiny_model_dir) == 2
    _one_error(capsys, "singular affine", "sform")
    assert not (tmp_path / "o").exists()


def test_huge_voxels_checked_against_memory_before_resampling(tmp_path, ct_file, capsys):
    spec = tiny_spec(spacing=(1.5, 1.5, 1.5))
    model_dir = save_model(build_network(spec), spec, tmp_path / "m15")
    vol = load_volume(ct_file)
    f = save_volume(Volume(vol.array, np.diag([1000.0, 1000.0, 1000.0, 1.0])), tmp_path / "km.nii.gz")
    assert _segment(f, tmp_path / "o", model=model_dir) == 2
    line = _one_error(capsys, "GiB", "1000.0", "voxel size")
    assert "(13333, 12000, 11333)" in line  # the grid it would have allocated
    assert not (tmp_path / "o").exists()


def test_huge_label_ids_refused_in_aggregate(tiny_model_dir, ct_file, tmp_path, capsys):
    case = tmp_path / "case"
    assert main(["explain", str(ct_file), "--method", "vg", "--model", str(tiny_model_dir), "--out", str(case)]) == 0
    capsys.readouterr()
    rois = np.zeros(load_volume(ct_file).shape, np.uint32)
    rois[2:5, 2:5, 2:5] = 4_000_000_000
    f = save_volume(load_volume(ct_file).like(rois), tmp_path / "rois.nii.gz")
    out = tmp_path / "agg.csv"
    assert main(["aggregate", "--attributions", str(case), "--rois", str(f), "--out", str(out)]) == 2
    _one_error(capsys, "4000000000", "renumber")
    assert not out.exists()


# --- item 12: window sizes the network cannot take ---------------------------------------------------

@pytest.mark.parametrize("ws, words", [("1", ["multiple of 2", "--window-size 2"]),
                                       ("7", ["multiple of 2", "--window-size 8"]),
                                       ("2000", ["GiB", "smaller --window-size"])])
def test_window_size_checked_against_the_unet(ws, words, tiny_model_dir, ct_file, tmp_path, capsys):
    assert _segment(ct_file, tmp_path / "o", "--window-size", ws, model=tiny_model_dir) == 2
    _one_error(capsys, *words)
    assert not (tmp_path / "o").exists()


def test_window_size_checked_against_swinunetr(ct_file, tmp_path, capsys):
    spec = tiny_spec(arch="SwinUNETR", window=(32, 32, 32), arguments={"feature_size": 12, "depths": [1, 1, 1, 1]})
    spec.weights = None
    d = tmp_path / "swin"
    d.mkdir()
    (d / "model.json").write_text(json.dumps(spec.to_dict()))
    assert _segment(ct_file, tmp_path / "o", "--window-size", "50", model=d) == 2
    _one_error(capsys, "SwinUNETR", "multiple of 32", "--window-size 64")
    _edit_spec(d, window_size=[48, 48, 48])
    assert _segment(ct_file, tmp_path / "o", model=d) == 2
    _one_error(capsys, "(48, 48, 48)", "multiple of 32")
    assert not (tmp_path / "o").exists()


def test_window_multiples_match_monai(tmp_path):
    """The rule is MONAI's: a UNet with strides (2, 2) runs on 12 (a multiple of 4) and fails on 10."""
    spec = tiny_spec(arguments={"channels": [2, 4, 8], "strides": [2, 2], "num_res_units": 0})
    net = build_network(spec).eval()
    from napari_agg2exp.models.loading import check_window_size

    with torch.no_grad():
        assert net(torch.zeros(1, 1, 12, 12, 12)).shape[-3:] == (12, 12, 12)
        check_window_size(spec, (12, 12, 12))
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 1, 10, 10, 10))
        with pytest.raises(Agg2ExpError, match="multiple of 4"):
            check_window_size(spec, (10, 10, 10))


# --- item 13: malformed model.json --------------------------------------------------------------------

@pytest.mark.parametrize("change, words", [
    ({"arguments": [4, 8]}, ["\"arguments\" must be an object"]),
    ({"arg_norm": "bogus"}, ["invalid arguments for UNet", "BOGUS"]),
    ({"window_size": "96"}, ["window_size", "positive integers"]),
    ({"window_size": [16, 16]}, ["window_size", "positive integers"]),
    ({"window_size": 7}, ["multiple of 2"]),
    ({"pre_spacing": "1.5"}, ["spacing", "3 positive numbers"]),
    ({"pre_spacing": [1, -1, 1]}, ["spacing", "3 positive numbers"]),
    ({"pre_orientation": "XYZ"}, ["orientation", "'XYZ'", "RAS"]),
    ({"pre_orientation": "RRS"}, ["orientation", "RAS"]),
    ({"pre_a_min": "low"}, ["a_min", "finite number"]),
    ({"preprocessing": [1, 2]}, ["\"preprocessing\" must be an object"]),
    ({"weights": 3}, ["weights", "file name"]),
    ({"class_names": "background,a,b"}, ["class_names", "list"]),
    ({"architecture": ["UNet"]}, ["unknown architecture"]),
])
def test_malformed_model_spec_one_line(change, words, tiny_model_dir, ct_file, tmp_path, capsys):
    _edit_spec(tiny_model_dir, **change)
    assert _segment(ct_file, tmp_path / "o", model=tiny_model_dir) == 2
    _one_error(capsys, *words)
    assert not (tmp_path / "o").exists()


# --- item 14: text files, train options, cohort --out --------------------------------------------------

def test_labels_json_not_utf8(tiny_model_dir, ct_file, tmp_path, capsys):
    f = tmp_path / "labels.json"
    f.write_bytes('{"0": "background", "1": "a", "2": "\xe9"}'.encode("latin-1"))
    assert _segment(ct_file, tmp_path / "o", "--label-names", str(f), model=tiny_model_dir) == 2
    _one_error(capsys, "not UTF-8", "labels.json")
    assert not (tmp_path / "o").exists()


def test_labels_json_and_manifest_with_bom_are_read(tmp_path, ct_file):
    f = tmp_path / "labels.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"0": "background", "1": "a"}).encode())
    from napari_agg2exp.data.labels import read_label_names

    assert read_label_names(f) == ["background", "a"]
    m = tmp_path / "m.csv"
    m.write_bytes(b"\xef\xbb\xbf" + f"case,image\nc0,{ct_file}\n".encode())
    assert [r["case"] for r in read_manifest(m)] == ["c0"]


@pytest.mark.parametrize("args, words", [
    (["--arch", "Bogus"], ["unknown architecture 'Bogus'", "UNet"]),
    (["--arch", "Unet"], ["did you mean", "UNet"]),
    (["--patch-size", "0"], ["--patch-size", "positive"]),
    (["--patch-size", "7"], ["--patch-size", "multiple of 2"]),
    (["--window-size", "0"], ["--window-size", "positive"]),
    (["--iterations", "0"], ["--iterations", "at least 1"]),
    (["--lr", "nan"], ["--lr"]),
    (["--val-fraction", "1.5"], ["--val-fraction"]),
    (["--arguments", "[1]"], ["--arguments", "JSON object"]),
])
def test_train_options_checked_first(args, words, tmp_path, capsys):
    out = tmp_path / "model"
    base = ["train", str(tmp_path / "no-data"), "--out", str(out), "--arguments",
            '{"channels": [4, 8], "strides": [2], "num_res_units": 0}', "--window-size", "16", "--patch-size", "16"]
    assert main(base + args) == 2
    _one_error(capsys, *words)
    assert not out.exists()


def test_cohort_out_that_is_a_file(manifest, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cohort.txt"
    out.write_text("keep me")
    assert main(["cohort", str(manifest), "--method", "vg", "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    _one_error(capsys, "is a file")
    assert out.read_text() == "keep me"


# --- item 15: one validator for every label volume ---------------------------------------------------

BAD_LABELS = {
    "above-classes": (lambda a: np.where(a > 500, 7, 0).astype(np.int16), ["label 7", "3 classes"]),
    "fraction": (lambda a: np.where(a > 500, 1.5, 0).astype(np.float32), ["fractional"]),
    "negative": (lambda a: np.where(a > 500, -1, 0).astype(np.int16), ["negative label -1"]),
    "nan": (lambda a: np.where(a > 500, np.nan, 0).astype(np.float32), ["NaN"]),
}


@pytest.mark.parametrize("kind", list(BAD_LABELS))
def test_ground_truth_checked_like_every_label_volume(kind, tiny_model_dir, ct_file, tmp_path, capsys):
    make, words = BAD_LABELS[kind]
    vol = load_volume(ct_file)
    gt = save_volume(vol.like(make(vol.array)), tmp_path / "gt.nii.gz")
    assert _segment(ct_file, tmp_path / "o", "--ground-truth", str(gt), model=tiny_model_dir) == 2
    _one_error(capsys, "ground truth", *words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["fraction", "negative", "nan"])
def test_features_volume_checked_like_every_label_volume(kind, tiny_model_dir, ct_file, tmp_path, capsys):
    make, words = BAD_LABELS[kind]
    vol = load_volume(ct_file)
    f = save_volume(vol.like(make(vol.array)), tmp_path / "features.nii.gz")
    out = tmp_path / "o"
    assert main(["explain", str(ct_file), "--method", "feature-ablation", "--features", str(f), "--model",
                 str(tiny_model_dir), "--out", str(out)]) == 2
    _one_error(capsys, "features volume", *words)
    assert not out.exists()


def test_one_validator_for_labels():
    """The same checks answer for every caller: aggregate's and the ground truth's messages come from it."""
    assert as_label_array(np.array([[0, 1], [2, 1]], np.float32)).dtype == np.int64
    with pytest.raises(Agg2ExpError, match="label 3 but the model has 3 classes"):
        as_label_array(np.array([0, 3]), 3, what="ground truth")
    with pytest.raises(Agg2ExpError, match="renumber"):
        as_label_array(np.array([0, 4_000_000_000], np.uint32))
    with pytest.raises(Agg2ExpError, match="dtype"):
        as_label_array(np.array(["a"]))

