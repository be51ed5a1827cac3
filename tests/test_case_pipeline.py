"""One case pipeline: each scan is segmented once; every kind of case folder reads back (issue 11)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch

from napari_agg2exp.attribution import Explainer
from napari_agg2exp.cli import demo as demo_cli
from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
from napari_agg2exp.evaluation.evaluate import evaluate_case
from napari_agg2exp.models.loading import SegmentationModel, build_network, load_model, save_model
from napari_agg2exp.models.prepared import prepare_case
from napari_agg2exp.workflows.case_folder import CaseFolder, load_case

from conftest import tiny_spec


class CountingNetwork(torch.nn.Module):
    """Wraps a network and counts its forward calls (one call = one window batch)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _windows_with(prepared, class_ids) -> int:
    """Windows of the plan in which one of the classes is predicted (independent of the engine)."""
    labels = prepared.labels
    return sum(bool(np.isin(labels[sl], class_ids).any()) for sl in prepared.plan.slices)


def _tiny_model() -> SegmentationModel:
    spec = tiny_spec(arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    torch.manual_seed(4)
    net = CountingNetwork(build_network(spec).eval())
    return SegmentationModel(net, spec.class_names, spec.preprocessing, spec.window_size, torch.device("cpu"), "t", spec)


def _ct(shape=(30, 26, 22)):
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, shape).astype(np.float32)
    arr[4:16, 5:18, 3:14] += 700
    return Volume(arr, np.eye(4), "ct")


def test_explain_then_evaluate_segments_once():
    model, ct = _tiny_model(), _ct()
    net = model.network
    prepared = prepare_case(model, ct)
    n_windows = len(prepared.plan.slices)
    assert n_windows > 1 and net.calls == n_windows  # one forward per window, once
    e = Explainer("vg").explain(prepared)
    active = _windows_with(prepared, e.target_ids)
    assert net.calls == n_windows + active  # VG: one forward per window that holds a target
    evaluate_case(prepared, None, ["vg"], ["complexity"], n_subsets=2, subset_size=10)
    assert net.calls == n_windows + 2 * active  # the evaluation re-explains, it does not re-segment
    # the same from scratch segments again (its windows batched by 4): what passing the prepared case saves
    before = net.calls
    evaluate_case(model, ct, ["vg"], ["complexity"], n_subsets=2, subset_size=10, batch_size=4)
    assert net.calls - before == -(-n_windows // 4) + active


def test_demo_segments_once(tmp_path, monkeypatch):
    counted = {}

    def load_counting(path=None, **kw):
        m = load_model(path, **kw)
        m.network = counted["net"] = CountingNetwork(m.network)
        return m

    monkeypatch.setattr(demo_cli, "load_model", load_counting)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--method", "vg", "--device", "cpu"]) == 0
    model = load_model(device="cpu")
    prepared = prepare_case(model, load_volume(out / "sample" / "image.nii.gz"))
    info = json.loads((out / "attribution_info.json").read_text())
    ids = [model.class_names.index(t) for t in info["targets"]]
    assert counted["net"].calls == len(prepared.plan.slices) + _windows_with(prepared, ids)
    for name in ("case.json", "attribution_info.json", "report.html"):  # the staging folder is never recorded
        assert ".partial" not in (out / name).read_text(), name
    case = json.loads((out / "case.json").read_text())
    assert case["layout"] == 2 and case["image"] == "sample/image.nii.gz"
    assert case["ground_truth"] == "sample/labels.nii.gz"


@pytest.fixture(scope="module")
def cohort_setup(tmp_path_factory):
    from napari_agg2exp.data.phantom.cohort import write_phantom_cohort

    root = tmp_path_factory.mktemp("cohort")
    spec = tiny_spec(class_names=[f"c{i}" for i in range(17)],
                     arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"},
                     window=(20, 20, 20), spacing=(14.0, 14.0, 14.0))
    torch.manual_seed(2)
    model = save_model(build_network(spec), spec, root / "model")
    write_phantom_cohort(root / "data", 2, seed=5, shape=(40, 36, 40), spacing=7.0)
    manifest = root / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "image", "labels"])
        for i in range(2):
            w.writerow([f"k{i}", f"data/case_000{i}/image.nii.gz", f"data/case_000{i}/labels.nii.gz"])
    out = root / "run"
    assert main(["cohort", str(manifest), "--model", str(model), "--method", "vg", "--keep-maps", "--out",
                 str(out)]) == 0
    return root, model, out


def test_cohort_case_folders_read_like_explain_folders(cohort_setup, tmp_path, capsys):
    root, model, out = cohort_setup
    case_dir = out / "cases" / "k0"
    case = load_case(case_dir)  # image found through the relative path recorded in case.json
    assert case.name == "k0" and len(case.attributions) > 0 and case.image is not None
    rec = json.loads((case_dir / "case.json").read_text())
    assert not rec["image"].startswith("/") and ".partial" not in json.dumps(rec)
    # report, aggregate and global read a cohort's case folders
    assert main(["report", str(case_dir), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") >= len(case.attributions)
    assert main(["aggregate", "--attributions", str(case_dir), "--ground-truth", "--out", str(tmp_path / "a.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "a.csv")["case"]) == {"k0"}
    assert main(["global", str(out), "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "global_importance.csv").exists()
    assert main(["global", str(out / "cases" / "k0"), str(out / "cases" / "k1"), "--out", str(tmp_path / "g2")]) == 0


def test_cohort_case_without_maps_names_the_fix(cohort_setup, tmp_path, capsys):
    root, model, out = cohort_setup
    case_dir = out / "cases" / "k1"
    moved = tmp_path / "k1"
    import shutil

    shutil.copytree(case_dir, moved)
    shutil.rmtree(moved / "attributions")
    capsys.readouterr()
    assert main(["report", str(moved)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-maps" in err[0]


def _legacy_cohort_case(root, model_dir, name="old"):
    """A cohort case folder as version 0.1 wrote it: info.json, maps.npz, no labels.json."""
    from napari_agg2exp.data.phantom.cases import make_phantom

    image, labels, _ = make_phantom(3, shape=(40, 36, 40), spacing=7.0).volumes()
    save_volume(image, root / "img.nii.gz")
    cohort = root / "old_cohort"
    d = cohort / "cases" / name
    d.mkdir(parents=True)
    (cohort / "cohort.json").write_text(json.dumps({"fingerprint": {"method": "vg", "model": str(model_dir),
                                                                    "label_names": None}}))
    pred = labels.array.astype(np.uint8)
    save_volume(labels.like(pred), d / "prediction.nii.gz", dtype="uint8")
    rng = np.random.default_rng(0)
    maps = {"c3": rng.standard_normal(pred.shape).astype(np.float16),
            "c8": rng.standard_normal(pred.shape).astype(np.float16)}
    np.savez_compressed(d / "maps.npz", affine=image.affine, **maps)
    pd.DataFrame({"case": [name] * 2, "target": ["c3", "c8"], "roi": ["c3", "c8"], "part": ["abs", "abs"],
                  "mass": [0.5, 0.5], "mean": [1.0, 1.0]}).to_csv(d / "local_importance.csv", index=False)
    (d / "info.json").write_text(json.dumps({"case": name, "image": str(root / "img.nii.gz"), "method": "vg",
                                             "targets": ["c3", "c8"]}))
    return cohort, d


def test_version_01_cohort_case_folders_keep_loading(cohort_setup, tmp_path):
    root, model, out = cohort_setup
    cohort, d = _legacy_cohort_case(tmp_path, model)
    folder = CaseFolder(d)
    assert folder.layout == "0.1-cohort"
    case = folder.load()
    assert case.class_names[8] == "c8"  # from the cohort's model spec
    assert list(case.attributions) == ["c3", "c8"] and case.attributions["c8"].dtype == np.float32
    assert main(["report", str(d), "--out", str(tmp_path / "old.html")]) == 0
    assert main(["aggregate", "--attributions", str(d), "--out", str(tmp_path / "old.csv")]) == 0
    table = pd.read_csv(tmp_path / "old.csv")
    assert set(table["target"]) == {"c3", "c8"}
    sums = table[table["part"] == "abs"].groupby("target")["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    assert main(["global", str(cohort), "--out", str(tmp_path / "g_old")]) == 0
