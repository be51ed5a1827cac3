"""Hostile inputs get one clear line (exit 2), before any work (issue 15; more to come)."""

from __future__ import annotations

import json

import pytest

from napari_agg2exp.cli.main import main


def _one_error(capsys, *words):
    err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("agg2exp: warning")]
    assert len(err) == 1 and err[0].startswith("agg2exp: error:"), err
    for w in words:
        assert w in err[0], err[0]


@pytest.mark.parametrize("args, words", [
    (["--method", "ig", "--steps", "0"], ["n_steps", "--steps", "at least 1"]),
    (["--method", "sg", "--samples", "0"], ["nt_samples", "--samples", "at least 1"]),
    (["--method", "sg", "--noise-level", "nan"], ["noise_level", "finite"]),
    (["--method", "kernelshap-cubes", "--samples", "-3"], ["n_samples", "at least 1"]),
])
def test_method_settings_are_checked_not_replaced(args, words, tmp_path, ct_file, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(ct_file), *args, "--out", str(out)]) == 2
    _one_error(capsys, *words)
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--workers", "-1"), ("--workers", "0"), ("--threads-per-worker", "0")])
def test_cohort_worker_counts_are_checked(flag, value, tmp_path, ct_file, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case,image\nc0,{ct_file}\n")
    out = tmp_path / "cohort"
    assert main(["cohort", str(manifest), "--method", "vg", flag, value, "--out", str(out)]) == 2
    _one_error(capsys, flag, ">= 1")
    assert not out.exists()  # refused before anything is written (0.1 hung here at 0 %)


@pytest.mark.parametrize("weights", ["/etc/passwd", "../weights.safetensors", "sub/../../w.safetensors", 3])
def test_model_weights_stay_inside_the_model_folder(weights, tiny_model_dir, tmp_path, ct_file, capsys):
    spec = json.loads((tiny_model_dir / "model.json").read_text())
    spec["weights"] = weights
    (tiny_model_dir / "model.json").write_text(json.dumps(spec))
    assert main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "weights", "inside the model folder")
