"""KernelSHAP over feature groups (cubes or segments) for all classes at once (SPEC §3).

Shapley values of ``f_c`` over M features are estimated by weighted least squares with the Shapley
kernel and the efficiency constraint ``Σ φ = f(x) − f(all removed)`` (Lundberg & Lee, 2017,
https://arxiv.org/abs/1705.07874). One set of coalitions serves every class: each perturbed forward
pass yields all K scores, and one solve has K right-hand sides.

Coalitions (:func:`sample_coalitions`) follow leverage-score sampling (Musco & Witter, "Provably accurate
Shapley value estimation via leverage score sampling", ICLR 2025, https://arxiv.org/abs/2410.01917): the
leverage scores of the constrained regression are equal within a coalition size and sum to the same for
every size, so sizes 1..M−1 get equal shares of the budget (water-filled: a size with fewer coalitions
than its share is enumerated whole). Within a size, coalitions are drawn uniformly without replacement and
weighted by the size's kernel mass over the number drawn (a stratified estimate of the full regression).
Complementary pairs (antithetic sampling, Covert & Lee, AISTATS 2021, https://arxiv.org/abs/2012.01536)
make second-order interactions cancel, but a pair adds only one equation under the efficiency constraint:
coalitions are paired when the budget gives ``PAIRS_PER_UNKNOWN`` (1.1) pairs per unknown, drawn singly
otherwise (512 cubes: singly below 1126 coalitions). A design short of rank ``min(M − 1, draws)`` is redrawn.

Guarantees: rank M − 1 whenever ``n_samples ≥ M`` (512 cubes, 1000 coalitions: 511, where SHAP's sampler
reaches 491-498), hence exact values on additive games; every coalition is enumerated, and every game is
exact, when ``n_samples ≥ 2^M − 2``. :func:`fit_shapley` returns per-feature standard errors (sandwich
covariance, see there) and warns when the design is rank-deficient.
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

__all__ = ["KernelShap", "KernelShapDetails", "SPREADS", "CoalitionDesign", "ShapleyFit", "cube_feature_mask",
           "sample_coalitions", "shapley_coalitions", "fit_shapley", "solve_shapley", "exact_shapley"]

#: Per-voxel conventions of a feature's value: spread evenly over its voxels, or the full value on each.
SPREADS = ("even", "broadcast")

#: Coalitions come in complementary pairs when the budget gives this many pairs per unknown (M − 1), singly
#: otherwise: a pair adds one equation under the efficiency constraint (see the module docstring).
PAIRS_PER_UNKNOWN = 1.1
_REDRAWS = 10
_ENUMERATE = 20000  # draw from an explicit list of a size's coalitions when there are at most this many


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




def _kernel_mass_by_size(M: int) -> np.ndarray:
    """Shapley-kernel mass of all coalitions of size s = 1..M−1 together: (M−1) / (s (M−s))."""
    s = np.arange(1, M)
    return (M - 1) / (s * (M - s))


def _enumerate_all(M: int) -> np.ndarray:
    """All 2^M coalitions (2^M, M) bool, in ``itertools.product([0, 1], repeat=M)`` order."""
    return ((np.arange(2**M)[:, None] >> np.arange(M)[::-1]) & 1).astype(bool)


@dataclass
class CoalitionDesign:
    """Coalitions of a KernelSHAP design, from :func:`sample_coalitions`.

    Attributes:
        coalitions: (n, M) bool, True = feature kept; neither the full nor the empty coalition.
        weights: (n,) regression weights: the kernel mass of the coalition's size over the number drawn
            of that size (the exact kernel weight where a size is enumerated).
        units: (n,) the independent draw (0..G−1) of each coalition; both halves of a pair share one.
        sampled_fraction: (G,) fraction of its size's coalitions drawn (1 = enumerated: no sampling error).
        n_pairs: complementary pairs among the coalitions.
        rank: rank of the constrained design (full rank: M − 1).
    """

    coalitions: np.ndarray
    weights: np.ndarray
    units: np.ndarray
    sampled_fraction: np.ndarray
    n_pairs: int
    rank: int


def _water_fill(caps: np.ndarray, shares: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Integer counts ≤ ``caps`` summing to ``budget``, ∝ ``shares`` below the caps; fractional parts are
    rounded by systematic sampling (each count keeps its expectation)."""
    caps, x = np.asarray(caps, float), np.zeros(len(caps))
    free, left = caps > 0, float(budget)
    while left > 1e-9 and free.any():
        want = left / shares[free].sum() * shares
        hit = free & (want >= caps)
        if not hit.any():
            x[free] = want[free]
            break
        x[hit], left, free = caps[hit], left - caps[hit].sum(), free & ~hit
    counts = np.floor(x + 1e-9)
    extra = int(round(budget - counts.sum()))
    if extra > 0:
        order = rng.permutation(len(x))
        cum = np.cumsum(np.clip(x - counts, 0.0, 1.0)[order])
        hits = np.searchsorted(cum * (extra / cum[-1]), rng.random() + np.arange(extra), side="right")
        counts[order[np.unique(np.minimum(hits, len(x) - 1))]] += 1
    diff = int(budget - counts.sum())  # float round-off only
    if diff:
        counts[rng.permutation(np.flatnonzero(counts < caps if diff > 0 else counts > 0))[: abs(diff)]] += np.sign(diff)
    return counts.astype(np.int64)


def _draw(M: int, s: int, k: int, rng: np.random.Generator, seen: set, paired: bool) -> list[np.ndarray]:
    """``k`` distinct size-``s`` coalitions, uniformly, none in ``seen`` (paired: nor their complements,
    which are added to ``seen`` with them)."""
    def key(z):
        return np.packbits(z).tobytes()

    def new(z):
        return key(z) not in seen and not (paired and key(~z) in seen)

    if k <= 0:
        return []
    if math.comb(M, s) <= max(_ENUMERATE, 4 * (k + len(seen))):  # pick from the list of all
        combos = np.array(list(itertools.combinations(range(M), s)))
        cand = np.zeros((len(combos), M), bool)
        cand[np.arange(len(combos))[:, None], combos] = True
        if paired and 2 * s == M:
            cand = cand[cand[:, 0]]  # one of each complementary pair
        free = [i for i, z in enumerate(cand) if new(z)]
        out = list(cand[np.sort(rng.choice(free, k, replace=False))])
    else:  # rejection: at most a quarter of the size is taken
        out = []
        while len(out) < k:
            z = np.zeros(M, bool)
            z[rng.choice(M, s, replace=False)] = True
            if new(z):
                out.append(z)
                seen.update([key(z), key(~z)] if paired else [key(z)])
        return out
    for z in out:
        seen.update([key(z), key(~z)] if paired else [key(z)])
    return out


def _rank(X: np.ndarray) -> int:
    """Rank of the constrained design of coalitions ``X``: their projections off the all-ones direction."""
    Xf = X.astype(float)
    return int(np.linalg.matrix_rank(Xf - Xf.mean(1, keepdims=True))) if len(X) else 0


def _draw_design(M: int, n: int, rng: np.random.Generator) -> CoalitionDesign:
    sizes, mass = np.arange(1, M), _kernel_mass_by_size(M)
    n_comb = [math.comb(M, int(s)) for s in sizes]
    cls = np.arange(1, M // 2 + 1)  # pair classes {s, M − s}
    middle = 2 * cls == M
    pair_cap = np.array([min(n_comb[s - 1] // (2 if mid else 1), n) for s, mid in zip(cls, middle)], float)
    paired = n // 2 >= PAIRS_PER_UNKNOWN * (M - 1)
    pairs = _water_fill(pair_cap, np.where(middle, 0.5, 1.0), n // 2 if paired else 0, rng)
    used = np.zeros(M - 1, np.int64)
    np.add.at(used, cls - 1, pairs)
    np.add.at(used, M - cls - 1, pairs)
    single_cap = np.array([min(c - int(u), n) for c, u in zip(n_comb, used)], float)
    singles = _water_fill(single_cap, np.ones(M - 1), min(n - 2 * int(pairs.sum()), int(single_cap.sum())), rng)
    seen: set = set()
    rows, unit = [], []
    for two, todo in ((True, zip(cls, pairs)), (False, zip(sizes, singles))):
        for s, k in todo:
            for z in _draw(M, int(s), int(k), rng, seen, two):
                rows += [z, ~z] if two else [z]
                unit += [unit[-1] + 1 if unit else 0] * (2 if two else 1)
    Z, units = np.array(rows, bool).reshape(-1, M), np.asarray(unit, np.int64)
    size = Z.sum(1)
    count = np.bincount(size, minlength=M + 1)[1:M]
    frac = np.array([c / nc for c, nc in zip(count, n_comb)])[size - 1]
    first = np.r_[True, units[1:] != units[:-1]]
    return CoalitionDesign(Z, mass[size - 1] / count[size - 1], units, np.bincount(units, frac) / np.bincount(units),
                           int(pairs.sum()), _rank(Z[first]))


def sample_coalitions(M: int, n_samples: int, rng: np.random.Generator) -> CoalitionDesign:
    """Coalitions for KernelSHAP over ``M`` features: leverage-score sizes, without replacement, paired if the
    budget allows (module docstring). All are enumerated, with exact weights, when ``n_samples ≥ 2^M − 2``;
    a design short of rank ``min(M − 1, draws)`` is redrawn (up to 10 times, the best kept)."""
    if M < 2:
        raise Agg2ExpError(f"KernelSHAP needs at least 2 features, got {M}")
    n = int(n_samples)
    if n < 1:
        raise Agg2ExpError(f"KernelSHAP needs at least 1 sample, got {n_samples}")
    if M < 60 and n >= 2**M - 2:
        Z = _enumerate_all(M)[1:-1]
        size = Z.sum(1)
        w = _kernel_mass_by_size(M)[size - 1] / np.array([math.comb(M, int(s)) for s in size])
        return CoalitionDesign(Z, w, np.arange(len(Z)), np.ones(len(Z)), 0, M - 1)
    best = _draw_design(M, n, rng)
    for _ in range(_REDRAWS - 1):
        if best.rank >= min(M - 1, int(best.units[-1]) + 1):
            break
        d = _draw_design(M, n, rng)
        best = d if d.rank > best.rank else best
    return best


def shapley_coalitions(M: int, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions (n, M) bool and their regression weights (n,) of :func:`sample_coalitions`."""
    d = sample_coalitions(M, n_samples, rng)
    return d.coalitions, d.weights


@dataclass
class ShapleyFit:
    """Result of :func:`fit_shapley`.

    Attributes:
        values: (M, K) Shapley value estimates, ``Σ_m φ_m = f_full − f_empty`` exactly.
        standard_errors: (M, K) their standard errors: 0 where exact, inf where not identified (rank-deficient
            design), NaN where the design leaves no degrees of freedom to estimate them.
        rank: rank of the constrained design (full rank: M − 1).
    """

    values: np.ndarray
    standard_errors: np.ndarray
    rank: int


def fit_shapley(Z: np.ndarray, w: np.ndarray, y: np.ndarray, f_full: np.ndarray, f_empty: np.ndarray,
                units: np.ndarray | None = None, sampled_fraction: np.ndarray | None = None,
                warn: bool = True) -> ShapleyFit:
    """Weighted least squares with the efficiency constraint, K right-hand sides, with standard errors.

    Solves ``min Σ w (y − f_empty − Z φ)²`` s.t. ``Σ φ = Δ = f_full − f_empty`` as ``φ = Δ/M + θ``, θ ⊥ 1,
    by SVD (minimum-norm θ if the design is rank-deficient, then with a warning). Standard errors: the
    sandwich (linearisation) covariance ``(AᵀA)⁺ [Σ_u c_u h_u h_uᵀ] (AᵀA)⁺`` of the estimating equations,
    with one score ``h_u = Σ_{i∈u} a_i r_i`` per independent draw ``u`` (a pair or a single coalition: the
    sampling unit) and ``c_u = (1 − sampled_fraction_u)·G/(G − rank)``: the finite-population correction
    (enumerated sizes add no error) and the degrees-of-freedom factor for G draws. A bootstrap over
    coalitions would be rank-deficient when n is near M (cubes: 1000 coalitions for 511 unknowns).

    Args:
        Z: (n, M) coalitions (True = feature kept).
        w: (n,) regression weights.
        y: (n, K) scores of the coalitions.
        f_full, f_empty: (K,) scores with every / no feature kept.
        units: (n,) the draw (0..G−1) of each coalition; default: each its own.
        sampled_fraction: (G,) per draw; default 0 (sampled from an infinite population).
        warn: warn (UserWarning) when the design is rank-deficient.
    """
    Z = np.asarray(Z, bool)
    n, M = Z.shape
    y = np.asarray(y, float).reshape(n, -1)
    f_full, f_empty = np.atleast_1d(np.asarray(f_full, float)), np.atleast_1d(np.asarray(f_empty, float))
    delta, Zf, sw = f_full - f_empty, Z.astype(float), np.sqrt(np.asarray(w, float))[:, None]
    A = sw * (Zf - Zf.mean(1, keepdims=True))
    b = sw * (y - f_empty[None] - Zf.sum(1, keepdims=True) * (delta[None] / M))
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    rank = int((S > S.max(initial=0.0) * max(A.shape) * np.finfo(float).eps).sum())
    U, S, V = U[:, :rank], S[:rank], Vt[:rank].T
    Ub = U.T @ b
    theta = V @ (Ub / S[:, None])
    phi = delta[None] / M + theta - theta.mean(0, keepdims=True)
    if warn and rank < M - 1:
        warnings.warn(f"KernelSHAP design has rank {rank} < {M - 1} for {M} features ({n} coalitions): the values "
                      "are not identified; use more samples than features", UserWarning, stacklevel=2)
    units = np.arange(n) if units is None else np.asarray(units, np.int64)
    G = int(units.max()) + 1 if n else 0
    c = 1.0 - (np.zeros(G) if sampled_fraction is None else np.clip(np.asarray(sampled_fraction, float), 0, 1))
    var = np.zeros_like(phi)
    if G > rank:
        resid = b - U @ Ub  # (n, K) weighted residuals
        order = np.argsort(units, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(units[order]) != 0])
        cu = c[units[order][starts]] * G / (G - rank)
        for k in range(phi.shape[1]):
            h = np.add.reduceat((U * resid[:, k : k + 1])[order], starts) / S  # per-draw scores, U coordinates
            var[:, k] = (cu[:, None] * (h @ V.T) ** 2).sum(0)
    elif np.any(c > 0):
        var[:] = np.nan
    var[(1.0 - 1.0 / M) - (V**2).sum(1) > 1e-8] = np.inf  # not identified
    return ShapleyFit(phi, np.sqrt(var), rank)


def solve_shapley(Z: np.ndarray, w: np.ndarray, y: np.ndarray, f_full: np.ndarray, f_empty: np.ndarray) -> np.ndarray:
    """Weighted least squares with the efficiency constraint, K right-hand sides at once (:func:`fit_shapley`).

    Args:
        Z: (n, M) coalitions (True = feature kept).
        w: (n,) kernel weights.
        y: (n, K) scores of the coalitions.
        f_full, f_empty: (K,) scores with every / no feature kept.

    Returns:
        (M, K) Shapley value estimates with ``Σ_m φ_m = f_full − f_empty`` exactly.
    """
    return fit_shapley(Z, w, y, f_full, f_empty).values


def exact_shapley(value: Callable[[np.ndarray], np.ndarray], M: int) -> np.ndarray:
    """Exact Shapley values by enumerating all 2^M coalitions (for tests; M ≤ ~16).

    Args:
        value: maps a (n, M) bool array of coalitions to (n, K) scores.

    Returns:
        (M, K) Shapley values.
    """
    Z = _enumerate_all(M)
    v = np.asarray(value(Z), dtype=float).reshape(len(Z), -1)
    idx, size = np.arange(len(Z)), Z.sum(1)
    coef = np.array([math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) for s in range(M)])
    phi = np.zeros((M, v.shape[1]))
    for m in range(M):
        without = idx[(idx & (1 << (M - 1 - m))) == 0]
        phi[m] = (coef[size[without]][:, None] * (v[without | (1 << (M - 1 - m))] - v[without])).sum(0)
    return phi


@dataclass
class KernelShapDetails:
    """What a KernelSHAP run found besides the maps (``return_details=True``).

    Attributes:
        values: (M, K) Shapley value estimates per feature and class.
        feature_ids: (M,) label of each feature in the feature mask.
        f_full, f_empty: (K,) scores with every / no feature kept.
        n_coalitions: coalitions evaluated (besides the full and the empty one).
        standard_errors: (M, K) standard errors of ``values`` (see :func:`fit_shapley`).
        design_rank: rank of the constrained design (full rank: M − 1; less: a warning was issued).
        n_pairs: complementary pairs among the coalitions.
    """

    values: np.ndarray
    feature_ids: np.ndarray
    f_full: np.ndarray
    f_empty: np.ndarray
    n_coalitions: int
    standard_errors: np.ndarray | None = None
    design_rank: int = 0
    n_pairs: int = 0


class KernelShap(Attribution):
    """KernelSHAP for a segmentation model over groups of voxels (cubes or segments).

    One set of coalitions (:func:`sample_coalitions`) serves every class: each perturbed forward pass
    gives all K scores, and one weighted least-squares solve (:func:`fit_shapley`) has K right-hand
    sides. The details carry per-feature standard errors and the design's rank; a rank-deficient
    design (``n_samples`` below the number of features) is warned about.

    Args:
        forward_func: the stitched, masked class scores.

    Examples::

        >>> maps = KernelShap(fwd).attribute(x, feature_mask=cube_feature_mask(x.shape), n_samples=1000)
        >>> values = KernelShap(fwd).attribute(x, feature_mask=regions, return_input_shape=False)  # (K, M)
    """

    @overload
    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = ..., *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float = ..., n_samples: int = ...,
                  perturbations_per_eval: int = ..., return_input_shape: bool = ..., spread: str = ...,
                  seed: int = ..., return_details: Literal[False] = ..., progress: ProgressCallback | None = ...,
                  cancel: CancelFlag | None = ...) -> torch.Tensor: ...

    @overload
    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = ..., *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float = ..., n_samples: int = ...,
                  perturbations_per_eval: int = ..., return_input_shape: bool = ..., spread: str = ...,
                  seed: int = ..., return_details: Literal[True], progress: ProgressCallback | None = ...,
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
            n_samples: coalitions to evaluate (paper: 1000 cubes, 200 semantic); more than the number of
                features gives a full-rank design (exact on additive models).
            perturbations_per_eval: coalitions per forward batch. Default: 4.
            return_input_shape: per-voxel maps (default); ``False``: the values per feature, (M,) or (K, M).
            spread: ``even`` spreads φ over the feature's voxels (region sum = φ); ``broadcast`` puts the
                full φ on every voxel (the paper's convention).
            seed: coalition seed.
            return_details: also return :class:`KernelShapDetails` (values, standard errors, design rank).
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
        design = sample_coalitions(M, n_samples, np.random.default_rng(seed))
        Z = design.coalitions
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
        fit = fit_shapley(Z, design.weights, scores[2:], f_full, f_empty, design.units, design.sampled_fraction,
                          warn=False)
        if fit.rank < M - 1:
            warnings.warn(f"KernelSHAP design has rank {fit.rank} < {M - 1} for {M} features ({len(Z)} coalitions): "
                          "the values are not identified; use more samples than features", UserWarning, stacklevel=3)
        return KernelShapDetails(fit.values, ids, f_full, f_empty, len(Z), fit.standard_errors, fit.rank,
                                 design.n_pairs)
