"""CLI: segment, phantom, train (smoke + resume), and every bad-input case of issue 2 item 10."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import Volume, load_volume, save_volume

from conftest import tiny_spec, write_labels_json


def _no_outputs(out):
    return not out.exists() or not any(out.iterdir())


def test_segment_writes_prediction_on_input_grid(tmp_path, tiny_model_dir, ct_file):
    gt = load_volume(ct_file)
    save_volume(Volume((gt.array > 300).astype(np.uint8), gt.affine), tmp_path / "gt.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--ground-truth", str(tmp_path / "gt.nii.gz"),
               "--out", str(out), "--device", "cpu"])
    assert rc == 0
    pred = load_volume(out / "prediction.nii.gz")
    img = nib.load(str(out / "prediction.nii.gz"))
    assert img.get_data_dtype() == np.uint8
    assert pred.shape == gt.shape
    np.testing.assert_allclose(pred.affine, gt.affine)
    assert json.loads((out / "labels.json").read_text()) == {"0": "background", "1": "a", "2": "b"}
    q = (out / "quality.csv").read_text().splitlines()
    assert q[0] == "case,class,dice,iou" and len(q) == 4


def test_output_folder_with_results_refused_unless_overwrite(tmp_path, tiny_model_dir, ct_file, capsys):
    out = tmp_path / "out"
    args = ["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    before = (out / "prediction.nii.gz").stat().st_mtime_ns
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds results" in err[0] and "--overwrite" in err[0]
    assert (out / "prediction.nii.gz").stat().st_mtime_ns == before
    assert main(args + ["--overwrite"]) == 0


def _bad_files(tmp_path, ct_file):
    good = ct_file.read_bytes()
    (tmp_path / "corrupt.nii.gz").write_bytes(b"this is not a nifti file at all" * 10)
    raw = gzip.decompress(good)
    (tmp_path / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    (tmp_path / "truncated.nii").write_bytes(raw[: 352 + 100])
    save_volume(np.zeros((10, 12), np.float32), tmp_path / "flat.nii.gz")
    save_volume(np.zeros((8, 8, 8, 3), np.float32), tmp_path / "four_d.nii.gz")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    return {
        "missing": (tmp_path / "nope.nii.gz", "not found"),
        "corrupt": (tmp_path / "corrupt.nii.gz", "corrupt"),
        "truncated_gz": (tmp_path / "truncated.nii.gz", "corrupt or truncated"),
        "truncated": (tmp_path / "truncated.nii", "corrupt or truncated"),
        "2d": (tmp_path / "flat.nii.gz", "3D"),
        "4d": (tmp_path / "four_d.nii.gz", "4D"),
        "not_nifti": (tmp_path / "image.png", "not NIfTI"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated_gz", "truncated", "2d", "4d", "not_nifti"])
def test_bad_images_one_line_error_exit_2_no_output(case, tmp_path, tiny_model_dir, ct_file, capsys):
    path, words = _bad_files(tmp_path, ct_file)[case]
    out = tmp_path / "out"
    rc = main(["segment", str(path), "--model", str(tiny_model_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("agg2exp: error:") and words in err[0], err
    assert _no_outputs(out)


def test_not_a_model(tmp_path, ct_file, capsys):
    (tmp_path / "model.txt").write_text("hello")
    folder = tmp_path / "empty_model"
    folder.mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    for model, words in [(tmp_path / "model.txt", "not a model"), (folder, "model.json is missing"),
                         (tmp_path / "bad.json", "not valid JSON"), (tmp_path / "nothing", "model not found")]:
        out = tmp_path / "out"
        assert main(["segment", str(ct_file), "--model", str(model), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert _no_outputs(out)


def test_pickle_checkpoint_needs_trust(tmp_path, ct_file, capsys):
    from napari_agg2exp.models.loading import build_network

    spec = tiny_spec()
    net = build_network(spec)
    folder = tmp_path / "pickled"
    folder.mkdir()
    spec.weights = "weights.pt"
    (folder / "model.json").write_text(json.dumps(spec.to_dict()))
    torch.save({"state_dict": net.state_dict(), "note": object.__new__(_Custom)}, folder / "weights.pt")
    out = tmp_path / "out"
    assert main(["segment", str(ct_file), "--model", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "pickle" in err
    assert _no_outputs(out)
    assert main(["segment", str(ct_file), "--model", str(folder), "--out", str(out), "--trust-checkpoint"]) == 0


class _Custom:
    pass


def test_plain_torch_checkpoint_weights_only(tmp_path, ct_file):
    from napari_agg2exp.models.loading import build_network

    spec = tiny_spec()
    net = build_network(spec)
    folder = tmp_path / "pt"
    folder.mkdir()
    spec.weights = "weights.pt"
    (folder / "model.json").write_text(json.dumps(spec.to_dict()))
    torch.save(net.state_dict(), folder / "weights.pt")
    assert main(["segment", str(ct_file), "--model", str(folder), "--out", str(tmp_path / "o")]) == 0


def test_label_count_mismatch(tmp_path, tiny_model_dir, ct_file, capsys):
    from napari_agg2exp.models.loading import build_network

    names = write_labels_json(tmp_path / "labels4.json", ["background", "a", "b", "c"])
    out = tmp_path / "out"
    assert main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--label-names", str(names), "--out", str(out)]) == 2
    assert "one name per output channel" in capsys.readouterr().err
    # TorchScript: only the forward pass knows the channel count
    ts = torch.jit.trace(build_network(tiny_spec()).eval(), torch.zeros(1, 1, 16, 16, 16))
    ts.save(str(tmp_path / "m.ts"))
    assert main(["segment", str(ct_file), "--model", str(tmp_path / "m.ts"), "--label-names", str(names),
                 "--window-size", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outputs 3 channels but 4 label names" in err[0]
    assert _no_outputs(out)
    assert main(["segment", str(ct_file), "--model", str(tmp_path / "m.ts"), "--out", str(out)]) == 2
    assert "--label-names" in capsys.readouterr().err


def test_bad_window_options(tmp_path, tiny_model_dir, ct_file, capsys):
    for extra, words in [(["--overlap", "1.5"], "overlap"), (["--blend", "gausian"], "did you mean 'gaussian'")]:
        assert main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")] + extra) == 2
        assert words in capsys.readouterr().err


def test_train_two_steps_and_resume(tmp_path, capsys):
    from napari_agg2exp.data.phantom.cohort import write_phantom_cohort

    data = tmp_path / "data"
    write_phantom_cohort(data, 3, seed=5, shape=(40, 36, 40), spacing=7.0)
    out = tmp_path / "model"
    common = ["train", str(data), "--arch", "UNet", "--arguments", '{"channels": [4, 8], "strides": [2], "num_res_units": 0}',
              "--spacing", "7", "--window-size", "32", "--patch-size", "24", "--batch-size", "1", "--val-every", "1",
              "--val-fraction", "0.34", "--out", str(out)]
    assert main(common + ["--iterations", "2"]) == 0
    assert (out / "model.json").exists() and (out / "weights.safetensors").exists()
    assert (out / "last" / "model.json").exists() and (out / "train_state.pt").exists()
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    assert main(common + ["--iterations", "2"]) == 2  # refuses to overwrite without --resume
    capsys.readouterr()
    assert main(common + ["--iterations", "4", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resumed at step 2" in text and "step 4/4" in text
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 4
    spec = json.loads((out / "model.json").read_text())
    assert spec["architecture"] == "UNet" and len(spec["class_names"]) == 17
    # the trained model segments through the CLI
    assert main(["segment", str(data / "case_0000" / "image.nii.gz"), "--model", str(out), "--out", str(tmp_path / "seg")]) == 0


def test_phantom_cli(tmp_path):
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--cases", "2", "--seed", "3"]) == 0
    for c in ("case_0000", "case_0001"):
        for f in ("image", "labels", "pathology"):
            assert (out / c / f"{f}.nii.gz").exists()
    assert json.loads((out / "labels.json").read_text())["16"] == "costal_cartilages"
    assert main(["phantom", "--out", str(out), "--cases", "2"]) == 2


def test_npe2_validate():
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-agg2exp", "--imports"], capture_output=True, text=True)
    if r.returncode != 0 and "No module named npe2.__main__" in r.stderr:
        from pathlib import Path

        npe2 = Path(sys.executable).parent / "npe2"
        r = subprocess.run([str(npe2), "validate", "napari-agg2exp", "--imports"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in r.stdout


def test_agg2exp_console_script_help():
    from pathlib import Path

    exe = Path(sys.executable).parent / "agg2exp"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "segment" in r.stdout and "explain" in r.stdout
