"""captum's perturbation methods through the sliding window (issue 13 item 4): occlusion, feature ablation,
Shapley value sampling, and the window cache that runs only the windows a perturbation touches."""

from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from napari_agg2exp.attribution import (
    METHODS,
    Explainer,
    FeatureAblation,
    FeatureForward,
    Occlusion,
    ShapleyValueSampling,
    SlidingWindowTarget,
    cube_feature_mask,
)
from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.inference import SlidingWindow, sliding_window_logits
from napari_agg2exp.models.loading import build_network

from conftest import LinearSeg, model_grid_case, tiny_spec




class Counting(torch.nn.Module):
    """Counts network calls and windows."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.windows = net, 0, 0

    def forward(self, x):
        self.calls += 1
        self.windows += x.shape[0]
        return self.net(x)


def _unet():
    torch.manual_seed(0)
    spec = tiny_spec(arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    return build_network(spec).eval()


def _target(net, x, window=(16, 16, 16), overlap=0.25, blend="constant", sw_batch_size=4):
    plan = SlidingWindow.plan(tuple(x.shape), window, overlap, blend)
    with torch.no_grad():
        mask = sliding_window_logits(net, x[None], plan).argmax(0)
    classes = sorted(torch.unique(mask).tolist())
    return SlidingWindowTarget(net, plan, mask, classes, sw_batch_size=sw_batch_size), mask, classes


def test_window_cache_equals_full_scores_and_runs_fewer_windows():
    net = Counting(_unet())
    x = torch.randn(40, 21, 19)
    fwd, _, classes = _target(net, x)
    assert len(fwd.plan) == 12 and len(classes) > 1
    batch = x[None].repeat(5, 1, 1, 1)
    batch[1, 2:7, 3:9, 1:5] = 0.0  # a patch in the corner: few windows
    batch[2, 30:38, 15:20, 10:19] = -1.0  # another corner
    batch[3, ::7, ::5, ::3] += 0.5  # scattered: every window
    batch[4, 18:22, 9:12, 8:11] = 2.0  # the middle: where windows overlap
    net.windows = 0
    full = fwd.scores(batch)
    full_windows = net.windows
    cache = fwd.window_cache(x)
    assert cache.network_windows == len(cache.active) and net.windows == full_windows + len(cache.active)
    torch.testing.assert_close(cache.clean_scores, full[0], rtol=1e-5, atol=1e-4)
    net.windows = 0
    cached = cache.scores(batch)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-4)
    ran = net.windows
    assert ran == cache.network_windows - len(cache.active)
    assert ran < full_windows / 2, (ran, full_windows)  # 5 inputs: 60 windows without the cache
    assert cache.reused_windows == 5 * len(cache.active) - ran
    # a change mask that covers the changes gives the same scores without comparing volumes
    changed = batch != x[None]
    torch.testing.assert_close(cache.scores(batch, changed), full, rtol=1e-5, atol=1e-4)
    # the presence forward: features = cubes, presence 0 -> baseline
    fm = torch.as_tensor(cube_feature_mask(tuple(x.shape), 3))
    ff = FeatureForward(cache, fm, 27, 0.25)
    z = torch.ones(4, 27)
    z[1, 0] = 0
    z[2, [3, 13, 26]] = 0
    z[3] = 0
    vols = torch.where(z[:, fm.long()] == 1, x[None], torch.tensor(0.25))
    net.windows = 0
    torch.testing.assert_close(ff(z), fwd.scores(vols), rtol=1e-5, atol=1e-4)
    assert ff.cache.calls >= 4


def _monai_scores(net, v, pred, classes, window):
    """Reference: MONAI's sliding_window_inference (overlap 0.25, constant blend), class logits summed over M_c."""
    with torch.no_grad():
        z = sliding_window_inference(v[None, None], window, 8, net, overlap=0.25, mode="constant")[0]
    return torch.stack([(z[c] * (pred == c)).sum() for c in classes]).double()


def test_occlusion_equals_by_hand_loop_with_monai_sliding_window():
    net = _unet()
    shape, window = (26, 21, 19), (16, 16, 16)
    x = torch.randn(shape)
    case = model_grid_case(net, x, window)
    case.sw_batch_size = 8
    assert len(case.plan) == 8
    with torch.no_grad():
        pred = sliding_window_inference(x[None, None], window, 8, net, overlap=0.25, mode="constant")[0].argmax(0)
    np.testing.assert_array_equal(pred.numpy(), case.labels)
    classes = sorted(torch.unique(pred).tolist())
    ws, st = (9, 10, 8), (6, 5, 8)  # cells of gcd(9, 6) = 3 voxels on x; the last patch on x is clipped (18 + 9 > 26)
    maps, extra = Explainer("occlusion", sliding_window_shapes=ws, strides=st).attribute(case, classes)

    f0 = _monai_scores(net, x, pred, classes, window)
    total = torch.zeros((len(classes),) + shape, dtype=torch.float64)
    count = torch.zeros(shape, dtype=torch.float64)
    starts = [[k * s for k in range(math.ceil((n - w) / s) + 1)] for n, w, s in zip(shape, ws, st)]
    for a, b, c in itertools.product(*starts):
        patch = (slice(a, a + ws[0]), slice(b, b + ws[1]), slice(c, c + ws[2]))
        occluded = x.clone()
        occluded[patch] = 0.0
        drop = f0 - _monai_scores(net, occluded, pred, classes, window)
        total[(slice(None),) + patch] += drop[:, None, None, None]
        count[patch] += 1
    expected = total / count
    assert int(np.prod([len(s) for s in starts])) == extra["n_features"] == 48
    torch.testing.assert_close(maps.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert not torch.allclose(maps[0], maps[1])  # classes differ (no batch-axis slicing)
    assert extra["n_forwards"] == 49 and extra["network_windows"] < extra["full_windows"]
    # one class id: a map shaped like the input, equal to that class's row
    fwd = SlidingWindowTarget(net, case.plan, case.labels, classes, sw_batch_size=8)
    one = Occlusion(fwd).attribute(x[None], target=classes[1], sliding_window_shapes=ws, strides=st)
    assert one.shape == (1,) + shape
    torch.testing.assert_close(one[0], maps[1], rtol=1e-5, atol=1e-5)


def _linear_case(baseline_shift=0.0):
    net = LinearSeg()
    shape = (9, 8, 7)
    x = torch.rand(shape) * 2 - 0.5
    fwd, mask, classes = _target(net, x, window=(4, 4, 4), overlap=0.5, blend="gaussian", sw_batch_size=16)
    assert len(fwd.plan) > 8 and len(classes) == 3
    return net, x, fwd, mask, classes


def _additive_values(net, x, mask, classes, fm, baseline):
    """(K, M) closed form: Σ_{v ∈ feature ∩ M_c} w_c · (x_v − b)."""
    ids = np.unique(fm)
    w = net.w.detach().flatten()
    return torch.stack([torch.stack([(w[c] * (x - baseline) * ((mask == c) & (torch.as_tensor(fm) == m))).sum()
                                     for m in ids]) for c in classes]).double()


@pytest.mark.parametrize("spread", ["even", "broadcast"])
def test_feature_ablation_linear_model_closed_form(spread):
    net, x, fwd, mask, classes = _linear_case()
    fm = cube_feature_mask(tuple(x.shape), 3)
    expected = _additive_values(net, x, mask, classes, fm, 0.3)
    values, d = FeatureAblation(fwd).attribute(x, feature_mask=fm, baselines=0.3, return_input_shape=False,
                                               return_details=True)
    torch.testing.assert_close(values.double(), expected, rtol=1e-4, atol=1e-5)
    assert d.n_features == 27 and d.n_forwards == 28 and d.network_windows < d.full_windows
    maps = FeatureAblation(fwd).attribute(x, feature_mask=fm, baselines=0.3, spread=spread, perturbations_per_eval=5)
    sizes = np.bincount(fm.ravel())
    per_voxel = expected / (torch.as_tensor(sizes, dtype=torch.float64)[None] if spread == "even" else 1.0)
    torch.testing.assert_close(maps.double(), per_voxel[:, torch.as_tensor(fm)], rtol=1e-4, atol=1e-5)


def test_feature_ablation_over_predicted_regions_through_explain():
    net = LinearSeg()
    x = torch.rand(9, 8, 7) * 2 - 0.5
    case = model_grid_case(net, x, (4, 4, 4))
    classes = sorted(case.scores)
    maps, extra = Explainer("feature-ablation", features="prediction").attribute(case, classes)
    mask = torch.as_tensor(case.labels)
    expected = _additive_values(net, x, mask, classes, case.labels, 0.0)  # a region only moves its own class
    assert extra["n_features"] == len(classes)
    per_voxel = expected / torch.as_tensor(np.bincount(case.labels.ravel())[classes], dtype=torch.float64)[None]
    lookup = torch.as_tensor(np.searchsorted(classes, case.labels))
    torch.testing.assert_close(maps.double(), per_voxel[:, lookup], rtol=1e-4, atol=1e-5)
    # a custom label volume (on the image grid, here the same grid) -- as kernelshap-semantic's features
    halves = (np.arange(9)[:, None, None] >= 4).repeat(8, 1).repeat(7, 2).astype(np.int16)
    custom, extra = Explainer("feature-ablation", features=halves).attribute(case, classes)
    assert extra["n_features"] == 2
    torch.testing.assert_close(custom.flatten(1).sum(1).double(), expected.sum(1), rtol=1e-4, atol=1e-5)


def test_shapley_sampling_exact_on_additive_model_and_cached_steps():
    net, x, fwd, mask, classes = _linear_case()
    fm = cube_feature_mask(tuple(x.shape), 2)
    expected = _additive_values(net, x, mask, classes, fm, -0.2)
    for ppe in (1, 3):
        values, d = ShapleyValueSampling(fwd).attribute(x, feature_mask=fm, baselines=-0.2, n_samples=4, seed=1,
                                                        perturbations_per_eval=ppe, return_input_shape=False,
                                                        return_details=True)
        torch.testing.assert_close(values.double(), expected, rtol=1e-4, atol=1e-5)
        assert d.n_forwards == 1 + 4 * 8
        # consecutive steps differ by one feature: each runs only the windows that feature meets
        assert d.network_windows < 0.6 * d.full_windows, d
    maps = ShapleyValueSampling(fwd).attribute(x, classes[2], feature_mask=fm, baselines=-0.2, n_samples=2)
    assert maps.shape == x.shape
    torch.testing.assert_close(maps.sum().double(), expected[2].sum(), rtol=1e-4, atol=1e-5)  # efficiency


def test_shapley_sampling_through_explain_on_a_unet_is_efficient_and_seeded():
    net = _unet()
    x = torch.randn(26, 21, 19)
    case = model_grid_case(net, x, (16, 16, 16))
    case.sw_batch_size = 8
    classes = sorted(case.scores)
    explainer = Explainer("shapley-sampling", n_samples=2, cubes_per_axis=2, baselines=0.0)
    maps, extra = explainer.attribute(case, classes)
    fwd = SlidingWindowTarget(net, case.plan, case.labels, classes)
    f = fwd.scores(torch.stack([x, torch.zeros_like(x)]))
    torch.testing.assert_close(maps.flatten(1).sum(1), f[0] - f[1], rtol=1e-4, atol=1e-3)  # Σφ = f(x) − f(b)
    again, _ = explainer.attribute(case, classes)
    torch.testing.assert_close(again, maps)
    assert extra["n_features"] == 8 and extra["network_windows"] < extra["full_windows"]


def test_registry_parameters_cli_settings_and_widget_fields():
    for name in ("occlusion", "feature-ablation", "shapley-sampling"):
        m = METHODS[name]
        assert all(p.setting for p in m.parameters), name
    occ = METHODS["occlusion"]
    assert occ.build_parameters({})["sliding_window_shapes"] == 16 and occ.build_parameters({})["strides"] is None
    assert occ.build_parameters({"sliding_window_shapes": [8, 8, 4]})["sliding_window_shapes"] == (8, 8, 4)
    assert occ.build_parameters({"strides": [6]})["strides"] == 6
    with pytest.raises(Agg2ExpError, match="1 or 3 positive integers"):
        occ.build_parameters({"sliding_window_shapes": (8, 8)})
    with pytest.raises(Agg2ExpError, match="prediction"):
        Explainer("feature-ablation", features="predicton")
    assert METHODS["shapley-sampling"].defaults["cubes_per_axis"] ** 3 == 64
    # the CLI's generic flags reach the parameters
    import argparse

    from napari_agg2exp.cli.arguments import add_method_args, method_settings

    p = argparse.ArgumentParser()
    add_method_args(p)
    args = p.parse_args(["--occlusion-window", "8", "--occlusion-stride", "4", "4", "2", "--samples", "7",
                         "--cubes-per-axis", "3", "--baseline", "0.5"])
    settings = method_settings(args)
    assert occ.parameters_from_settings(settings) == {"sliding_window_shapes": [8], "strides": [4, 4, 2],
                                                      "baselines": 0.5, "internal_batch_size": 4}
    assert Explainer("occlusion", **occ.parameters_from_settings(settings)).parameters["strides"] == (4, 4, 2)
    sv = METHODS["shapley-sampling"].parameters_from_settings(settings)
    assert sv["n_samples"] == 7 and sv["cubes_per_axis"] == 3 and sv["seed"] == 0


def test_widget_fields_are_the_numeric_parameters():
    jobs = pytest.importorskip("napari_agg2exp.viewer.jobs")
    assert jobs.explain_parameters("occlusion") == {"sliding_window_shapes": 16, "baselines": 0.0}
    assert set(jobs.explain_parameters("feature-ablation")) == {"cubes_per_axis", "baselines"}
    assert set(jobs.explain_parameters("shapley-sampling")) == {"n_samples", "cubes_per_axis", "baselines", "seed"}


def test_cli_explain_occlusion_end_to_end(tmp_path, tiny_model_dir, ct_file, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(ct_file), "--model", str(tiny_model_dir), "--method", "occlusion",
               "--occlusion-window", "8", "--occlusion-stride", "8", "--out", str(out)])
    assert rc == 0
    info = json.loads((out / "attribution_info.json").read_text())
    assert info["method"] == "occlusion" and info["parameters"]["sliding_window_shapes"] == 8
    assert info["n_forwards"] == info["n_features"] + 1 and info["network_windows"] <= info["full_windows"]
    maps = sorted((out / "attributions").glob("*.nii.gz"))
    assert maps and {m.name[: -len(".nii.gz")] for m in maps} == set(info["targets"])
    for m in maps:
        a = np.asarray(nib.load(str(m)).dataobj)
        assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() > 0
    assert (out / "local_importance.csv").exists()
    assert load_volume(out / "prediction.nii.gz").shape == load_volume(ct_file).shape


@pytest.mark.parametrize("method, features", [("feature-ablation", "prediction"), ("kernelshap-semantic", "prediction"),
                                              ("feature-ablation", "cubes")])
def test_cli_features_by_name(tmp_path, tiny_model_dir, ct_file, method, features):
    out = tmp_path / "out"
    extra = ["--samples", "8"] if method == "kernelshap-semantic" else ["--cubes-per-axis", "2"]
    assert main(["explain", str(ct_file), "--model", str(tiny_model_dir), "--method", method, "--features", features,
                 "--out", str(out), *extra]) == 0
    info = __import__("json").loads((out / "attribution_info.json").read_text())
    assert info["parameters"]["features"] == features
