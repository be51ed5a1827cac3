"""Correctness of the attribution engine (issue 3 item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_agg2exp.attribution import (
    IntegratedGradients,
    KernelShap,
    NoiseTunnel,
    Saliency,
    SlidingWindowTarget,
    SmoothGrad,
    cube_feature_mask,
    exact_shapley,
    explain,
    shapley_coalitions,
    solve_shapley,
)
from napari_agg2exp.models.inference import SlidingWindow, sliding_window_logits
from napari_agg2exp.models.loading import SegmentationModel, build_network
from napari_agg2exp.data.volume import Volume

from conftest import LinearSeg, tiny_spec




def _stitched_autograd(net, x, plan, mask, c):
    """Reference: autograd through the whole stitched volume."""
    xg = x.clone().requires_grad_(True)
    out = torch.zeros((3,) + plan.shape)
    for sl in plan.slices:
        out[(slice(None),) + sl] += net(xg[(slice(None),) + sl][None])[0] * plan.weight
    z = out / plan.count
    f = (z[c] * (mask == c)).sum()
    (g,) = torch.autograd.grad(f, xg)
    return g[0], float(f.detach())


@pytest.mark.parametrize("blend,overlap", [("constant", 0.25), ("gaussian", 0.5), ("constant", 0.6)])
def test_window_vjp_equals_autograd_through_stitched_volume(blend, overlap):
    torch.manual_seed(0)
    net = build_network(tiny_spec()).eval()
    shape = (26, 21, 19)
    x = torch.randn((1,) + shape)
    plan = SlidingWindow.plan(shape, (16, 16, 16), overlap, blend)
    assert len(plan) > 1
    with torch.no_grad():
        mask = sliding_window_logits(net, x, plan).argmax(0)
    classes = sorted(torch.unique(mask).tolist())
    fwd = SlidingWindowTarget(net, plan, mask, classes)
    out = torch.zeros((len(classes),) + shape)
    scores = fwd.accumulate_gradients(x, out)
    for k, c in enumerate(classes):
        ref, f = _stitched_autograd(net, x, plan, mask, c)
        torch.testing.assert_close(out[k], ref, atol=1e-6, rtol=1e-4)
        assert scores[0, k].item() == pytest.approx(f, rel=1e-5)
    # batched class VJPs (is_grads_batched) give the same maps
    fwd_b = SlidingWindowTarget(net, plan, mask, classes, batch_classes=True)
    out_b = torch.zeros_like(out)
    fwd_b.accumulate_gradients(x, out_b)
    torch.testing.assert_close(out_b, out, atol=1e-6, rtol=1e-4)


def test_linear_model_vg_and_ig_closed_form():
    net = LinearSeg()
    shape = (7, 6, 5)
    x = torch.rand((1,) + shape)
    plan = SlidingWindow.plan(shape, (4, 4, 4), 0.5, "gaussian")
    with torch.no_grad():
        mask = sliding_window_logits(net, x, plan).argmax(0)
    classes = sorted(torch.unique(mask).tolist())
    fwd = SlidingWindowTarget(net, plan, mask, classes)
    vg = Saliency(fwd).attribute(x[0])
    ig, delta = IntegratedGradients(fwd).attribute(x[0], baselines=0.0, n_steps=5, return_convergence_delta=True)
    for k, c in enumerate(classes):
        w = net.w.flatten()[c].item()
        expected = w * (mask == c).float()  # stitching weights b/count sum to 1 per voxel
        torch.testing.assert_close(vg[k], expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ig[k], expected * x[0], atol=1e-6, rtol=1e-5)
        # one class id: a map shaped like the input, and a scalar delta
        one, d = IntegratedGradients(fwd).attribute(x[0], c, n_steps=5, return_convergence_delta=True)
        assert one.shape == x[0].shape and d.ndim == 0
        torch.testing.assert_close(one, ig[k])
        assert Saliency(fwd).attribute(x, target=c).shape == x.shape  # (1, X, Y, Z) in, (1, X, Y, Z) out
    assert float(delta.abs().max()) < 1e-5 * float(ig.abs().sum())


def _tiny_unet_model(spacing=None, window=(16, 16, 16), n=3):
    torch.manual_seed(3)
    # batch norm (affine in eval) keeps f smooth along the IG path; instance norm makes f(αx) scale-invariant
    # for α > 0 with a jump at α = 0, where no quadrature can be complete
    spec = tiny_spec(class_names=["background"] + [f"c{i}" for i in range(1, n)], window=window, spacing=spacing,
                     arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    net = build_network(spec).eval()
    return SegmentationModel(net, spec.class_names, spec.preprocessing, spec.window_size, torch.device("cpu"), "test", spec)


def _ct(shape=(22, 20, 18), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.normal(0, 300, shape).astype(np.float32)
    arr[4:12, 5:14, 3:10] += 700
    return Volume(arr, np.diag([1.0, 1.0, 1.0, 1.0]), "ct")


def test_ig_completeness_tiny_unet():
    model = _tiny_unet_model()
    e = explain(model, _ct(), "ig", n_steps=64)
    assert e.completeness and set(e.completeness) == set(e.targets)
    assert max(e.completeness.values()) < 0.02, e.completeness


def test_classes_differ_background_included_and_absent_class_skipped():
    model = _tiny_unet_model(n=4)
    e = explain(model, _ct(), "vg", targets="all")
    assert "background" in e.targets and len(e.targets) >= 2
    for i in range(len(e.targets)):
        assert np.abs(e.maps_model[i]).sum() > 0
        for j in range(i):
            assert not np.allclose(e.maps_model[i], e.maps_model[j])
    absent = [n for n in model.class_names if n not in e.targets]
    if absent:
        e2 = explain(model, _ct(), "vg", targets=[e.targets[0], absent[0]])
        assert e2.skipped == [absent[0]] and e2.targets == [e.targets[0]]


def test_explain_maps_on_input_grid():
    model = _tiny_unet_model(spacing=(1.5, 1.5, 1.5))
    vol = _ct()
    vol.affine = np.diag([-0.9, 1.1, 2.0, 1.0])
    e = explain(model, vol, "vg")
    m = e.map_on_input(e.targets[0])
    assert m.shape == vol.shape and m.dtype == np.float32
    assert e.prediction.shape == vol.shape


def test_shapley_solver_exact_when_enumerated():
    rng = np.random.default_rng(0)
    M, K = 5, 3
    table = rng.normal(size=(2**M, K))

    def value(Z):
        idx = (Z.astype(int) * (2 ** np.arange(M)[::-1])).sum(1)
        return table[idx]

    Z, w = shapley_coalitions(M, 1000, rng)
    assert len(Z) == 2**M - 2
    phi = solve_shapley(Z, w, value(Z), value(np.ones((1, M), bool))[0], value(np.zeros((1, M), bool))[0])
    np.testing.assert_allclose(phi, exact_shapley(value, M), atol=1e-8)


def test_kernelshap_semantic_close_to_exact_shapley():
    """≤ 8 regions, default 200 samples: within 2% relative L2 of the exact values."""
    model = _tiny_unet_model(n=3)
    vol = _ct(shape=(16, 16, 16))
    regions = np.zeros((16, 16, 16), np.int64)
    regions[:4, :8] = 1
    regions[8:, :8] = 2
    regions[:8, 8:] = 3
    regions[8:, 8:, :8] = 4
    regions[8:, 8:, 8:] = 5
    regions[4:12, 4:12, 4:12] = 6
    regions[:, :, 14:] = 7  # 8 regions: 0..7
    e = explain(model, vol, "kernelshap-semantic", feature_mask=regions, n_samples=200)
    # exact Shapley on the same target
    from napari_agg2exp.attribution.target import SlidingWindowTarget as T

    x = torch.from_numpy(e.pre.array)
    plan = SlidingWindow.plan(x.shape, model.window_size, 0.25, "constant")
    with torch.no_grad():
        labels = sliding_window_logits(model.network, x[None], plan).argmax(0)
    fwd = T(model.network, plan, labels, e.target_ids)
    fm = torch.from_numpy(regions)

    def value(Z):
        batch = torch.stack([torch.where(torch.from_numpy(z)[fm], x, torch.tensor(0.0)) for z in Z])
        return fwd.scores(batch).numpy()

    exact = exact_shapley(value, 8)  # (8, K)
    ks = KernelShap(fwd).attribute(x, feature_mask=regions, n_samples=200, return_input_shape=False).T.numpy()
    rel = np.linalg.norm(ks - exact) / np.linalg.norm(exact)
    assert rel < 0.02, rel
    # per-voxel maps: each region's sum equals its value (even spread)
    for k in range(len(e.targets)):
        sums = np.bincount(regions.ravel(), weights=e.maps_model[k].ravel())
        np.testing.assert_allclose(sums, ks[:, k], rtol=1e-3, atol=1e-4 * np.abs(ks).max())


def test_cube_mask_512_contiguous_features():
    for shape in [(96, 96, 96), (20, 17, 9), (130, 64, 8)]:
        m = cube_feature_mask(shape)
        ids = np.unique(m)
        assert len(ids) == 512 and ids.min() == 0 and ids.max() == 511
        for f in [0, 77, 511]:
            where = np.argwhere(m == f)
            lo, hi = where.min(0), where.max(0)
            assert len(where) == np.prod(hi - lo + 1)  # a full box: contiguous


def test_kernelshap_cubes_runs_and_efficiency_holds():
    model = _tiny_unet_model()
    e = explain(model, _ct(shape=(16, 16, 16)), "kernelshap-cubes", n_samples=60, internal_batch_size=16)
    assert e.extra["n_features"] == 512
    assert e.maps_model.shape[1:] == (16, 16, 16)


def test_sg_reproducible_for_seed():
    model = _tiny_unet_model()
    a = explain(model, _ct(), "sg", nt_samples=3, seed=5).maps_model
    b = explain(model, _ct(), "sg", nt_samples=3, seed=5).maps_model
    c = explain(model, _ct(), "sg", nt_samples=3, seed=6).maps_model
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_single_window_agrees_with_captum():
    """On one 96³ window: VG and IG equal captum's Saliency / IntegratedGradients; SG = mean of captum Saliency."""
    from captum.attr import IntegratedGradients as CIG
    from captum.attr import Saliency as CSal

    model = _tiny_unet_model(window=(96, 96, 96))
    net = model.network
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((96, 96, 96), dtype=np.float32))
    plan = SlidingWindow.plan(x.shape, (96, 96, 96), 0.25, "constant")
    assert len(plan) == 1
    with torch.no_grad():
        mask = net(x[None, None])[0].argmax(0)
    classes = sorted(torch.unique(mask).tolist())[:2]
    fwd = SlidingWindowTarget(net, plan, mask, classes)
    vg = Saliency(fwd).attribute(x)
    ig = IntegratedGradients(fwd).attribute(x, baselines=0.0, n_steps=8, internal_batch_size=4)
    sg = NoiseTunnel(Saliency(fwd)).attribute(x, nt_samples=3, stdevs=0.05, seed=7, nt_samples_batch_size=2)
    assert torch.equal(sg, SmoothGrad(fwd).attribute(x, nt_samples=3, stdevs=0.05, seed=7, nt_samples_batch_size=2))
    # NoiseTunnel wraps IG too: the mean of IG over the same noisy inputs
    sig = NoiseTunnel(IntegratedGradients(fwd)).attribute(x, nt_samples=2, stdevs=0.05, seed=7, n_steps=4)
    ref_sig = torch.stack([IntegratedGradients(fwd).attribute(x + eps, n_steps=4)
                           for eps in NoiseTunnel.noise(x.shape, 2, 0.05, 7)]).mean(0)
    torch.testing.assert_close(sig, ref_sig, atol=1e-6, rtol=1e-5)
    for k, c in enumerate(classes):
        m = (mask == c).float()

        def f(inp, m=m, c=c):
            return (net(inp)[:, c] * m).flatten(1).sum(1)

        ref_vg = CSal(f).attribute(x[None, None], abs=False)[0, 0]
        ref_ig = CIG(f).attribute(x[None, None], baselines=0.0, n_steps=8, method="riemann_middle")[0, 0]
        ref_sg = torch.stack([CSal(f).attribute((x + eps)[None, None], abs=False)[0, 0]
                              for eps in NoiseTunnel.noise(x.shape, 3, 0.05, 7)]).mean(0)
        for ours, ref in ((vg[k], ref_vg), (ig[k], ref_ig), (sg[k], ref_sg)):
            rel = float((ours - ref).norm() / ref.norm())
            assert rel < 1e-4, rel


def test_explain_leaves_model_as_found():
    model = _tiny_unet_model()
    model.network.train()
    flags = [p.requires_grad for p in model.network.parameters()]
    explain(model, _ct(), "vg")
    assert model.network.training
    assert [p.requires_grad for p in model.network.parameters()] == flags
