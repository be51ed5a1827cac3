"""Cross-check of the explanation-quality metrics against Quantus, on a model and explainers not ours.

Reference side -- none of the project's code: a plain torch network (Conv3d–Tanh–Conv3d) stitched over
8 windows by MONAI's ``sliding_window_inference``, reduced to the per-class masked score
``f_c(x) = Σ_{v∈M_c} z_c(x)_v`` by a plain torch function (``M_c`` = argmax of the clean logits), explained
by captum (``Saliency``, ``IntegratedGradients``) and scored by Quantus. Quantus handles batched 1D/2D
classifiers, so the volume is flattened to ``(1, 1, N)`` and the model is ``(B, 1, N) -> (B, K)``; ``y = k``
picks the class.

Our side: the same network through our engine -- a PreparedCase (``model_grid_case``), ``Explainer``
maps, :func:`score_drops` and our metric functions. A wrong window plan, blend, mask or gradient
stitching in our engine changes our maps or drops and fails the comparison, not only a wrong formula.
Quantus draws its subsets and noise from the global NumPy RNG; re-seeding it and drawing the same way
gives us the same perturbations, so the values must agree to float precision. Skipped without Quantus.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")
captum_attr = pytest.importorskip("captum.attr")
monai_inferers = pytest.importorskip("monai.inferers")

from napari_agg2exp.attribution import Explainer
from napari_agg2exp.evaluation.metrics import (
    average_sensitivity,
    effective_complexity,
    faithfulness_correlation,
    score_drops,
)

from conftest import attribution_fn, model_grid_case

SHAPE = (20, 17, 14)
WINDOW = (12, 12, 12)
OVERLAP = 0.25
IG_STEPS = 4


def plain_logits(net, x):
    """(B, 1, X, Y, Z) -> (B, C, X, Y, Z): MONAI's sliding window (constant blend), differentiable."""
    return monai_inferers.sliding_window_inference(x, WINDOW, 4, net, overlap=OVERLAP, mode="constant")


class PlainScores(torch.nn.Module):
    """``f_c(x) = Σ_{v∈M_c} z_c(x)_v`` for the classes ``classes``, masks fixed: (B, 1, X, Y, Z) -> (B, K)."""

    def __init__(self, net, labels, classes):
        super().__init__()
        self.net, self.classes = net, list(classes)
        self.register_buffer("masks", torch.stack([(labels == c).float() for c in self.classes]))

    def forward(self, x):
        z = plain_logits(self.net, x)[:, self.classes]
        return (z * self.masks[None]).flatten(2).sum(-1)


class FlatScores(torch.nn.Module):
    """Quantus' view of the plain model: (B, 1, N) flattened volumes -> (B, K)."""

    def __init__(self, scores: PlainScores):
        super().__init__()
        self.scores = scores

    def forward(self, x):
        return self.scores(torch.as_tensor(x).float().reshape((x.shape[0], 1) + SHAPE))


def captum_maps(scores: PlainScores, method: str, x5, k: int) -> np.ndarray:
    """captum's attribution of class row ``k`` on (B, 1, X, Y, Z) inputs -> (B, 1, X, Y, Z) numpy."""
    x5 = torch.as_tensor(x5).float().clone().requires_grad_(True)
    if method == "vg":
        a = captum_attr.Saliency(scores).attribute(x5, target=k, abs=False)
    else:
        a = captum_attr.IntegratedGradients(scores).attribute(x5, baselines=0.0, target=k, n_steps=IG_STEPS,
                                                               method="riemann_middle", internal_batch_size=4)
    return a.detach().numpy()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv3d(6, 3, 3, padding=1))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(np.random.default_rng(0).normal(0.5, 0.3, SHAPE).astype(np.float32))
    with torch.no_grad():
        labels = plain_logits(net, x[None, None])[0].argmax(0)
    classes = sorted(torch.unique(labels).tolist())
    assert classes == [0, 1, 2]
    case = model_grid_case(net, x, WINDOW, OVERLAP, "constant")
    assert len(case.plan) > 1  # several windows: our stitching is under test too
    return x, labels, classes, case, PlainScores(net, labels, classes).eval()


def _flat(a):
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return a.reshape(1, 1, -1).astype(np.float32)


def test_engine_matches_the_plain_reference(setup):
    """Masks, scores and maps of our engine equal MONAI + a plain torch function + captum."""
    x, labels, classes, case, scores = setup
    assert torch.equal(torch.as_tensor(case.labels).long(), labels.long())
    fwd = Explainer("vg").forward(case, classes)
    xp = torch.stack([x, x + 0.1 * torch.randn(SHAPE), torch.zeros(SHAPE)])
    with torch.no_grad():
        torch.testing.assert_close(fwd.scores(xp), scores(xp[:, None]), rtol=1e-5, atol=1e-3)
    for method, params in (("vg", {}), ("ig", {"n_steps": IG_STEPS})):
        ours = attribution_fn(case, method, classes, **params)(x).numpy()
        for k in range(len(classes)):
            ref = captum_maps(scores, method, x[None, None], k)[0, 0]
            np.testing.assert_allclose(ours[k], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_effective_complexity_equals_quantus(setup):
    x, _, classes, case, scores = setup
    maps = attribution_fn(case, "ig", classes, n_steps=IG_STEPS)(x)
    ours = effective_complexity(maps, 0.1)
    metric = quantus.EffectiveComplexity(eps=0.1, abs=True, normalise=True, disable_warnings=True)
    n = int(np.prod(SHAPE))
    for k in range(len(classes)):
        a = captum_maps(scores, "ig", x[None, None], k)
        q = metric(model=None, x_batch=_flat(x), y_batch=np.array([k]), a_batch=_flat(a))
        assert ours[k] * n == pytest.approx(q[0], abs=1e-9)


def test_faithfulness_correlation_equals_quantus_given_the_same_subsets(setup):
    x, _, classes, case, scores = setup
    maps = attribution_fn(case, "vg", classes)(x)
    fwd = Explainer("vg").forward(case, classes)
    n_runs, size, n = 30, 400, int(np.prod(SHAPE))
    metric = quantus.FaithfulnessCorrelation(nr_runs=n_runs, subset_size=size, perturb_baseline=0.0, abs=False,
                                             normalise=True, return_aggregate=False, disable_warnings=True)
    for k in range(len(classes)):
        a = captum_maps(scores, "vg", x[None, None], k)
        np.random.seed(100 + k)
        q = metric(model=FlatScores(scores).eval(), x_batch=_flat(x), y_batch=np.array([k]), a_batch=_flat(a),
                   device="cpu")
        np.random.seed(100 + k)
        subsets = np.stack([np.random.choice(n, size, replace=False) for _ in range(n_runs)])
        drops = score_drops(fwd, x, subsets, batch_size=8)
        ours = faithfulness_correlation(maps, subsets, drops)[k]
        assert abs(ours) > 0.05  # a real correlation, not a degenerate 0 = 0
        assert ours == pytest.approx(q[0], abs=1e-5)


@pytest.mark.parametrize("method", ["vg", "ig"])
def test_average_sensitivity_equals_quantus_given_the_same_noise(setup, method):
    x, _, classes, case, scores = setup
    params = {"vg": {}, "ig": {"n_steps": IG_STEPS}}[method]
    fn = attribution_fn(case, method, classes, **params)
    maps = fn(x)
    n_samples, bound = 3, 0.1

    def explain_func(model, inputs, targets, **kwargs):
        x5 = np.asarray(inputs).reshape((-1, 1) + SHAPE)
        out = [captum_maps(scores, method, xi[None], int(t))[0] for xi, t in zip(x5, np.asarray(targets).ravel())]
        return np.stack(out).reshape(np.shape(inputs))

    metric = quantus.AvgSensitivity(nr_samples=n_samples, lower_bound=bound, normalise=True, abs=False,
                                    return_aggregate=False, disable_warnings=True)
    for k in range(len(classes)):
        a = captum_maps(scores, method, x[None, None], k)
        np.random.seed(7 + k)
        q = metric(model=FlatScores(scores).eval(), x_batch=_flat(x), y_batch=np.array([k]), a_batch=_flat(a),
                   explain_func=explain_func, device="cpu")
        np.random.seed(7 + k)
        noise = np.stack([np.random.uniform(-bound, bound, (1, x.numel())).reshape(SHAPE) for _ in range(n_samples)])
        ours = average_sensitivity(maps, fn, x, noise.astype(np.float32))[k]
        assert ours > 1e-3
        assert ours == pytest.approx(q[0], rel=1e-4)
