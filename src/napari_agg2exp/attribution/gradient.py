"""Gradient attributions through the sliding window: vanilla gradient and integrated gradients (SPEC §3).

Both follow captum's interface (``attribute(inputs, target=..., ...)``, see
:mod:`napari_agg2exp.attribution.base`); SmoothGrad is :class:`~napari_agg2exp.attribution.noise_tunnel.NoiseTunnel`
around either of them.
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
import torch

from napari_agg2exp.attribution.base import Attribution, TargetType, as_volume
from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress

__all__ = ["GradientAttribution", "Saliency", "IntegratedGradients", "IG_METHODS", "ig_alphas"]

IG_METHODS = ("riemann_middle", "riemann_trapezoid", "gausslegendre")


class GradientAttribution(Attribution):
    """A method whose map is a weighted sum of input gradients; ``NoiseTunnel`` can batch its noisy inputs."""

    def _attribute(self, x: torch.Tensor, forward: SlidingWindowTarget, *, progress: ProgressCallback | None = None,
                   cancel: CancelFlag | None = None, **kwargs) -> torch.Tensor:
        """(K, X, Y, Z) maps of one (X, Y, Z) input for every class of ``forward``."""
        raise NotImplementedError


class Saliency(GradientAttribution):
    """Vanilla gradient ``a_c = ∇_x f_c(x)`` (Simonyan et al., 2014, https://arxiv.org/abs/1312.6034).

    Args:
        forward_func: the stitched, masked class scores.

    Examples::

        >>> fwd = SlidingWindowTarget(network, plan, prediction, classes=[1, 8])
        >>> maps = Saliency(fwd).attribute(x)            # (2, X, Y, Z)
        >>> heart = Saliency(fwd).attribute(x, target=8)  # (X, Y, Z)
    """

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *, abs: bool = False,
                  progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> torch.Tensor:
        """Input gradients of the class scores.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            abs: return ``|gradient|`` (captum's default is ``True``; the paper uses signed maps).
            progress, cancel: progress callback and cancel flag.

        Returns:
            Maps shaped like ``inputs`` (one class id) or ``(K,) + inputs.shape``.
        """
        fwd, single = self._forward_for(target)
        out = self._attribute(as_volume(inputs).to(fwd.device), fwd, progress=progress, cancel=cancel)
        return self._shaped(out.abs() if abs else out, inputs, single)

    def _attribute(self, x, forward, *, progress=None, cancel=None, weights=None, batch=None):
        out = torch.zeros((forward.num_targets,) + tuple(x.shape[-3:]), device=forward.device)
        forward.accumulate_gradients(x[None] if batch is None else batch, out, weights, progress=progress, cancel=cancel)
        return out


def ig_alphas(n_steps: int, method: str = "riemann_middle") -> tuple[np.ndarray, np.ndarray]:
    """Interpolation points and weights on [0, 1] (captum's names)."""
    method = look_up_option(method, IG_METHODS, what="IG integration method")
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
    x, w = np.polynomial.legendre.leggauss(n_steps)
    return 0.5 * (x + 1), 0.5 * w


class IntegratedGradients(GradientAttribution):
    """Integrated gradients (Sundararajan et al., 2017, https://arxiv.org/abs/1703.01365).

    ``a = (x − x₀) ⊙ Σ_k w_k ∇f_c(x₀ + α_k (x − x₀))``; paper defaults ``x₀ = 0``, 20 steps.
    Completeness ``Σ_v a(v) ≈ f_c(x) − f_c(x₀)`` is returned with ``return_convergence_delta``.

    Examples::

        >>> maps, delta = IntegratedGradients(fwd).attribute(x, baselines=0.0, n_steps=20,
        ...                                                   return_convergence_delta=True)
    """

    @overload
    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = ..., *,
                  baselines: float | torch.Tensor = ..., n_steps: int = ..., method: str = ...,
                  internal_batch_size: int = ..., return_convergence_delta: Literal[False] = ...,
                  progress: ProgressCallback | None = ..., cancel: CancelFlag | None = ...) -> torch.Tensor: ...

    @overload
    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = ..., *,
                  baselines: float | torch.Tensor = ..., n_steps: int = ..., method: str = ...,
                  internal_batch_size: int = ..., return_convergence_delta: Literal[True],
                  progress: ProgressCallback | None = ...,
                  cancel: CancelFlag | None = ...) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *,
                  baselines: float | torch.Tensor = 0.0, n_steps: int = 20,
                  method: str = "riemann_middle", internal_batch_size: int = 4, return_convergence_delta: bool = False,
                  progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Integrated gradients of the class scores.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            baselines: ``x₀``, a number or a volume like ``inputs``. Default: 0.
            n_steps: interpolation steps. Default: 20.
            method: ``riemann_middle`` (uniform mean, SPEC), ``riemann_trapezoid`` or ``gausslegendre``.
            internal_batch_size: interpolated inputs per forward/backward batch. Default: 4.
            return_convergence_delta: also return ``Σ_v a(v) − (f(x) − f(x₀))`` per class.
            progress, cancel: progress callback and cancel flag.

        Returns:
            Maps shaped like ``inputs`` (one class id) or ``(K,) + inputs.shape``; with
            ``return_convergence_delta`` also the delta, a scalar tensor or shape (K,).
        """
        fwd, single = self._forward_for(target)
        x = as_volume(inputs).to(fwd.device)
        maps = self._attribute(x, fwd, baselines=baselines, n_steps=n_steps, method=method,
                               internal_batch_size=internal_batch_size, progress=progress, cancel=cancel)
        out = self._shaped(maps, inputs, single)
        if not return_convergence_delta:
            return out
        x0 = torch.as_tensor(baselines, dtype=torch.float32, device=x.device).expand_as(x)
        f = fwd.scores(torch.stack([x, x0]), cancel=cancel)
        delta = maps.flatten(1).sum(1) - (f[0] - f[1])
        return out, (delta[0] if single else delta)

    def _attribute(self, x, forward, *, baselines=0.0, n_steps=20, method="riemann_middle", internal_batch_size=4,
                   progress=None, cancel=None):
        x0 = torch.as_tensor(baselines, dtype=torch.float32, device=x.device).expand_as(x)
        alphas, weights = ig_alphas(int(n_steps), method)
        grads = torch.zeros((forward.num_targets,) + tuple(x.shape), device=x.device)
        bs = max(1, int(internal_batch_size))
        n_batches = (len(alphas) + bs - 1) // bs
        for bi in range(n_batches):
            a = torch.as_tensor(alphas[bi * bs : (bi + 1) * bs], dtype=torch.float32, device=x.device)
            w = torch.as_tensor(weights[bi * bs : (bi + 1) * bs], dtype=torch.float32, device=x.device)
            batch = x0[None] + a[:, None, None, None] * (x - x0)[None]
            forward.accumulate_gradients(batch, grads, w, progress=SubProgress(progress, bi, 1, n_batches),
                                         cancel=cancel)
        return grads * (x - x0)[None]
