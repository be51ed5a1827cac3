"""Cross-check of the explanation-quality metrics against Quantus (issue 5 item 3).

Quantus (https://github.com/understandable-machine-intelligence-lab/Quantus) handles batched 1D/2D
inputs and classifiers. The 3D volume is wrapped for it: flattened to ``(1, 1, N)`` and the model is
the explained scalar ``f_c`` (the sliding-window class scores with the clean mask fixed), so Quantus
sees a classifier ``(B, 1, N) -> (B, K)`` and ``y = k`` picks the class. Quantus draws its subsets and
noise from the global NumPy RNG; re-seeding it and drawing the same way gives us the same
perturbations, so the values must agree to float precision. Skipped when Quantus is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from napari_agg2exp.attribution import SlidingWindowTarget
from napari_agg2exp.models.inference import SlidingWindow, sliding_window_logits
from napari_agg2exp.evaluation.metrics import (
    average_sensitivity,
    effective_complexity,
    faithfulness_correlation,
    score_drops,
)
from napari_agg2exp.models.loading import build_network

from conftest import attribution_fn, model_grid_case, tiny_spec  # noqa: E402

SHAPE = (18, 17, 16)


class FlatScores(torch.nn.Module):
    """Quantus' view of the model: (B, 1, N) flattened volumes -> (B, K) class scores f_c."""

    def __init__(self, forward: SlidingWindowTarget, shape):
        super().__init__()
        self.fwd, self.shape = forward, tuple(shape)

    def forward(self, x):
        return self.fwd.scores(torch.as_tensor(x).float().reshape((x.shape[0],) + self.shape))


@pytest.fixture
def setup():
    torch.manual_seed(4)
    spec = tiny_spec(arguments={"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"})
    net = build_network(spec).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(np.random.default_rng(0).normal(0.5, 0.3, SHAPE).astype(np.float32))
    plan = SlidingWindow.plan(SHAPE, (16, 16, 16), 0.25, "constant")
    labels = sliding_window_logits(net, x[None], plan).argmax(0)
    classes = sorted(torch.unique(labels).tolist())
    assert len(classes) >= 2
    fwd = SlidingWindowTarget(net, plan, labels, classes, sw_batch_size=8)
    return net, x, plan, labels, classes, fwd


def _flat(a):
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return a.reshape(1, 1, -1).astype(np.float32)


def test_effective_complexity_identical(setup):
    net, x, plan, labels, classes, fwd = setup
    maps = attribution_fn(model_grid_case(net, x, (16, 16, 16)), "ig", classes, n_steps=4)(x)
    metric = quantus.EffectiveComplexity(eps=0.1, abs=True, normalise=True, disable_warnings=True)
    ours = effective_complexity(maps, 0.1)
    n = int(np.prod(SHAPE))
    for k in range(len(classes)):
        q = metric(model=None, x_batch=_flat(x), y_batch=np.array([k]), a_batch=_flat(maps[k]))
        assert ours[k] * n == pytest.approx(q[0], abs=1e-9)


def test_faithfulness_correlation_equal_given_the_same_subsets(setup):
    net, x, plan, labels, classes, fwd = setup
    maps = attribution_fn(model_grid_case(net, x, (16, 16, 16)), "vg", classes)(x)
    n_runs, size, n = 30, 400, int(np.prod(SHAPE))
    model = FlatScores(fwd, SHAPE).eval()
    metric = quantus.FaithfulnessCorrelation(nr_runs=n_runs, subset_size=size, perturb_baseline=0.0, abs=False,
                                             normalise=True, return_aggregate=False, disable_warnings=True)
    for k in range(len(classes)):
        np.random.seed(100 + k)
        q = metric(model=model, x_batch=_flat(x), y_batch=np.array([k]), a_batch=_flat(maps[k]), device="cpu")
        np.random.seed(100 + k)
        subsets = np.stack([np.random.choice(n, size, replace=False) for _ in range(n_runs)])
        drops = score_drops(fwd, x, subsets, batch_size=8)
        ours = faithfulness_correlation(maps, subsets, drops)[k]
        assert ours == pytest.approx(q[0], abs=1e-5)


@pytest.mark.parametrize("method", ["ig", "sg"])
def test_average_sensitivity_equal_given_the_same_noise(setup, method):
    net, x, plan, labels, classes, fwd = setup
    params = {"ig": {"n_steps": 3}, "sg": {"nt_samples": 2}}[method]
    fn = attribution_fn(model_grid_case(net, x, (16, 16, 16)), method, classes, **params)
    maps = fn(x)
    n_samples, bound = 3, 0.1

    def explain_func(model, inputs, targets, **kwargs):
        out = []
        for xi, t in zip(np.asarray(inputs), np.asarray(targets).ravel()):
            out.append(fn(torch.from_numpy(xi.reshape(SHAPE).astype(np.float32)))[int(t)].numpy())
        return np.stack(out).reshape(np.shape(inputs))

    metric = quantus.AvgSensitivity(nr_samples=n_samples, lower_bound=bound, normalise=True, abs=False,
                                    return_aggregate=False, disable_warnings=True)
    k = len(classes) - 1
    np.random.seed(7)
    q = metric(model=FlatScores(fwd, SHAPE).eval(), x_batch=_flat(x), y_batch=np.array([k]), a_batch=_flat(maps[k]),
               explain_func=explain_func, device="cpu")
    np.random.seed(7)
    noise = np.stack([np.random.uniform(-bound, bound, (1, x.numel())).reshape(SHAPE) for _ in range(n_samples)])
    ours = average_sensitivity(maps, fn, x, noise.astype(np.float32))[k]
    assert ours > 0
    assert ours == pytest.approx(q[0], rel=1e-4)
