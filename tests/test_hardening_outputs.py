"""Output folders (issue 15 items 2, 3, 4, 7, 9): an overwrite replaces the whole folder, one run at a
time holds a folder (stale locks taken over), a cohort resume checks the model's content and every
output-shaping option, an unwritable --out fails before any work, every folder is staged and killed
runs' staging folders are removed. CLI level: exit status, stderr's one line, files left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
MARKER = ".agg2exp-output"  # the marker a staged output folder holds

from conftest import tiny_spec


def _one_error(capsys, *words):
    err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("agg2exp: warning")]
    assert len(err) == 1 and err[0].startswith("agg2exp: error:"), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def scans(tmp_path, ct_file):
    """Two different scans, the first with ground truth."""
    a = load_volume(ct_file)
    gt = save_volume(Volume((a.array > 300).astype(np.uint8), a.affine), tmp_path / "gt.nii.gz", dtype="uint8")
    rng = np.random.default_rng(5)
    b = save_volume(Volume(rng.normal(0, 300, (18, 20, 16)).astype(np.float32), np.diag([1.0, 1.1, 1.9, 1.0])),
                    tmp_path / "other.nii.gz")
    return ct_file, gt, b


def _explain(image, model, out, *extra):
    return ["explain", str(image), "--method", "vg", "--model", str(model), "--device", "cpu", "--out", str(out),
            *extra]


# ---------------------------------------------------------------- item 2: --overwrite leaves no stale file


def test_overwrite_holds_exactly_the_new_runs_files(scans, tiny_model_dir, tmp_path, capsys):
    first, gt, second = scans
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(_explain(first, tiny_model_dir, out, "--ground-truth", str(gt))) == 0
    assert (out / "quality.csv").exists()
    assert main(_explain(second, tiny_model_dir, out, "--overwrite")) == 0
    assert main(_explain(second, tiny_model_dir, fresh)) == 0
    assert _files(out) == _files(fresh)  # the truth: what a run into an empty folder writes
    assert not (out / "quality.csv").exists()
    assert main(["report", str(out)]) == 0
    assert "Segmentation quality" not in (out / "report.html").read_text()  # 0.2 showed the first scan's Dice


def test_overwrite_refuses_a_folder_agg2exp_did_not_write(tiny_model_dir, ct_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(out), "--overwrite"]) == 2
    _one_error(capsys, str(out), "not written by agg2exp", "--out")
    assert _files(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"


def test_global_overwrite_drops_stale_figures(tmp_path, tiny_model_dir, ct_file, capsys):
    case = tmp_path / "case"
    assert main(_explain(ct_file, tiny_model_dir, case)) == 0
    out = tmp_path / "g"
    assert main(["global", str(case), "--out", str(out)]) == 0
    (out / "distributions" / "stale.png").write_bytes(b"x")  # as a run with another target left it
    (out / "old_table.csv").write_text("a\n1\n")
    assert main(["global", str(case), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "distributions" / "stale.png").exists() and not (out / "old_table.csv").exists()


# ---------------------------------------------------------------- item 3: one run per output folder

HOLD = textwrap.dedent("""
    import sys, time
    from napari_agg2exp.files import OutputLock
    with OutputLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def _holder(out):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_on_a_folder_in_use_is_refused_and_a_dead_holder_taken_over(tiny_model_dir, ct_file, tmp_path,
                                                                               capsys):
    out = tmp_path / "out"
    args = ["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(out)]
    proc = _holder(out)
    try:
        assert main(args) == 2
        _one_error(capsys, str(out), "in use", f"pid {proc.pid}")
        assert not out.exists()
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding the lock: its lock file stays behind, stale
        proc.wait()
    assert (tmp_path / ".out.lock").exists()
    assert json.loads((tmp_path / ".out.lock").read_text())["pid"] == proc.pid
    assert main(args) == 0
    assert (out / "prediction.nii.gz").exists() and not (tmp_path / ".out.lock").exists()


def test_lock_file_of_a_dead_run_is_taken_over(tiny_model_dir, ct_file, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    assert main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out")]) == 0


def test_global_refused_while_another_run_holds_it(tmp_path, tiny_model_dir, ct_file, capsys):
    case = tmp_path / "case"
    assert main(_explain(ct_file, tiny_model_dir, case)) == 0
    out = tmp_path / "g"
    proc = _holder(out)
    capsys.readouterr()
    try:
        assert main(["global", str(case), "--out", str(out)]) == 2
        _one_error(capsys, "in use", f"pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()


def test_report_into_a_case_folder_and_train_wait_for_its_lock(tmp_path, tiny_model_dir, ct_file, capsys):
    case = tmp_path / "case"
    assert main(_explain(ct_file, tiny_model_dir, case)) == 0
    proc = _holder(case)  # e.g. an ``explain --overwrite`` about to replace the folder
    capsys.readouterr()
    try:
        assert main(["report", str(case)]) == 2
        _one_error(capsys, "in use", f"pid {proc.pid}")
        assert not (case / "report.html").exists()
        elsewhere = tmp_path / "elsewhere.html"  # written outside the folder: no lock needed
        assert main(["report", str(case), "--out", str(elsewhere)]) == 0 and elsewhere.stat().st_size > 0
    finally:
        proc.kill()
        proc.wait()
    assert main(["report", str(case)]) == 0 and (case / "report.html").exists()

    model = tmp_path / "trained"
    proc = _holder(model)
    capsys.readouterr()
    try:
        assert main(["train", str(tmp_path / "data"), "--out", str(model), "--iterations", "1"]) == 2
        _one_error(capsys, "in use", f"pid {proc.pid}")
        assert not model.exists()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- item 4: cohort resume fingerprint


def _save_tiny(path, seed):
    from napari_agg2exp.models.loading import build_network, save_model

    spec = tiny_spec()
    torch.manual_seed(seed)
    return save_model(build_network(spec), spec, path)


def test_cohort_resume_checks_model_content_and_options(tmp_path, ct_file, capsys):
    model = _save_tiny(tmp_path / "model", 1)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case,image\nc0,{ct_file}\n")
    out = tmp_path / "cohort"

    def cohort(model_dir, *extra):
        return main(["cohort", str(manifest), "--method", "vg", "--model", str(model_dir), "--device", "cpu",
                     "--out", str(out), *extra])

    assert cohort(model) == 0
    before = (out / "cohort.json").read_text()
    _save_tiny(tmp_path / "model", 2)  # new weights, same path
    capsys.readouterr()
    assert cohort(model) == 2
    _one_error(capsys, "other settings", "model files")
    assert cohort(tmp_path / "model_moved") == 2  # (not found: one line)
    capsys.readouterr()
    _save_tiny(tmp_path / "model", 1)  # the original weights again
    assert cohort(model, "--keep-maps") == 2
    _one_error(capsys, "other settings", "--keep-maps")
    assert (out / "cohort.json").read_text() == before
    shutil.copytree(model, tmp_path / "model_copy")  # same content elsewhere: resumes
    assert cohort(tmp_path / "model_copy") == 0
    assert "1 already committed, 0 to run" in capsys.readouterr().out
    # item 9: staging folders of killed runs are removed; the analysis is staged
    (out / "cases" / ".c9.partial.dead01").mkdir()
    (out / ".analysis.partial.dead02").mkdir()
    assert cohort(model, "--analyse") == 0
    assert _hidden(out) == [] and _hidden(out / "cases") == []
    assert (out / "global_importance.csv").exists() and (out / "report.html").exists()


def test_cohort_fingerprint_changes_with_every_model_file(tmp_path):
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.workflows.cohort import CohortConfig

    model = _save_tiny(tmp_path / "model", 1)
    loaded = load_model(model, device="cpu")
    assert sorted(os.path.basename(f) for f in loaded.files) == ["model.json", "weights.safetensors"]
    fp = CohortConfig("vg", model=str(model)).fingerprint()
    spec = json.loads((model / "model.json").read_text())
    spec["preprocessing"]["a_min"] = -1000.0  # a spec change that keeps the weights
    (model / "model.json").write_text(json.dumps(spec))
    assert CohortConfig("vg", model=str(model)).fingerprint()["model"] != fp["model"]
    assert CohortConfig("vg", model=str(model), keep_maps=True).fingerprint()["keep_maps"] is True


# ---------------------------------------------------------------- item 7: unwritable --out fails first

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _unwritable_parent(tmp_path):
    """A folder this process cannot create anything in: chmod 0500 (root ignores permission bits, so as
    root a read-only sysfs path, if the system has one)."""
    if not IS_ROOT:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro
    probe = "/sys/agg2exp-probe"
    try:
        os.mkdir(probe)
    except OSError:
        return "/sys"
    os.rmdir(probe)
    pytest.skip("running as root without a read-only file system to write to: root ignores permission bits")


@pytest.mark.parametrize("where", ["unwritable", "under_a_file"])
def test_unwritable_out_fails_before_any_work(where, tmp_path, ct_file, capsys):
    if where == "under_a_file":
        (tmp_path / "f.txt").write_text("x")
        out = tmp_path / "f.txt" / "out"
    else:
        out = f"{_unwritable_parent(tmp_path)}/out"
    broken_model = tmp_path / "nope_model"  # never read: --out is checked first
    for args in (["segment", str(ct_file)], _explain(ct_file, broken_model, out)[:4],
                 ["global", str(tmp_path / "missing.csv")],
                 ["cohort", str(tmp_path / "missing.csv"), "--method", "vg"]):
        rc = main([*args, "--out", str(out)] + (["--model", str(broken_model)] if args[0] != "global" else []))
        assert rc == 2, args
        line = _one_error(capsys, "--out")
        assert ("not writable" in line) if where == "unwritable" else ("is a file" in line or "not a folder" in line)
        assert "model" not in line.replace("--out", "")
    if where == "unwritable":
        assert main(["aggregate", "--attributions", str(tmp_path / "nope"), "--out", f"{out}.csv"]) == 2
        _one_error(capsys, "not writable")


# ---------------------------------------------------------------- item 9: staged outputs, stale staging removed


def test_global_is_staged(tmp_path, tiny_model_dir, ct_file, monkeypatch):
    case = tmp_path / "case"
    assert main(_explain(ct_file, tiny_model_dir, case)) == 0
    import napari_agg2exp.report.cohort_outputs as outputs

    def fail(*a, **k):
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(outputs, "distribution_figure", fail)  # after the table and graph were written
    out = tmp_path / "g"
    with pytest.raises(RuntimeError):
        main(["global", str(case), "--out", str(out)])
    assert not out.exists() and not [p for p in _hidden(tmp_path) if p.startswith(".g.")]
    monkeypatch.undo()
    assert main(["global", str(case), "--out", str(out)]) == 0  # no --overwrite needed
    assert (out / "global_importance.csv").exists() and (out / MARKER).exists()


def test_killed_runs_staging_folders_are_removed(tiny_model_dir, ct_file, tmp_path):
    for name in (".out.partial.k1ll3d", ".out.partial.abc_123"):  # what SIGKILLed runs left
        (tmp_path / name / "attributions").mkdir(parents=True)
        (tmp_path / name / "attributions" / "a.nii.gz").write_bytes(b"half")
    (tmp_path / ".other.partial.xyz").mkdir()  # another output's: left alone
    assert main(["segment", str(ct_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out")]) == 0
    assert _hidden(tmp_path) == [".other.partial.xyz"]

