"""Explanation-quality metrics and model comparison (issue 5 items 1, 3, 4): closed-form cross-checks."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from napari_agg2exp.errors import Agg2ExpError, Cancelled
from napari_agg2exp.models.inference import SlidingWindow, sliding_window_logits
from napari_agg2exp.evaluation.compare import anova_table, comparison_markdown, dice_table, mean_dice_table
from napari_agg2exp.evaluation.metrics import (
    average_sensitivity,
    curve_step_size,
    deletion_aopc,
    effective_complexity,
    faithfulness_correlation,
    insertion_auc,
    normalise_by_max,
    perturbation_curves,
    random_subsets,
    randomise_network,
    rank_correlation,
    score_drops,
    uniform_noise,
)
from napari_agg2exp.evaluation.evaluate import (
    curve_table,
    evaluate_case,
    look_up_metric,
    make_perturbations,
)
from napari_agg2exp.evaluation.summary import summarise, summary_markdown
from napari_agg2exp.models.loading import build_network

from conftest import LinearSeg, attribution_fn, model_grid_case, tiny_spec

PHANTOM_GRID = dict(shape=(40, 36, 40), spacing=7.0)




def _linear_setup(shape=(12, 10, 9), seed=0):
    net = LinearSeg(b=(0.3, 0.0, -0.9))
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))
    plan = SlidingWindow.plan(shape, (6, 6, 6), 0.5, "gaussian")
    assert len(plan) > 1
    labels = sliding_window_logits(net, x[None], plan).argmax(0)
    classes = sorted(torch.unique(labels).tolist())
    assert len(classes) >= 2
    return net, x, plan, labels, classes


def train_tiny_model(out_dir, *, steps: int = 20, seed: int = 0, phantom_seed: int = 7):
    """A tiny 17-class UNet fitted for a few steps to one small phantom ('trained-ish': predicts many classes).

    Model grid 14 mm (20×18×20 voxels for the 40×36×40 phantoms at 7 mm), one 20³ window (fast).
    """
    from napari_agg2exp.data.labels import THORAX_LABELS
    from napari_agg2exp.models.loading import save_model
    from napari_agg2exp.data.phantom.cases import make_phantom
    from napari_agg2exp.data.preprocessing import preprocess, preprocess_labels

    spec = tiny_spec(class_names=THORAX_LABELS, window=(20, 20, 20), spacing=(14.0, 14.0, 14.0),
                     arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    img, lab, _ = make_phantom(phantom_seed, **PHANTOM_GRID).volumes()
    pre = preprocess(img, spec.preprocessing, spec.window_size)
    x = torch.from_numpy(pre.array)[None, None]
    y = torch.from_numpy(preprocess_labels(lab, pre)).long()[None]
    torch.manual_seed(seed)
    net = build_network(spec)
    opt = torch.optim.Adam(net.parameters(), 5e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    return save_model(net, spec, out_dir)


@pytest.fixture(scope="session")
def tiny_thorax_model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("models") / "tiny_thorax")


@pytest.fixture
def tiny_thorax(tiny_thorax_model_dir):
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.data.phantom.cases import make_phantom

    model = load_model(tiny_thorax_model_dir, device="cpu")
    image, labels, _ = make_phantom(8, **PHANTOM_GRID).volumes()
    return model, image, labels


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- faithfulness


def test_ig_faithfulness_is_one_for_linear_model_and_random_map_is_not():
    net, x, plan, labels, classes = _linear_setup()
    fn = attribution_fn(model_grid_case(net, x, (6, 6, 6), 0.5, "gaussian"), "ig", classes, n_steps=3)
    maps = fn(x)
    subsets = random_subsets(x.shape, 200, 150, seed=1)
    from napari_agg2exp.attribution import SlidingWindowTarget

    drops = score_drops(SlidingWindowTarget(net, plan, labels, classes, sw_batch_size=16), x, subsets, batch_size=16)
    # closed form: the drop is the subset's sum of w_c x over M_c, which is exactly IG's subset sum
    w = net.w.flatten()
    for k, c in enumerate(classes):
        m = (labels == c).flatten().numpy()
        expected = (float(w[c]) * x.flatten().numpy() * m)[subsets].sum(1)
        np.testing.assert_allclose(drops[:, k], expected, rtol=1e-4, atol=1e-4)
    fc = faithfulness_correlation(maps, subsets, drops)
    assert np.all(fc >= 0.99), fc
    rnd = np.random.default_rng(3).normal(size=maps.shape).astype(np.float32)
    fr = faithfulness_correlation(rnd, subsets, drops)
    assert np.all(np.abs(fr) < 0.2), fr


def test_faithfulness_ignores_scale_and_zero_map_is_nan():
    subsets = random_subsets((8, 8, 8), 20, 30, seed=0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 8, 8, 8))
    drops = rng.normal(size=(20, 2))
    np.testing.assert_allclose(faithfulness_correlation(a, subsets, drops),
                               faithfulness_correlation(7.5 * a, subsets, drops), rtol=1e-5)
    a[1] = 0
    assert np.isnan(faithfulness_correlation(a, subsets, drops)[1])
    with pytest.raises(ValueError, match="drops"):
        faithfulness_correlation(a, subsets, drops[:, :1])


# ---------------------------------------------------------------- complexity


@pytest.mark.parametrize("shape", [(7, 6, 5), (16, 15, 7)])
def test_complexity_of_one_hot_map_is_one_over_voxels(shape):
    a = np.zeros((2,) + shape, np.float32)
    a[0, 3, 2, 1] = 4.0
    a[1, 0, 0, 0] = -0.01
    np.testing.assert_allclose(effective_complexity(a), 1 / np.prod(shape))
    assert np.isnan(effective_complexity(np.zeros(shape))[0])


def test_complexity_threshold_is_strict_and_relative_to_max():
    a = np.zeros((1, 2, 2, 2))
    a.flat[:4] = [-2.0, 0.2, 0.21, 1.0]  # |a| / max = 1, 0.1, 0.105, 0.5
    assert effective_complexity(a, 0.1)[0] == pytest.approx(3 / 8)
    np.testing.assert_allclose(normalise_by_max(a).flat[:4], [-1.0, 0.1, 0.105, 0.5], rtol=1e-6)
    with pytest.raises(Agg2ExpError, match="threshold"):
        effective_complexity(a, 1.5)


# ---------------------------------------------------------------- sensitivity


def test_vg_sensitivity_is_zero_for_linear_model_and_ig_is_not():
    net, x, plan, labels, classes = _linear_setup()
    noise = uniform_noise(x.shape, 3, 0.1, seed=2)
    assert noise.shape == (3,) + tuple(x.shape) and np.abs(noise).max() <= 0.1
    case = model_grid_case(net, x, (6, 6, 6), 0.5, "gaussian")
    vg = attribution_fn(case, "vg", classes)
    np.testing.assert_allclose(average_sensitivity(vg(x), vg, x, noise), 0.0, atol=1e-6)
    ig = attribution_fn(case, "ig", classes, n_steps=2)
    s = average_sensitivity(ig(x), ig, x, noise)
    assert np.all(s > 0.01), s
    # IG = w·x on M_c and the noise is explicit: the value is known
    a = ig(x).numpy()
    expected = []
    for eps in noise:
        ap = ig(x + torch.from_numpy(eps)).numpy()
        na = a / np.abs(a).reshape(len(a), -1).max(1)[:, None, None, None]
        nb = ap / np.abs(ap).reshape(len(a), -1).max(1)[:, None, None, None]
        expected.append(np.linalg.norm((na - nb).reshape(len(a), -1), axis=1) / np.linalg.norm(na.reshape(len(a), -1), axis=1))
    np.testing.assert_allclose(s, np.mean(expected, 0), rtol=1e-5)


# ---------------------------------------------------------------- randomisation


def test_randomisation_changes_unet_maps_and_leaves_the_model_untouched():
    torch.manual_seed(4)
    spec = tiny_spec(arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    net = build_network(spec).eval()
    before = _state(net)
    x = torch.from_numpy(np.random.default_rng(0).normal(0.5, 0.3, (18, 17, 16)).astype(np.float32))
    plan = SlidingWindow.plan(x.shape, (16, 16, 16), 0.25, "constant")
    labels = sliding_window_logits(net, x[None], plan).argmax(0)
    classes = sorted(torch.unique(labels).tolist())
    fn = attribution_fn(model_grid_case(net, x, (16, 16, 16)), "vg", classes)
    maps = fn(x)
    rnet = randomise_network(net, seed=0)
    assert rnet is not net and not rnet.training
    assert _same_state(before, _state(net)) and not net.training  # the caller's network is not touched
    # random draws: every convolution; deterministic defaults (batch norm 1/0, PReLU 0.25) equal a fresh init
    for (name, p), q in zip(net.named_parameters(), rnet.parameters()):
        assert (not torch.equal(p, q)) or p.ndim < 2, name
    assert _same_state(_state(rnet), _state(randomise_network(net, seed=0)))  # seeded
    assert not _same_state(_state(rnet), _state(randomise_network(net, seed=1)))
    rho = rank_correlation(maps, fn(x, network=rnet))
    assert np.all(rho < 0.95), rho
    assert np.allclose(rank_correlation(maps, maps), 1.0)
    assert torch.equal(fn(x), maps)  # the original explanation is unchanged


def test_randomise_network_covers_parameters_without_reset(tiny_thorax):
    net = LinearSeg(b=(0.3, 0.0, -0.9))
    before = _state(net)
    r = randomise_network(net, seed=3)
    assert _same_state(before, _state(net))
    assert not torch.equal(r.w, net.w) and not torch.equal(r.b, net.b)
    trained = tiny_thorax[0].network  # trained weights: every parameter gets a new value
    r = randomise_network(trained, seed=0)
    assert all(not torch.equal(p, q) for p, q in zip(trained.parameters(), r.parameters()))


# ---------------------------------------------------------------- deletion / insertion curves


def _linear_curves_by_hand(net, x, labels, c, a, counts, baseline):
    """Deletion and insertion scores of class c for the linear model, from the ranking alone (numpy).

    f_c(x') = Σ_{v∈M_c} (w_c x'_v + b_c), so removing the ranked voxels R_n = order[:n] gives
    f_c(x_n) = f_c(x) − w_c Σ_{v∈R_n∩M_c} (x_v − β) and inserting them f_c(x'_n) = f_c(β) + the same sum.
    """
    w, b = float(net.w.flatten()[c]), float(net.b.flatten()[c])
    xf = x.numpy().ravel().astype(np.float64)
    m = (labels == c).numpy().ravel()
    order = np.argsort(-a.ravel().astype(np.float64), kind="stable")  # most important first, ties by index
    gain = np.concatenate([[0.0], np.cumsum(w * ((xf - baseline) * m)[order])])[counts]
    f_x, f_b = float(np.sum((w * xf + b)[m])), float(np.sum((w * baseline + b) * m))
    return f_x - gain, f_b + gain, f_x, f_b


@pytest.mark.parametrize("baseline", [0.0, 0.3])
def test_deletion_and_insertion_curves_closed_form_on_linear_model(baseline):
    from napari_agg2exp.attribution import SlidingWindowTarget

    net, x, plan, labels, classes = _linear_setup()
    n = x.numel()
    fwd = SlidingWindowTarget(net, plan, labels, classes, sw_batch_size=16)
    maps = np.random.default_rng(5).normal(size=(len(classes),) + tuple(x.shape)).astype(np.float32)
    step = 97
    counts = np.minimum(np.arange(int(np.ceil(n / step)) + 1) * step, n)  # 0, 97, ..., 1067, 1080
    dele = perturbation_curves(fwd, x, maps, "deletion", step=step, baseline=baseline, batch_size=5)
    ins = perturbation_curves(fwd, x, 3.0 * maps, "insertion", step=step, baseline=baseline, batch_size=3)
    np.testing.assert_array_equal(dele.counts, counts)
    np.testing.assert_allclose(ins.fractions, counts / n)
    aopc, auc = deletion_aopc(dele), insertion_auc(ins)
    for k, c in enumerate(classes):
        f_del, f_ins, f_x, f_b = _linear_curves_by_hand(net, x, labels, c, maps[k], counts, baseline)
        np.testing.assert_allclose(dele.scores[k], f_del, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ins.scores[k], f_ins, rtol=1e-4, atol=1e-3)
        assert dele.clean[k] == pytest.approx(f_x, rel=1e-5) and dele.baseline[k] == pytest.approx(f_b, rel=1e-5)
        s_del, s_ins = (f_del - f_b) / (f_x - f_b), (f_ins - f_b) / (f_x - f_b)
        np.testing.assert_allclose(dele.normalised()[k], s_del, atol=1e-4)
        # AOPC (Samek et al. 2017) normalised: mean over k = 1..L of (f(x) − f(x_k)) / (f(x) − f(β))
        assert aopc[k] == pytest.approx(np.mean((f_x - f_del[1:]) / (f_x - f_b)), abs=1e-4)
        # insertion: trapezoid area under the normalised curve over the inserted fraction, / the last fraction
        assert auc[k] == pytest.approx(np.trapezoid(s_ins, counts / n) / (counts[-1] / n), abs=1e-4)
        assert s_del[0] == pytest.approx(1) and s_del[-1] == pytest.approx(0, abs=1e-5) and s_ins[0] == 0
    # linear: inserting what deletion removes gives the mirror curve
    np.testing.assert_allclose(ins.normalised(), 1 - dele.normalised(), atol=1e-4)


def test_ig_ranking_beats_its_reverse_on_linear_model():
    from napari_agg2exp.attribution import SlidingWindowTarget

    net, x, plan, labels, classes = _linear_setup()
    fwd = SlidingWindowTarget(net, plan, labels, classes, sw_batch_size=16)
    ig = attribution_fn(model_grid_case(net, x, (6, 6, 6), 0.5, "gaussian"), "ig", classes, n_steps=3)(x)
    # IG = w_c x 1[M_c]: the most important voxels carry the score, the reversed ranking removes them last
    for kind, value in (("deletion", deletion_aopc), ("insertion", insertion_auc)):
        good = value(perturbation_curves(fwd, x, ig, kind, step=0.05))
        bad = value(perturbation_curves(fwd, x, -ig, kind, step=0.05))
        assert np.all(good > bad + 0.2), (kind, good, bad)


def test_curve_steps_fractions_caps_and_edge_cases():
    from napari_agg2exp.attribution import SlidingWindowTarget

    net, x, plan, labels, classes = _linear_setup()  # 1080 voxels
    fwd = SlidingWindowTarget(net, plan, labels, classes, sw_batch_size=16)
    maps = np.random.default_rng(1).normal(size=(len(classes),) + tuple(x.shape))
    assert curve_step_size(0.05, 1080) == 54 and curve_step_size(100, 1080) == 100
    with pytest.warns(UserWarning, match="too large"):
        assert curve_step_size(224 * 224, 1080) == 108  # at least 10 steps on a small volume
    for bad in (0, -3, 1.5, 2.5):
        with pytest.raises(Agg2ExpError, match="curve step"):
            curve_step_size(bad, 1080)
    c = perturbation_curves(fwd, x, maps, "insertion", step=0.25)
    np.testing.assert_array_equal(c.counts, [0, 270, 540, 810, 1080])
    capped = perturbation_curves(fwd, x, maps, "insertion", step=0.25, max_steps=2)
    np.testing.assert_array_equal(capped.counts, [0, 270, 540])
    np.testing.assert_allclose(capped.scores, c.scores[:, :3], rtol=1e-5)
    s = capped.normalised()
    np.testing.assert_allclose(insertion_auc(capped), (s[:, 0] / 2 + s[:, 1] + s[:, 2] / 2) * 0.25 / 0.5, rtol=1e-6)
    maps[1] = 0
    d = perturbation_curves(fwd, x, maps, "deletion", step=0.25)
    assert np.isnan(deletion_aopc(d)[1]) and np.isfinite(deletion_aopc(d)[0])
    with pytest.raises(ValueError, match="deletion curves"):
        deletion_aopc(c)
    with pytest.raises(ValueError, match="insertion curves"):
        insertion_auc(d)
    with pytest.raises(Agg2ExpError, match="curve kind"):
        perturbation_curves(fwd, x, maps, "removal")
    with pytest.raises(Cancelled):
        perturbation_curves(fwd, x, maps, "deletion", step=0.25, cancel=lambda: True)


def test_evaluate_case_deletion_insertion_keeps_the_curves(tiny_thorax):
    model, image, _ = tiny_thorax
    with pytest.warns(UserWarning, match="curve step 50176 is too large"):
        df = evaluate_case(model, image, "vg,ig", "aopc,insertion,complexity", "heart,vertebrae",
                           method_params={"ig": {"n_steps": 2}})
    assert set(df["metric"]) == {"deletion", "insertion", "complexity"} and len(df) == 2 * 2 * 3
    n_vox = int(np.prod(df.attrs["model_grid"]))
    assert df.attrs["curve_step"] == n_vox // 10
    cur = curve_table(df)
    assert list(cur.columns) == ["case", "method", "target", "metric", "step", "fraction", "score"]
    assert len(cur) == 2 * 2 * 2 * 11 and cur["score"].notna().all()
    for (method, target, metric), g in cur.groupby(["method", "target", "metric"]):
        assert list(g["step"]) == list(range(11)) and g["fraction"].iloc[-1] == 1.0
        assert g["score"].iloc[0] == pytest.approx(1.0 if metric == "deletion" else 0.0)
        assert g["score"].iloc[-1] == pytest.approx(0.0 if metric == "deletion" else 1.0, abs=1e-5)
        s, f = g["score"].to_numpy(), g["fraction"].to_numpy()
        expected = np.mean(1 - s[1:]) if metric == "deletion" else np.trapezoid(s, f)
        value = df[(df["method"] == method) & (df["target"] == target) & (df["metric"] == metric)]["value"]
        assert float(value.iloc[0]) == pytest.approx(expected, abs=1e-9)
    assert curve_table(evaluate_case(model, image, "vg", "complexity", "heart")).empty
    md = summary_markdown(df)
    assert "Deletion AOPC ↑" in md and "Insertion AUC ↑" in md
    assert look_up_metric("deletion_aopc") == "deletion" and look_up_metric("Insertion") == "insertion"
    with pytest.raises(Agg2ExpError, match="--curve-step"):
        evaluate_case(model, image, "vg", "deletion", "heart", curve_step=0)
    with pytest.raises(Agg2ExpError, match="--curve-steps"):
        evaluate_case(model, image, "vg", "deletion", "heart", curve_steps=0)


# ---------------------------------------------------------------- perturbations


def test_perturbations_depend_only_on_seed_and_shape():
    a = make_perturbations((20, 18, 16), n_subsets=5, subset_size=100, n_noise=2, seed=4)
    b = make_perturbations((20, 18, 16), n_subsets=5, subset_size=100, n_noise=2, seed=4)
    np.testing.assert_array_equal(a.subsets, b.subsets)
    np.testing.assert_array_equal(a.noise, b.noise)
    c = make_perturbations((20, 18, 16), n_subsets=5, subset_size=100, n_noise=2, seed=5)
    assert not np.array_equal(a.subsets, c.subsets) and not np.array_equal(a.noise, c.noise)
    assert a.subsets.shape == (5, 100) and a.subset_size == 100
    assert all(len(np.unique(s)) == 100 for s in a.subsets)  # no voxel twice in a subset
    assert a.noise.dtype == np.float32 and np.abs(a.noise).max() <= 0.1


def test_subset_size_clipped_for_small_volumes_with_warning():
    with pytest.warns(UserWarning, match="too large"):
        s = random_subsets((10, 10, 10), 4)
    assert s.shape == (4, 250)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert random_subsets((10, 10, 10), 4, 100).shape == (4, 100)
    with pytest.raises(Agg2ExpError, match="at least 2 subsets"):
        random_subsets((10, 10, 10), 1, 100)


def test_every_method_sees_the_same_subsets_noise_and_random_weights(tiny_thorax, monkeypatch):
    import napari_agg2exp.evaluation.evaluate as ev

    model, image, _ = tiny_thorax
    seen: dict[str, list] = {"subsets": [], "noise": [], "networks": [], "inputs": []}
    real_fc, real_sens = ev.faithfulness_correlation, ev.average_sensitivity
    from napari_agg2exp.attribution import Explainer

    real_attribute = Explainer.attribute

    def fc(maps, subsets, drops):
        seen["subsets"].append((subsets, drops))
        return real_fc(maps, subsets, drops)

    def sens(maps, fn, x, noise, **kw):
        seen["noise"].append(noise)
        seen["inputs"].append(x)
        return real_sens(maps, fn, x, noise, **kw)

    def attribute(self, prepared, ids, **kw):
        if kw.get("network") is not None:
            seen["networks"].append(kw["network"])
        return real_attribute(self, prepared, ids, **kw)

    monkeypatch.setattr(ev, "faithfulness_correlation", fc)
    monkeypatch.setattr(ev, "average_sensitivity", sens)
    monkeypatch.setattr(Explainer, "attribute", attribute)
    df = evaluate_case(model, image, ["vg", "sg"], "faithfulness,sensitivity,randomisation", ["heart"],
                       n_subsets=4, subset_size=200, n_noise=1, method_params={"sg": {"nt_samples": 2}})
    assert len(df) == 2 * 3
    (s1, d1), (s2, d2) = seen["subsets"]
    assert s1 is s2 and d1 is d2  # drops computed once, shared
    assert seen["noise"][0] is seen["noise"][1] and seen["inputs"][0] is seen["inputs"][1]
    assert seen["networks"][0] is seen["networks"][1] and seen["networks"][0] is not model.network
    ref = make_perturbations(df.attrs["model_grid"], n_subsets=4, subset_size=200, n_noise=1, seed=0)
    np.testing.assert_array_equal(s1, ref.subsets)
    np.testing.assert_array_equal(seen["noise"][0], ref.noise)


# ---------------------------------------------------------------- attribution function and evaluate_case


@pytest.mark.parametrize("method, params", [
    ("vg", {}), ("ig", {"n_steps": 3}), ("sg", {"nt_samples": 2}),
    ("kernelshap-cubes", {"n_samples": 12}), ("kernelshap-semantic", {"n_samples": 12}),
])
def test_metrics_recompute_exactly_what_explain_gives(tiny_thorax, method, params):
    """The metrics' re-attribution (a model-grid tensor case by hand) equals explain on the clean input."""
    from napari_agg2exp.attribution import explain

    model, image, _ = tiny_thorax
    from napari_agg2exp.attribution import method_defaults

    seeded = {k: v for k, v in {"internal_batch_size": 4, "seed": 3}.items() if k in method_defaults(method)}
    e = explain(model, image, method, ["heart", "ribs"], **seeded, **params)
    x = torch.from_numpy(e.pre.array)
    fn = attribution_fn(model_grid_case(model.network, x, model.window_size), method, e.target_ids, **seeded, **params)
    np.testing.assert_allclose(fn(x).numpy(), e.maps_model, rtol=1e-4, atol=1e-6 * np.abs(e.maps_model).max())


def test_evaluate_case_table_ranges_and_model_restored(tiny_thorax):
    model, image, _ = tiny_thorax
    net = model.network
    before = _state(net)
    flags = [p.requires_grad for p in net.parameters()]
    calls = []
    df = evaluate_case(model, image, "vg,kernelshap-semantic", "faithfulness,sensitivity,complexity,randomization",
                       "heart,vertebrae", name="c1", n_subsets=6, subset_size=300, n_noise=1,
                       method_params={"kernelshap-semantic": {"n_samples": 16}},
                       progress=lambda d, t, m: calls.append((d, t)))
    assert list(df.columns) == ["case", "method", "target", "metric", "value"]
    assert len(df) == 2 * 2 * 4 and set(df["case"]) == {"c1"}
    assert set(df["metric"]) == {"faithfulness", "sensitivity", "complexity", "randomisation"}
    v = df.set_index(["method", "target", "metric"])["value"]
    assert v.notna().all()
    assert ((v.xs("faithfulness", level=2).abs() <= 1) & (v.xs("randomisation", level=2).abs() <= 1 + 1e-9)).all()
    assert ((v.xs("complexity", level=2) > 0) & (v.xs("complexity", level=2) <= 1)).all()
    assert (v.xs("sensitivity", level=2) >= 0).all()
    assert df.attrs["subset_size"] == 300 and df.attrs["targets"] == ["heart", "vertebrae"]
    assert _same_state(before, _state(net)) and [p.requires_grad for p in net.parameters()] == flags
    assert not net.training
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]
    s = summarise(df)
    assert list(s.columns) == ["method", "metric", "mean", "sd", "n"] and len(s) == 8 and (s["n"] == 2).all()
    md = summary_markdown(df, {"subsets": 6})
    assert "| Vanilla gradient |" in md and "±" in md and "- subsets: 6" in md


def test_evaluate_case_absent_classes_errors_and_cancel(tiny_thorax):
    model, image, _ = tiny_thorax
    from napari_agg2exp.models.prepared import segment

    present = set(np.unique(segment(model, image).labels).tolist())
    absent = [n for i, n in enumerate(model.class_names) if i not in present]
    kw = dict(n_subsets=3, subset_size=100, n_noise=1)
    if absent:
        with pytest.warns(UserWarning, match="absent"):
            df = evaluate_case(model, image, "vg", "complexity", ["heart", absent[0]], **kw)
        assert set(df["target"]) == {"heart"} and df.attrs["skipped"] == [absent[0]]
        with pytest.raises(Agg2ExpError, match="none of the requested classes"), pytest.warns(UserWarning):
            evaluate_case(model, image, "vg", "complexity", [absent[0]], **kw)
    with pytest.raises(Agg2ExpError, match="did you mean 'faithfulness'"):
        evaluate_case(model, image, "vg", "faithfullness", **kw)
    with pytest.raises(Agg2ExpError, match="unknown method"):
        evaluate_case(model, image, "gradcam", "complexity", **kw)
    with pytest.raises(Agg2ExpError, match="unknown class"):
        evaluate_case(model, image, "vg", "complexity", ["hart"], **kw)
    with pytest.raises(Agg2ExpError, match="unknown parameter"):
        evaluate_case(model, image, "ig", "complexity", method_params={"ig": {"steps": 3}}, **kw)
    with pytest.raises(Cancelled):
        evaluate_case(model, image, "vg", "complexity", ["heart"], cancel=lambda: True, **kw)
    assert look_up_metric("Randomization") == "randomisation"


# ---------------------------------------------------------------- model comparison


def _dice_frame():
    rows = []
    rng = np.random.default_rng(0)
    for m, shift in (("A", 0.0), ("B", 0.3)):
        for i in range(6):
            rows.append({"case": f"c{i}", "model": m, "class": "heart", "dice": 0.5 + shift + 0.05 * rng.normal()})
            rows.append({"case": f"c{i}", "model": m, "class": "aorta", "dice": 0.7 + 0.05 * rng.normal()})
    return pd.DataFrame(rows)


def test_anova_matches_scipy_and_marks_significance():
    from scipy.stats import f_oneway

    d = _dice_frame()
    a = anova_table(d).set_index("class")
    assert list(a.index) == ["heart", "aorta", "overall"]
    for cls in ("heart", "aorta"):
        ref = f_oneway(*[g["dice"].to_numpy() for _, g in d[d["class"] == cls].groupby("model")])
        assert a.loc[cls, "p"] == pytest.approx(ref.pvalue) and a.loc[cls, "f"] == pytest.approx(ref.statistic)
    assert a.loc["heart", "significant"] and a.loc["heart", "p"] < 1e-4
    t = mean_dice_table(d)
    assert list(t.columns) == ["A", "B"] and list(t.index) == ["heart", "aorta", "overall"]
    assert t.loc["overall", "A"] == pytest.approx(d[d["model"] == "A"]["dice"].mean())
    md = comparison_markdown(d)
    heart = next(line for line in md.splitlines() if line.startswith("| heart"))
    assert heart.rstrip(" |").endswith("*") and "**" in heart
    one = anova_table(d[d["model"] == "A"])
    assert one["p"].isna().all() and not one["significant"].any()


def test_dice_table_maps_data_label_names_to_model_channels(tiny_thorax, tmp_path):
    from napari_agg2exp.data.dice import dice_iou
    from napari_agg2exp.models.prepared import segment
    from napari_agg2exp.data.volume import save_volume

    model, image, labels = tiny_thorax
    case = tmp_path / "case_0000"
    save_volume(image, case / "image.nii.gz")
    # the data numbers its labels differently: swap heart (8) and ribs (11)
    names = list(model.class_names)
    names[8], names[11] = names[11], names[8]
    lab = labels.array.copy()
    lab[labels.array == 8], lab[labels.array == 11] = 11, 8
    save_volume(labels.like(lab), case / "labels.nii.gz")
    d = dice_table({"m": model}, [case], names)
    pred = segment(model, image).prediction.array
    ref, _ = dice_iou(pred, labels.array, model.num_classes)
    got = d.set_index("class")["dice"]
    assert got["heart"] == pytest.approx(ref[8]) and got["ribs"] == pytest.approx(ref[11], nan_ok=True)
    assert "background" not in set(d["class"]) and len(d) == 16
