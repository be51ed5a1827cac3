"""Fault test (issue 15): SIGKILL ``explain``, ``global``, ``aggregate`` and ``cohort`` at random points;
the output is then either complete and valid or absent, and a rerun succeeds (without --overwrite where
the output is absent; the same command resumes a cohort). Seeded, few kill points, tiny model and scan."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from napari_agg2exp.cli.main import main
from napari_agg2exp.importance.tables import read_local_table
from napari_agg2exp.workflows.case_folder import CaseFolder, is_case_folder

MARKER = ".agg2exp-output"  # what every complete staged output folder holds
RNG = random.Random(15)


def _kill_at(args, cwd, ready, delay):
    """Start the CLI, wait until ``ready(stderr so far)`` (or the run ends), sleep ``delay`` s, SIGKILL its
    process group (Dask workers included)."""
    log = Path(cwd) / "killed.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "napari_agg2exp.cli.main", *args], cwd=cwd,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 120
    while proc.poll() is None and not ready(log.read_text(errors="replace")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    finished = proc.poll() is not None
    print(f"{args[0]}: killed {'after it finished' if finished else 'mid-run'} ({delay:.2f} s after ready)")
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return finished


def _staging(parent, name):
    return lambda _: any(p.name.startswith(f".{name}.partial.") for p in Path(parent).iterdir())


def _rerun(args, out):
    """A rerun succeeds: plain where the output is absent, with --overwrite where it is complete."""
    assert main(args + (["--overwrite"] if os.path.exists(out) else [])) == 0


def _no_leftovers(parent, name):
    assert not [p.name for p in Path(parent).iterdir() if p.name.startswith(f".{name}.")], list(Path(parent).iterdir())


def _check_case_folder(out):
    if not out.exists():
        return False
    assert (out / MARKER).is_file(), sorted(p.name for p in out.iterdir())
    case = CaseFolder(out).load(load_image=False)
    assert case.attributions and (out / "attribution_info.json").exists()
    assert len(read_local_table(out / "local_importance.csv")) > 0
    return True


def _check_global(out):
    if not out.exists():
        return False
    assert (out / MARKER).is_file()
    for f in ("global_importance.csv", "graph.graphml", "graph.png", "heatmap.png"):
        assert (out / f).stat().st_size > 0, f
    assert len(pd.read_csv(out / "global_importance.csv")) > 0
    return True


@pytest.fixture
def explained(tmp_path, tiny_model_dir, ct_file):
    case = tmp_path / "case"
    assert main(["explain", str(ct_file), "--method", "vg", "--model", str(tiny_model_dir), "--device", "cpu",
                 "--out", str(case)]) == 0
    return case


def test_sigkill_explain_global_aggregate(tmp_path, tiny_model_dir, ct_file, explained):
    # explain: killed while its staging folder is being filled
    out = tmp_path / "ex"
    args = ["explain", str(ct_file), "--method", "ig", "--steps", "8", "--model", str(tiny_model_dir),
            "--device", "cpu", "--out", str(out)]
    _kill_at(args, tmp_path, _staging(tmp_path, out.name), RNG.uniform(0, 1.0))
    _check_case_folder(out)
    _rerun(args, out)
    assert _check_case_folder(out)
    _no_leftovers(tmp_path, out.name)
    # global: killed while drawing its figures
    out = tmp_path / "g"
    args = ["global", str(explained), "--out", str(out)]
    _kill_at(args, tmp_path, _staging(tmp_path, out.name), RNG.uniform(0, 1.0))
    _check_global(out)
    _rerun(args, out)
    assert _check_global(out)
    _no_leftovers(tmp_path, out.name)
    # aggregate: one file, written atomically; killed once its progress shows
    out = tmp_path / "local.csv"
    args = ["aggregate", "--attributions", str(explained), "--out", str(out)]
    _kill_at(args, tmp_path, lambda err: "aggregate" in err, RNG.uniform(0, 0.3))
    if out.exists():
        assert len(read_local_table(out)) > 0
    _rerun(args, out)
    assert len(read_local_table(out)) > 0


def test_sigkill_cohort_then_resume(tmp_path, tiny_model_dir, ct_file):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,image\n" + "".join(f"c{i},{ct_file}\n" for i in range(3)))
    out = tmp_path / "cohort"
    args = ["cohort", str(manifest), "--method", "ig", "--steps", "8", "--model", str(tiny_model_dir),
            "--device", "cpu", "--workers", "1", "--out", str(out)]
    _kill_at(args + ["--analyse"], tmp_path, lambda err: "cohort" in err, RNG.uniform(0, 3.0))
    if out.exists():  # what a killed run left is valid: committed cases load, tables read back
        assert "fingerprint" in json.loads((out / "cohort.json").read_text())
        for d in (out / "cases").iterdir() if (out / "cases").exists() else []:
            if not d.name.startswith("."):
                assert is_case_folder(d) and len(read_local_table(d / "local_importance.csv")) > 0
        if (out / "local_importance.csv").exists():
            assert len(read_local_table(out / "local_importance.csv")) > 0
    assert main(args + ["--analyse"]) == 0  # resumes
    assert sorted(read_local_table(out / "local_importance.csv")["case"].unique()) == ["c0", "c1", "c2"]
    assert (out / "global_importance.csv").exists() and (out / "report.html").exists()
    assert not [p for p in out.rglob(".*") if ".partial." in p.name or p.name.endswith(".lock")]
    _no_leftovers(tmp_path, "cohort")
