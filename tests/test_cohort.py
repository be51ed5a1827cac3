"""Cohorts on Dask: LocalCluster with 2 workers, kill-and-resume, failures, refused parameter changes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from napari_agg2exp.cli.main import main


@pytest.fixture
def cohort_inputs(tmp_path):
    import torch

    from napari_agg2exp.models.loading import build_network, save_model
    from napari_agg2exp.data.phantom.cohort import write_phantom_cohort

    from conftest import tiny_spec

    spec = tiny_spec(arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    torch.manual_seed(4)
    model = save_model(build_network(spec), spec, tmp_path / "model")
    data = tmp_path / "data"
    write_phantom_cohort(data, 4, seed=11, shape=(40, 36, 40), spacing=7.0)
    from napari_agg2exp.data.volume import load_volume, save_volume

    for i in range(4):  # ground truth of the tiny model's 3 classes (ids above them are refused)
        gt = load_volume(data / f"case_{i:04d}" / "labels.nii.gz")
        save_volume(gt.like((gt.array % 3).astype("uint8")), data / f"case_{i:04d}" / "labels.nii.gz")
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "image", "labels"])
        for i in range(4):
            w.writerow([f"c{i}", f"data/case_{i:04d}/image.nii.gz", f"data/case_{i:04d}/labels.nii.gz"])
    return model, manifest


def _cohort_args(model, manifest, out, *extra):
    return ["cohort", str(manifest), "--model", str(model), "--method", "ig", "--steps", "12", "--out", str(out), *extra]


def test_local_cluster_two_workers(cohort_inputs, tmp_path, capsys):
    model, manifest = cohort_inputs
    out = tmp_path / "cohort"
    assert main(_cohort_args(model, manifest, out, "--workers", "2", "--analyse")) == 0
    for i in range(4):
        d = out / "cases" / f"c{i}"
        for f in ("prediction.nii.gz", "local_importance.csv", "quality.csv", "case.json", "labels.json"):
            assert (d / f).exists(), (d, f)
        assert not (d / "attributions").exists()  # maps are not kept by default
    local = pd.read_csv(out / "local_importance.csv")
    assert sorted(local["case"].unique()) == ["c0", "c1", "c2", "c3"]
    assert not local.duplicated(["case", "target", "roi", "part"]).any()
    assert sorted(pd.read_csv(out / "quality.csv")["case"].unique()) == ["c0", "c1", "c2", "c3"]
    assert (out / "global_importance.csv").exists() and (out / "graph.graphml").exists() and (out / "report.html").exists()
    # a rerun does nothing new
    capsys.readouterr()
    assert main(_cohort_args(model, manifest, out, "--workers", "2")) == 0
    assert "4 already committed, 0 to run" in capsys.readouterr().out


def test_kill_and_resume(cohort_inputs, tmp_path):
    model, manifest = cohort_inputs
    out = tmp_path / "cohort"
    cmd = [sys.executable, "-m", "napari_agg2exp.cli.main"] + _cohort_args(model, manifest, out, "--workers", "1", "--steps", "40")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            done = [p for p in (out / "cases").glob("c*") if (p / "case.json").exists()] if (out / "cases").exists() else []
            if done:
                break
            assert proc.poll() is None, "the cohort run ended before the kill"
            time.sleep(0.05)
        else:
            pytest.fail("no case committed in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)
    committed = {p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir()} for p in (out / "cases").glob("c*")}
    assert 1 <= len(committed) < 4, committed
    assert main(_cohort_args(model, manifest, out, "--workers", "1", "--steps", "40")) == 0
    for name, files in committed.items():  # committed cases were not recomputed
        for f, mtime in files.items():
            assert (out / "cases" / name / f).stat().st_mtime_ns == mtime
    local = pd.read_csv(out / "local_importance.csv")
    assert sorted(local["case"].unique()) == ["c0", "c1", "c2", "c3"]
    assert not local.duplicated(["case", "target", "roi", "part"]).any()
    assert not list((out / "cases").glob(".*partial*"))


def test_corrupt_case_isolated_and_retry(cohort_inputs, tmp_path, capsys):
    model, manifest = cohort_inputs
    bad = manifest.parent / "data" / "case_0002" / "image.nii.gz"
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"garbage" * 100)
    out = tmp_path / "cohort"
    assert main(_cohort_args(model, manifest, out, "--workers", "2")) == 1
    failed = pd.read_csv(out / "failed.csv")
    assert list(failed["case"]) == ["c2"] and "corrupt" in failed["error"][0]
    assert sorted(pd.read_csv(out / "local_importance.csv")["case"].unique()) == ["c0", "c1", "c3"]
    # a plain rerun leaves the failed case alone; --retry-failed redoes only it
    capsys.readouterr()
    assert main(_cohort_args(model, manifest, out, "--workers", "1")) == 1
    assert "0 to run" in capsys.readouterr().out
    bad.write_bytes(good_bytes)
    assert main(_cohort_args(model, manifest, out, "--workers", "1", "--retry-failed")) == 0
    assert "3 already committed, 1 to run" in capsys.readouterr().out
    assert not (out / "failed.csv").exists()
    assert sorted(pd.read_csv(out / "local_importance.csv")["case"].unique()) == ["c0", "c1", "c2", "c3"]


def test_changed_parameters_refused(cohort_inputs, tmp_path, capsys):
    model, manifest = cohort_inputs
    out = tmp_path / "cohort"
    rows = manifest.read_text().splitlines()[:2]
    small = tmp_path / "one.csv"
    small.write_text("\n".join(rows) + "\n")
    assert main(_cohort_args(model, small, out, "--keep-maps")) == 0
    assert (out / "cases" / "c0" / "attributions").is_dir()
    capsys.readouterr()
    assert main(_cohort_args(model, small, out, "--steps", "13")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "parameters" in err[0]
    assert main(["cohort", str(small), "--model", str(model), "--method", "vg", "--out", str(out)]) == 2


def test_bad_manifest(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("case,path\nx,y\n")
    assert main(["cohort", str(m), "--method", "vg", "--out", str(tmp_path / "o")]) == 2
    assert "lacks column" in capsys.readouterr().err
    m.write_text("case,image\nx,a.nii.gz\nx,b.nii.gz\n")
    assert main(["cohort", str(m), "--method", "vg", "--out", str(tmp_path / "o")]) == 2
    assert "appears twice" in capsys.readouterr().err
