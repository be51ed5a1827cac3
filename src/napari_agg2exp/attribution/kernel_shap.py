"""KernelSHAP over feature groups (cubes or segments) for all classes at once (SPEC §3).

Shapley values of ``f_c`` over M features are estimated by weighted least squares with the Shapley
kernel and the efficiency constraint ``Σ φ = f(x) − f(all removed)`` (Lundberg & Lee, 2017,
https://arxiv.org/abs/1705.07874). Coalitions follow SHAP's KernelExplainer: whole coalition sizes
are enumerated with their exact kernel weight while the budget allows (smallest and largest sizes
first), the rest is sampled from the kernel in complementary pairs. With ``n_samples ≥ 2^M − 2`` every
coalition is enumerated and the values are exact. One set of coalitions serves every class: each
perturbed forward pass yields all K scores, and one solve has K right-hand sides.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch

from napari_agg2exp.attribution.base import Attribution, TargetType, as_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, report

__all__ = ["KernelShap", "KernelShapDetails", "SPREADS", "cube_feature_mask", "shapley_coalitions", "solve_shapley",
           "exact_shapley"]

#: Per-voxel conventions of a feature's value: spread evenly over its voxels, or the full value on each.
SPREADS = ("even", "broadcast")


def cube_feature_mask(shape: Sequence[int], cubes_per_axis: int = 8) -> np.ndarray:
    """An (X, Y, Z) int mask of ``cubes_per_axis³`` contiguous cells covering the volume.

    Cell boundaries split each axis into near-equal parts (``floor(i·n/8)``), so there are exactly
    512 non-empty, contiguous features for any axis of at least 8 voxels (cells have side
    ``n/8`` when 8 divides ``n``; ``ceil(n/8)``-sided cells would leave empty cells on small axes).
    Ids are ``(i·8 + j)·8 + k`` -- no modulo folding.
    """
    n = int(cubes_per_axis)
    if any(s < n for s in shape):
        raise Agg2ExpError(f"volume {tuple(shape)} is too small for {n} cubes per axis")
    idx = [np.minimum((np.arange(s) * n) // s, n - 1) for s in shape]
    return (idx[0][:, None, None] * n + idx[1][None, :, None]) * n + idx[2][None, None, :]


def _kernel_weight_by_size(M: int) -> np.ndarray:
    s = np.arange(1, M)
    return (M - 1) / (s * (M - s))


def shapley_coalitions(M: int, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions (n, M) bool and their regression weights (n,), SHAP KernelExplainer style."""
    if M < 2:
        raise Agg2ExpError(f"KernelSHAP needs at least 2 features, got {M}")
    n_samples = int(n_samples)
    total_nontrivial = 2**M - 2 if M < 60 else np.inf
    if n_samples >= total_nontrivial:
        rows = np.array(list(itertools.product([0, 1], repeat=M))[1:-1], dtype=bool)
        size = rows.sum(1)
        w = (M - 1) / (np.array([math.comb(M, int(k)) for k in size]) * size * (M - size))
        return rows, w
    n_sizes = int(math.ceil((M - 1) / 2))
    n_paired = int(math.floor((M - 1) / 2))
    wv = np.array([(M - 1.0) / (i * (M - i)) for i in range(1, n_sizes + 1)])
    wv[:n_paired] *= 2
    wv /= wv.sum()
    rows, weights = [], []
    remaining = n_samples
    remaining_w = wv.copy()
    full_sizes = 0
    for i, size in enumerate(range(1, n_sizes + 1)):
        n_sub = math.comb(M, size) * (2 if size <= n_paired else 1)
        if remaining_w[i] <= 0 or remaining * remaining_w[i] / remaining_w[i:].sum() < n_sub - 1e-8:
            break
        full_sizes += 1
        remaining -= n_sub
        w_each = wv[i] / math.comb(M, size) / (2 if size <= n_paired else 1)
        for comb in itertools.combinations(range(M), size):
            z = np.zeros(M, dtype=bool)
            z[list(comb)] = True
            rows.append(z)
            weights.append(w_each)
            if size <= n_paired:
                rows.append(~z)
                weights.append(w_each)
    left_w = wv[full_sizes:].sum()
    if remaining > 0 and full_sizes < n_sizes and left_w > 0:
        p = wv[full_sizes:] / left_w
        sizes = np.arange(full_sizes + 1, n_sizes + 1)
        sampled: dict[bytes, list] = {}
        n_draws = max(1, remaining // 2)
        for _ in range(n_draws):
            size = int(rng.choice(sizes, p=p))
            z = np.zeros(M, dtype=bool)
            z[rng.choice(M, size, replace=False)] = True
            for zz in (z, ~z) if size <= n_paired else (z,):
                key = zz.tobytes()
                if key in sampled:
                    sampled[key][1] += 1.0
                else:
                    sampled[key] = [zz, 1.0]
        cnt = sum(v[1] for v in sampled.values())
        for zz, c in sampled.values():
            rows.append(zz)
            weights.append(left_w * c / cnt)
    return np.array(rows, dtype=bool), np.asarray(weights, dtype=float)


def solve_shapley(Z: np.ndarray, w: np.ndarray, y: np.ndarray, f_full: np.ndarray, f_empty: np.ndarray) -> np.ndarray:
    """Weighted least squares with the efficiency constraint, K right-hand sides at once.

    Args:
        Z: (n, M) coalitions (True = feature kept).
        w: (n,) kernel weights.
        y: (n, K) scores of the coalitions.
        f_full, f_empty: (K,) scores with every / no feature kept.

    Returns:
        (M, K) Shapley value estimates with ``Σ_m φ_m = f_full − f_empty`` exactly.
    """
    Z = Z.astype(float)
    delta = f_full - f_empty  # (K,)
    # eliminate the last feature: phi_M = delta - sum_{j<M} phi_j
    X = Z[:, :-1] - Z[:, -1:]
    Y = y - f_empty[None] - Z[:, -1:] * delta[None]
    sw = np.sqrt(w)[:, None]
    phi_head, *_ = np.linalg.lstsq(X * sw, Y * sw, rcond=None)
    phi_last = delta[None] - phi_head.sum(0, keepdims=True)
    return np.vstack([phi_head, phi_last])


def exact_shapley(value: Callable[[np.ndarray], np.ndarray], M: int) -> np.ndarray:
    """Exact Shapley values by enumerating all 2^M coalitions (for tests; M ≤ ~12).

    Args:
        value: maps a (n, M) bool array of coalitions to (n, K) scores.
    """
    Z = np.array(list(itertools.product([0, 1], repeat=M)), dtype=bool)
    v = np.asarray(value(Z), dtype=float)
    index = {z.tobytes(): i for i, z in enumerate(Z)}
    phi = np.zeros((M, v.shape[1]))
    for i, z in enumerate(Z):
        s = int(z.sum())
        for m in range(M):
            if not z[m]:
                zp = z.copy()
                zp[m] = True
                wgt = math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M)
                phi[m] += wgt * (v[index[zp.tobytes()]] - v[i])
    return phi


@dataclass
class KernelShapDetails:
    """What a KernelSHAP run found besides the maps (``return_details=True``).

    Attributes:
        values: (M, K) Shapley value estimates per feature and class.
        feature_ids: (M,) label of each feature in the feature mask.
        f_full, f_empty: (K,) scores with every / no feature kept.
        n_coalitions: coalitions evaluated (besides the full and the empty one).
    """

    values: np.ndarray
    feature_ids: np.ndarray
    f_full: np.ndarray
    f_empty: np.ndarray
    n_coalitions: int


class KernelShap(Attribution):
    """KernelSHAP for a segmentation model over groups of voxels (cubes or segments).

    One set of coalitions serves every class: each perturbed forward pass gives all K scores, and
    one weighted least-squares solve has K right-hand sides.

    Args:
        forward_func: the stitched, masked class scores.

    Examples::

        >>> maps = KernelShap(fwd).attribute(x, feature_mask=cube_feature_mask(x.shape), n_samples=1000)
        >>> values = KernelShap(fwd).attribute(x, feature_mask=regions, return_input_shape=False)  # (K, M)
    """

    @overload
    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = ..., *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float = ..., n_samples: int = ...,
                  perturbations_per_eval: int = ..., return_input_shape: bool = ..., spread: str = ..., seed: int = ...,
                  return_details: Literal[False] = ..., progress: ProgressCallback | None = ...,
                  cancel: CancelFlag | None = ...) -> torch.Tensor: ...

    @overload
    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = ..., *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float = ..., n_samples: int = ...,
                  perturbations_per_eval: int = ..., return_input_shape: bool = ..., spread: str = ..., seed: int = ...,
                  return_details: Literal[True], progress: ProgressCallback | None = ...,
                  cancel: CancelFlag | None = ...) -> tuple[torch.Tensor, KernelShapDetails]: ...

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float = 0.0,
                  n_samples: int = 1000, perturbations_per_eval: int = 4, return_input_shape: bool = True,
                  spread: str = "even", seed: int = 0, return_details: bool = False,
                  progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> torch.Tensor | tuple[torch.Tensor, KernelShapDetails]:
        """Shapley values of the class scores over the features of ``feature_mask``.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            feature_mask: integer labels shaped like ``inputs``; each distinct value is one feature.
            baselines: value of a removed feature. Default: 0 (the paper's).
            n_samples: coalitions to evaluate (paper: 1000 cubes, 200 semantic).
            perturbations_per_eval: coalitions per forward batch. Default: 4.
            return_input_shape: per-voxel maps (default); ``False``: the values per feature, (M,) or (K, M).
            spread: ``even`` spreads φ over the feature's voxels (region sum = φ); ``broadcast`` puts the
                full φ on every voxel (the paper's convention).
            seed: coalition seed.
            return_details: also return :class:`KernelShapDetails`.
            progress, cancel: progress callback and cancel flag.

        Returns:
            Maps shaped like ``inputs`` (one class id) or ``(K,) + inputs.shape`` (or per-feature values);
            with ``return_details`` also the details.
        """
        spread = look_up_option(spread, SPREADS, what="spread")
        if int(n_samples) < 1:
            raise Agg2ExpError(f"KernelSHAP needs at least 1 sample, got {n_samples}")
        fwd, single = self._forward_for(target)
        x = as_volume(inputs).to(fwd.device)
        fm = np.asarray(feature_mask.cpu() if isinstance(feature_mask, torch.Tensor) else feature_mask)
        while fm.ndim > 3 and fm.shape[0] == 1:
            fm = fm[0]
        if fm.shape != tuple(x.shape):
            raise Agg2ExpError(f"feature mask shape {fm.shape} differs from the input's {tuple(x.shape)}")
        details = self._values(x, fwd, fm, baselines=baselines, n_samples=int(n_samples),
                               perturbations_per_eval=perturbations_per_eval, seed=seed, progress=progress,
                               cancel=cancel)
        if return_input_shape:
            out = self._shaped(self.spread_values(details.values, fm, details.feature_ids, spread, x.device),
                               inputs, single)
        else:
            values = torch.as_tensor(details.values.T, dtype=torch.float32)
            out = values[0] if single else values
        return (out, details) if return_details else out

    @staticmethod
    def spread_values(values: np.ndarray, feature_mask: np.ndarray, feature_ids: np.ndarray, spread: str = "even",
                      device: torch.device | str | None = None) -> torch.Tensor:
        """(M, K) per-feature values -> (K, X, Y, Z) per-voxel maps."""
        _, inverse = np.unique(feature_mask, return_inverse=True)
        per = values.copy()
        if spread == "even":
            sizes = np.bincount(inverse.ravel(), minlength=len(feature_ids)).astype(float)
            per = per / sizes[:, None]
        table = torch.as_tensor(per.T, dtype=torch.float32, device=device)  # (K, M)
        return table[:, torch.as_tensor(inverse.reshape(feature_mask.shape), device=device)]

    def _values(self, x, forward, fm: np.ndarray, *, baselines: float, n_samples: int, perturbations_per_eval: int,
                seed: int, progress=None, cancel=None) -> KernelShapDetails:
        ids, inverse = np.unique(fm, return_inverse=True)
        M = len(ids)
        if M > 10000:
            warnings.warn(f"KernelSHAP with {M} features needs many more samples than usual", stacklevel=3)
        if M < 2:
            raise Agg2ExpError(f"the feature mask has {M} feature(s); KernelSHAP needs at least 2")
        inv = torch.as_tensor(inverse.reshape(fm.shape), device=x.device)
        rng = np.random.default_rng(seed)
        Z, w = shapley_coalitions(M, n_samples, rng)
        all_z = np.vstack([np.ones((1, M), bool), np.zeros((1, M), bool), Z])
        scores = np.zeros((len(all_z), forward.num_targets))
        bs = max(1, int(perturbations_per_eval))
        base = torch.as_tensor(float(baselines), device=x.device)
        for b0 in range(0, len(all_z), bs):
            zb = torch.as_tensor(all_z[b0 : b0 + bs], device=x.device)
            keep = zb[:, inv]  # (b, X, Y, Z)
            batch = torch.where(keep, x[None], base)
            scores[b0 : b0 + len(zb)] = forward.scores(batch, cancel=cancel).cpu().numpy()
            report(progress, min(len(all_z), b0 + bs), len(all_z), "coalitions")
        f_full, f_empty = scores[0], scores[1]
        phi = solve_shapley(Z, w, scores[2:], f_full, f_empty)
        return KernelShapDetails(phi, ids, f_full, f_empty, len(Z))
