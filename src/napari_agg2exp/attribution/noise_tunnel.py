"""SmoothGrad as a wrapper around any gradient method (captum's ``NoiseTunnel``), SPEC §3.

``a = mean_k A(x + ε_k)`` with ``ε ~ N(0, σ²)`` and ``A`` the wrapped method (vanilla gradient,
integrated gradients, ...). ``σ = noise_level · (max x − min x)`` scales the noise to the volume's
intensity range (CT and MR ranges differ; MONAI's ``SmoothGrad`` does the same) unless an absolute
``stdevs`` is given. Noise comes from a seeded ``torch.Generator``, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from napari_agg2exp.attribution.base import Attribution, TargetType, as_volume
from napari_agg2exp.attribution.gradient import GradientAttribution, Saliency
from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress

__all__ = ["NoiseTunnel", "SmoothGrad", "NT_TYPES", "noise_stdev"]

NT_TYPES = ("smoothgrad",)


def noise_stdev(inputs: torch.Tensor, noise_level: float = 0.1, stdevs: float | None = None) -> float:
    """σ: ``stdevs`` if given, else ``noise_level · (max x − min x)`` of the clean input."""
    if stdevs is not None:
        sigma = float(stdevs)
    else:
        sigma = float(noise_level) * float(inputs.max() - inputs.min())
    if not sigma >= 0 or sigma == float("inf"):
        raise Agg2ExpError(f"the SmoothGrad noise σ must be a finite number >= 0, got {sigma}")
    return sigma


class NoiseTunnel(Attribution):
    """SmoothGrad (Smilkov et al., 2017, https://arxiv.org/abs/1706.03825) around a gradient method.

    Args:
        attribution_method: the method to smooth (:class:`Saliency`, :class:`IntegratedGradients`, ...).

    Examples::

        >>> sg = NoiseTunnel(Saliency(fwd)).attribute(x, nt_samples=20)             # σ = 0.1 · range
        >>> sig = NoiseTunnel(IntegratedGradients(fwd)).attribute(x, nt_samples=5, stdevs=0.05, n_steps=10)
    """

    def __init__(self, attribution_method: GradientAttribution):
        if not isinstance(attribution_method, GradientAttribution):
            raise TypeError(f"NoiseTunnel wraps a gradient method, got {type(attribution_method).__name__}")
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method

    @staticmethod
    def noise(shape: Sequence[int], nt_samples: int, stdevs: float, seed: int) -> Iterator[torch.Tensor]:
        """The noise draws ``attribute`` uses, one (X, Y, Z) tensor per sample, in order."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        for _ in range(nt_samples):
            yield torch.randn(tuple(shape), generator=g) * stdevs

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *, nt_type: str = "smoothgrad",
                  nt_samples: int = 20,
                  nt_samples_batch_size: int | None = None, stdevs: float | None = None, noise_level: float = 0.1,
                  seed: int = 0, progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                  **kwargs: Any) -> torch.Tensor:
        """Average of the wrapped method's maps over noisy copies of ``inputs``.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            nt_type: ``smoothgrad`` (the mean of the maps).
            nt_samples: noisy samples. Default: 20.
            nt_samples_batch_size: noisy inputs per forward/backward batch (vanilla gradient). Default: 4.
            stdevs: absolute noise σ; default ``noise_level · (max x − min x)``.
            noise_level: σ as a fraction of the input's range. Default: 0.1.
            seed: noise seed.
            progress, cancel: progress callback and cancel flag.
            **kwargs: the wrapped method's own arguments (e.g. ``n_steps`` of integrated gradients).

        Returns:
            Maps shaped like ``inputs`` (one class id) or ``(K,) + inputs.shape``.
        """
        look_up_option(nt_type, NT_TYPES, what="noise tunnel type")
        if int(nt_samples) < 1:
            raise Agg2ExpError(f"SmoothGrad needs at least 1 sample, got {nt_samples}")
        fwd, single = self._forward_for(target)
        x = as_volume(inputs).to(fwd.device)
        sigma = noise_stdev(x, noise_level, stdevs)
        maps = self._attribute(x, fwd, nt_samples=int(nt_samples), stdevs=sigma, seed=seed,
                               nt_samples_batch_size=nt_samples_batch_size, progress=progress, cancel=cancel, **kwargs)
        return self._shaped(maps, inputs, single)

    def _attribute(self, x, forward, *, nt_samples: int, stdevs: float, seed: int = 0,
                   nt_samples_batch_size: int | None = None, progress=None, cancel=None, **kwargs):
        method = self.attribution_method
        draws = self.noise(x.shape, nt_samples, stdevs, seed)
        if isinstance(method, Saliency) and not kwargs:
            # the gradients of several noisy inputs go through one forward/backward batch per window
            bs = max(1, int(nt_samples_batch_size or 4))
            n_batches = (nt_samples + bs - 1) // bs
            out = torch.zeros((forward.num_targets,) + tuple(x.shape), device=x.device)
            for bi in range(n_batches):
                n = min(bs, nt_samples - bi * bs)
                eps = torch.stack([next(draws) for _ in range(n)]).to(x.device)
                w = torch.full((n,), 1.0 / nt_samples, device=x.device)
                forward.accumulate_gradients(x[None] + eps, out, w, progress=SubProgress(progress, bi, 1, n_batches),
                                             cancel=cancel)
            return out
        out = None
        for k, eps in enumerate(draws):
            maps = method._attribute(x + eps.to(x.device), forward, progress=SubProgress(progress, k, 1, nt_samples),
                                     cancel=cancel, **kwargs)
            out = maps / nt_samples if out is None else out + maps / nt_samples
        return out


class SmoothGrad(NoiseTunnel):
    """SmoothGrad of the vanilla gradient (the paper's SG): ``NoiseTunnel(Saliency(forward_func))``."""

    def __init__(self, forward_func: SlidingWindowTarget | GradientAttribution):
        super().__init__(Saliency(forward_func) if not isinstance(forward_func, GradientAttribution) else forward_func)
