"""Gradient attributions through the sliding window: VG, IG, SmoothGrad (SPEC §3).

Each class has one ``attribute`` (captum style) that takes the model-grid input (X, Y, Z) and
returns one map per target class, shape (K, X, Y, Z). ``forward`` is a
:class:`~napari_agg2exp.attribution.target.SlidingWindowTarget`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress
from napari_agg2exp.attribution.target import SlidingWindowTarget

__all__ = ["Saliency", "IntegratedGradients", "SmoothGrad", "ig_alphas"]


def _as_volume(inputs):
    import torch

    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs).float()
    if x.ndim == 5 and x.shape[:2] == (1, 1):
        x = x[0, 0]
    elif x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise Agg2ExpError(f"inputs must be one 3D volume (X, Y, Z) on the model grid, got shape {tuple(x.shape)}")
    return x


class Saliency:
    """Vanilla gradient ``a_c = ∇_x f_c(x)`` (Simonyan et al., 2014, https://arxiv.org/abs/1312.6034).

    Args:
        forward: the stitched, masked class scores.
    """

    def __init__(self, forward: SlidingWindowTarget):
        self.forward = forward

    def attribute(self, inputs, *, abs: bool = False, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None):
        """Args:
            inputs: (X, Y, Z) model-grid volume.
            abs: return |gradient| (captum's default for Saliency is True; the paper uses signed).

        Returns:
            (K, X, Y, Z) float32 tensor, one map per target class.
        """
        import torch

        x = _as_volume(inputs).to(self.forward.device)
        out = torch.zeros((self.forward.num_targets,) + tuple(x.shape), device=self.forward.device)
        self.scores = self.forward.accumulate_gradients(x[None], out, progress=progress, cancel=cancel)[0]
        return out.abs() if abs else out


def ig_alphas(n_steps: int, method: str = "riemann_middle") -> tuple[np.ndarray, np.ndarray]:
    """Interpolation points and weights on [0, 1] (captum's names)."""
    if n_steps < 1:
        raise Agg2ExpError(f"IG needs at least 1 step, got {n_steps}")
    if method == "riemann_middle":
        a = (np.arange(n_steps) + 0.5) / n_steps
        return a, np.full(n_steps, 1.0 / n_steps)
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise Agg2ExpError("riemann_trapezoid needs at least 2 steps")
        a = np.linspace(0, 1, n_steps)
        w = np.full(n_steps, 1.0 / (n_steps - 1))
        w[[0, -1]] /= 2
        return a, w
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (x + 1), 0.5 * w
    raise Agg2ExpError(f"unknown IG method {method!r}: use riemann_middle, riemann_trapezoid or gausslegendre")


@dataclass
class IGResult:
    attributions: Any  # (K, X, Y, Z)
    delta: Any  # (K,) Σa - (f(x) - f(x0))
    relative_error: Any  # (K,) |delta| / |f(x) - f(x0)|
    f_input: Any
    f_baseline: Any


class IntegratedGradients:
    """Integrated gradients (Sundararajan et al., 2017, https://arxiv.org/abs/1703.01365).

    ``a = (x − x₀) ⊙ Σ_k w_k ∇f_c(x₀ + α_k (x − x₀))``; paper defaults ``x₀ = 0``, 20 steps.
    Completeness ``Σ_v a(v) ≈ f_c(x) − f_c(x₀)`` is checked by ``return_convergence_delta``.
    """

    def __init__(self, forward: SlidingWindowTarget):
        self.forward = forward

    @overload
    def attribute(self, inputs, baselines=..., *, n_steps=..., method=..., internal_batch_size=...,
                  return_convergence_delta: Literal[False] = ..., progress=..., cancel=...): ...

    @overload
    def attribute(self, inputs, baselines=..., *, n_steps=..., method=..., internal_batch_size=...,
                  return_convergence_delta: Literal[True], progress=..., cancel=...) -> IGResult: ...

    def attribute(self, inputs, baselines: float | Any = 0.0, *, n_steps: int = 20, method: str = "riemann_middle",
                  internal_batch_size: int = 4, return_convergence_delta: bool = False,
                  progress: ProgressCallback | None = None, cancel: CancelFlag | None = None):
        """Args:
            inputs: (X, Y, Z) model-grid volume.
            baselines: x₀, a number or a volume like ``inputs`` (default 0).
            n_steps: interpolation steps (default 20).
            method: ``riemann_middle`` (uniform mean, SPEC), ``riemann_trapezoid`` or ``gausslegendre``.
            internal_batch_size: interpolated inputs per forward/backward batch.
            return_convergence_delta: also return the completeness check (:class:`IGResult`).

        Returns:
            (K, X, Y, Z) tensor, or :class:`IGResult` with ``return_convergence_delta``.
        """
        import torch

        x = _as_volume(inputs).to(self.forward.device)
        x0 = torch.as_tensor(baselines, dtype=torch.float32, device=x.device).expand_as(x)
        alphas, weights = ig_alphas(n_steps, method)
        K = self.forward.num_targets
        grads = torch.zeros((K,) + tuple(x.shape), device=x.device)
        bs = max(1, int(internal_batch_size))
        n_batches = (n_steps + bs - 1) // bs
        for bi in range(n_batches):
            a = torch.as_tensor(alphas[bi * bs : (bi + 1) * bs], dtype=torch.float32, device=x.device)
            w = torch.as_tensor(weights[bi * bs : (bi + 1) * bs], dtype=torch.float32, device=x.device)
            batch = x0[None] + a[:, None, None, None] * (x - x0)[None]
            self.forward.accumulate_gradients(batch, grads, w, progress=SubProgress(progress, bi, 1, n_batches + 1),
                                              cancel=cancel)
        attributions = grads * (x - x0)[None]
        if not return_convergence_delta:
            return attributions
        f = self.forward.scores(torch.stack([x, x0]), cancel=cancel)
        if progress:
            progress(n_batches + 1, n_batches + 1, "completeness")
        diff = f[0] - f[1]
        delta = attributions.flatten(1).sum(1) - diff
        rel = delta.abs() / diff.abs().clamp_min(1e-12)
        return IGResult(attributions, delta, rel, f[0], f[1])


class SmoothGrad:
    """SmoothGrad (Smilkov et al., 2017, https://arxiv.org/abs/1706.03825) around a gradient method.

    Wraps another method (like captum's ``NoiseTunnel``): ``a = mean_k A(x + ε_k)``,
    ``ε ~ N(0, σ²)``, ``σ = noise_level · (max x − min x)`` (paper: 20 samples, 0.1).
    Noise comes from a seeded ``torch.Generator``, so runs are reproducible.
    """

    def __init__(self, method: Saliency):
        if not isinstance(method, Saliency):
            raise TypeError("SmoothGrad wraps Saliency (the paper's SG); got " + type(method).__name__)
        self.method = method
        self.forward = method.forward

    @staticmethod
    def noise(shape, n_samples: int, stdev: float, seed: int):
        """The noise draws ``attribute`` uses, one (X, Y, Z) tensor per sample, in order."""
        import torch

        g = torch.Generator(device="cpu").manual_seed(int(seed))
        for _ in range(n_samples):
            yield torch.randn(tuple(shape), generator=g) * stdev

    def attribute(self, inputs, *, n_samples: int = 20, stdev: float | None = None, noise_level: float = 0.1,
                  seed: int = 0, internal_batch_size: int = 4, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None):
        """Args:
            inputs: (X, Y, Z) model-grid volume.
            n_samples: noisy samples (default 20).
            stdev: noise σ; default ``noise_level · (max x − min x)``.
            seed: noise seed.
            internal_batch_size: noisy inputs per forward/backward batch.

        Returns:
            (K, X, Y, Z) tensor.
        """
        import torch

        if n_samples < 1:
            raise Agg2ExpError(f"SmoothGrad needs at least 1 sample, got {n_samples}")
        x = _as_volume(inputs).to(self.forward.device)
        sigma = float(noise_level * (x.max() - x.min())) if stdev is None else float(stdev)
        self.stdev = sigma
        K = self.forward.num_targets
        out = torch.zeros((K,) + tuple(x.shape), device=x.device)
        bs = max(1, int(internal_batch_size))
        n_batches = (n_samples + bs - 1) // bs
        draws = self.noise(x.shape, n_samples, sigma, seed)
        for bi in range(n_batches):
            n = min(bs, n_samples - bi * bs)
            eps = torch.stack([next(draws) for _ in range(n)]).to(x.device)
            w = torch.full((n,), 1.0 / n_samples, device=x.device)
            self.forward.accumulate_gradients(x[None] + eps, out, w, progress=SubProgress(progress, bi, 1, n_batches),
                                              cancel=cancel)
        return out
