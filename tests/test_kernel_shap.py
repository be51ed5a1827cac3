"""KernelSHAP's sampler and solver (issue 13 item 2): a full-rank design at the paper's budget (exact on
additive games), more accurate than SHAP's KernelExplainer on small non-additive games, calibrated
standard errors and a warning for rank-deficient designs."""

from __future__ import annotations

import contextlib
import json
import math
import warnings

import numpy as np
import pytest
import torch

from napari_agg2exp.attribution import Explainer, KernelShap, cube_feature_mask, exact_shapley
from napari_agg2exp.attribution.kernel_shap import (
    PAIRS_PER_UNKNOWN,
    fit_shapley,
    sample_coalitions,
    shapley_coalitions,
)

from conftest import model_grid_case

try:  # optional: limits numpy's BLAS threads in these small solves
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


@pytest.fixture(autouse=True)
def _one_thread():
    """Thousands of tiny forward passes and solves: one thread avoids OpenMP spinning on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext():
        yield
    torch.set_num_threads(before)


def _estimate(value, M, n, seed=0, **kw):
    """Our KernelSHAP on a game given by its value function (bool coalitions (n, M) -> (n, K))."""
    d = sample_coalitions(M, n, np.random.default_rng(seed))
    full, empty = value(np.ones((1, M), bool))[0], value(np.zeros((1, M), bool))[0]
    return d, fit_shapley(d.coalitions, d.weights, value(d.coalitions), full, empty, d.units, d.sampled_fraction,
                          **kw)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _additive(M, K=3, seed=0):
    phi = np.random.default_rng(seed).normal(size=(M, K))
    return (lambda Z: Z.astype(float) @ phi + 0.7), phi  # v(S) = Σ_{i∈S} φ_i (+ a constant v(∅))


def _harsanyi(M, n_pair, n_triple, seed, K=2):
    """v(S) = Σ a_i [i∈S] + Σ b_ij [i,j∈S] + Σ c_ijk [i,j,k∈S]: Shapley φ_i = a_i + Σ b_ij/2 + Σ c_ijk/3."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(M, K))
    P = np.array([rng.choice(M, 2, replace=False) for _ in range(n_pair)]).reshape(-1, 2)
    T = np.array([rng.choice(M, 3, replace=False) for _ in range(n_triple)]).reshape(-1, 3)
    bp, bt = rng.normal(size=(len(P), K)) * 0.5, rng.normal(size=(len(T), K)) * 0.5
    phi = a.copy()
    np.add.at(phi, P.ravel(), np.repeat(bp / 2, 2, axis=0))
    np.add.at(phi, T.ravel(), np.repeat(bt / 3, 3, axis=0))

    def value(Z):
        Zf = Z.astype(float)
        return Zf @ a + Zf[:, P].prod(2) @ bp + Zf[:, T].prod(2) @ bt

    return value, phi


# ---- (a) exact on additive games once the budget exceeds the number of features

@pytest.mark.parametrize("M,n", [(512, 1000), (512, 513), (512, 1200), (64, 65), (12, 30)])
def test_additive_game_exact_with_more_samples_than_features(M, n):
    value, phi = _additive(M)
    d, fit = _estimate(value, M, n)
    assert len(d.coalitions) == n and fit.rank == d.rank == M - 1
    assert d.n_pairs == (n // 2 if n // 2 >= PAIRS_PER_UNKNOWN * (M - 1) else 0)
    assert _rel(fit.values, phi) < 1e-6
    assert np.all(fit.standard_errors < 1e-6 * np.abs(phi).max())  # no residual: no error


def test_paper_budget_design():
    """512 cubes, 1000 coalitions: distinct, non-trivial coalitions of every size, weights = kernel mass per size."""
    M, n = 512, 1000
    Z, w = shapley_coalitions(M, n, np.random.default_rng(3))
    assert Z.shape == (n, M) and len({z.tobytes() for z in Z}) == n
    size = Z.sum(1)
    assert size.min() >= 1 and size.max() <= M - 1
    assert len(np.unique(size)) > 400  # sizes spread (leverage scores), not only 1 and M − 1
    per_size = np.bincount(size, weights=w, minlength=M)[1:]
    s = np.arange(1, M)
    drawn = np.bincount(size, minlength=M)[1:] > 0
    np.testing.assert_allclose(per_size[drawn], ((M - 1) / (s * (M - s)))[drawn])


def test_paired_draws_are_complements_and_reproducible():
    d = sample_coalitions(20, 300, np.random.default_rng(1))
    assert d.n_pairs == 150
    Z, u = d.coalitions, d.units
    for g in range(5):
        a, b = Z[u == g]
        assert np.array_equal(a, ~b)
    again = sample_coalitions(20, 300, np.random.default_rng(1))
    assert np.array_equal(again.coalitions, d.coalitions) and np.array_equal(again.weights, d.weights)
    assert not np.array_equal(sample_coalitions(20, 300, np.random.default_rng(2)).coalitions, d.coalitions)


class _LinearSeg(torch.nn.Module):
    """z_c(x) = w_c · x + b_c per voxel."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]).view(1, -1, 1, 1, 1))
        self.b = torch.nn.Parameter(torch.tensor([0.1, 0.0, -0.2]).view(1, -1, 1, 1, 1))

    def forward(self, x):
        return x * self.w + self.b


def _linear_case(shape=(18, 16, 12), window=(12, 12, 12)):
    net = _LinearSeg()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    case = model_grid_case(net, x, window)
    classes = sorted(np.unique(case.labels).tolist())
    return net, x, case, classes


def test_linear_model_end_to_end_exact_cube_values():
    """f_c = Σ_{v∈M_c} w_c x(v) + const: the Shapley value of cube k is Σ_{v∈k∩M_c} w_c (x(v) − baseline)."""
    net, x, case, classes = _linear_case()
    assert len(case.plan) > 1 and len(classes) >= 2
    fm, base = cube_feature_mask(x.shape, 8), 0.3
    fwd = Explainer("kernelshap-cubes").forward(case, classes)
    values, d = KernelShap(fwd).attribute(x, feature_mask=fm, baselines=base, return_input_shape=False,
                                          perturbations_per_eval=100, return_details=True)  # 1000 coalitions
    assert values.shape == (len(classes), 512) and d.design_rank == 511 and d.n_coalitions == 1000
    w = net.w.detach().flatten().double().numpy()
    xd, labels = x.double().numpy(), case.labels
    exact = np.stack([np.bincount(fm.ravel(), weights=(w[c] * (xd - base) * (labels == c)).ravel(), minlength=512)
                      for c in classes])
    # the forward runs in float32: scores carry ~1e-7 relative rounding
    assert _rel(values.double().numpy(), exact) < 1e-5
    assert _rel(d.values.T, exact) < 1e-5
    assert np.all(d.standard_errors < 1e-3 * np.abs(exact).max())


# ---- (b) more accurate than SHAP's KernelExplainer on small non-additive games

def _small_game(kind, M, seed, K=2):
    rng = np.random.default_rng(seed)
    a, B = rng.normal(size=(M, K)), np.triu(rng.normal(size=(K, M, M)) * 0.5, 1)
    C = rng.normal(size=(M, M, M, K)) * 0.2

    def value(Z):
        Zf = Z.astype(float)
        lin_quad = Zf @ a + np.einsum("ni,kij,nj->nk", Zf, B, Zf)
        if kind == "quadratic":
            return lin_quad
        if kind == "cubic":
            return lin_quad + np.einsum("ni,nj,nl,ijlk->nk", Zf, Zf, Zf, C) / M
        return 1 / (1 + np.exp(-lin_quad / 2))  # sigmoid of a quadratic

    return value


def test_more_accurate_than_shap_kernel_explainer_on_small_games():
    shap = pytest.importorskip("shap")
    M, n = 12, 200
    ours, theirs = [], []
    for kind in ("quadratic", "cubic", "sigmoid"):
        for seed in range(3):
            value = _small_game(kind, M, seed)
            exact = exact_shapley(value, M)
            ours.append(_rel(_estimate(value, M, n, seed)[1].values, exact))
            # SHAP: the explained point keeps every feature (1), the one background sample removes all (0)
            explainer = shap.KernelExplainer(lambda X, value=value: value(X > 0.5), np.zeros((1, M)))
            np.random.seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sv = explainer.shap_values(np.ones((1, M)), nsamples=n, silent=True, l1_reg=False)
            theirs.append(_rel(np.asarray(sv).reshape(M, -1), exact))
    assert np.mean(ours) < np.mean(theirs), (np.mean(ours), np.mean(theirs))


def test_every_coalition_enumerated_is_exact_for_any_game():
    value = _small_game("sigmoid", 8, 0)
    d, fit = _estimate(value, 8, 254)
    assert len(d.coalitions) == 2**8 - 2
    np.testing.assert_allclose(fit.values, exact_shapley(value, 8), atol=1e-10)
    assert np.all(fit.standard_errors == 0)


# ---- (c) standard errors and the rank warning

@pytest.mark.parametrize("M,n,paired", [(12, 200, True), (64, 120, False), (64, 300, True)])
def test_standard_errors_are_calibrated(M, n, paired):
    """Over 40 seeds, the reported standard errors match the spread of the estimates around the exact values."""
    if M == 12:
        value = _small_game("sigmoid", M, 0)
        exact = exact_shapley(value, M)
    else:
        value, exact = _harsanyi(M, n_pair=2 * M, n_triple=M, seed=0)
    est, se = [], []
    for seed in range(40):
        d, fit = _estimate(value, M, n, seed=100 + seed)
        assert (d.n_pairs > 0) == paired and fit.rank == M - 1
        est.append(fit.values)
        se.append(fit.standard_errors)
    est, se = np.array(est), np.array(se)
    assert np.all(np.isfinite(se)) and np.all(se > 0)
    rmse = np.sqrt(((est - exact) ** 2).mean(0))  # (M, K)
    ratio = np.sqrt((se**2).mean(0)) / rmse
    assert 0.7 < np.median(ratio) < 1.4, np.median(ratio)


def test_rank_deficient_design_warns_and_has_infinite_standard_errors():
    value, _ = _additive(50)
    with pytest.warns(UserWarning, match="rank 20 < 49"):
        d, fit = _estimate(value, 50, 20)
    assert d.rank == fit.rank == 20
    # a feature is identified only by special coalitions, e.g. {i} or all but i; the others have no error bound
    size = d.coalitions.sum(1)
    alone = np.flatnonzero(d.coalitions[size == 1].any(0) | (~d.coalitions[size == 49]).any(0))
    assert np.all(np.isnan(fit.standard_errors[alone]))  # identified, but no degrees of freedom left
    assert np.isinf(fit.standard_errors).all(1).sum() >= 50 - 20
    np.testing.assert_allclose(fit.values.sum(0), value(np.ones((1, 50), bool))[0] - 0.7)  # efficiency still holds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _estimate(value, 50, 60)  # full rank: no warning


def test_runner_extras_rank_warning_and_json():
    """The registry runner records the design and per-target standard errors (JSON-serialisable)."""
    _, _, case, classes = _linear_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, extra = Explainer("kernelshap-cubes", n_samples=600, internal_batch_size=100).attribute(case, classes)
    assert extra["n_features"] == 512 and extra["n_coalitions"] == 600 and extra["design_rank"] == 511
    assert len(extra["standard_error_max"]) == len(extra["standard_error_mean"]) == len(classes)
    assert all(isinstance(v, float) and math.isfinite(v) for v in extra["standard_error_max"])
    json.dumps(extra, allow_nan=False)
    with pytest.warns(UserWarning, match="rank 50 < 511"):
        _, extra = Explainer("kernelshap-cubes", n_samples=50, internal_batch_size=100).attribute(case, classes)
    assert extra["design_rank"] == 50 and extra["standard_error_max"] == [None] * len(classes)
    json.dumps(extra, allow_nan=False)
