"""Explanation-quality metrics on the model grid (SPEC §6, appendix B.2).

Pure functions: each takes per-class attribution maps ``(K, X, Y, Z)`` (numpy or torch) and returns
one value per class ``(K,)``. Maps are normalised by ``max |a|`` per class first (as Quantus'
``normalise_by_max``); an all-zero map gives NaN. The random parts -- voxel subsets and input noise --
are drawn by :func:`random_subsets` and :func:`uniform_noise` from a seed and the volume shape only,
so every attribution method is scored on exactly the same perturbations.

- Faithfulness correlation (Bhatt et al., 2020, https://arxiv.org/abs/2005.00631): Pearson
  correlation over random subsets ``S`` between ``Σ_{v∈S} a(v)`` and ``f_c(x) − f_c(x_S)``.
- Average sensitivity (Yeh et al., 2019, https://arxiv.org/abs/1901.09392): mean over noise samples
  of ``‖a − a'‖₂ / ‖a‖₂``.
- Effective complexity (Nguyen & Martínez, 2020, https://arxiv.org/abs/2007.07584): fraction of
  voxels with ``|a| / max|a| > θ``.
- Model parameter randomisation (Adebayo et al., 2018, https://arxiv.org/abs/1810.03292): Spearman
  correlation of ``|a|`` before and after re-initialising every weight of the model.
- Deletion / insertion curves (:func:`perturbation_curves`): voxels ranked by attribution are set to the
  baseline (deletion) or restored from ``x`` into the all-baseline input ``b`` (insertion) in steps;
  :func:`deletion_aopc` is the AOPC of Samek et al. (2017, https://arxiv.org/abs/1509.06321) and
  :func:`insertion_auc` the area under the insertion curve (Petsiuk et al., 2018,
  https://arxiv.org/abs/1806.07421), both of the score normalised by ``f_c(x) − f_c(b)``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from napari_agg2exp.attribution.target import SlidingWindowTarget
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel, report

__all__ = [
    "PAPER_SUBSET_SIZE",
    "normalise_by_max",
    "metric_seed",
    "clip_subset_size",
    "random_subsets",
    "uniform_noise",
    "score_drops",
    "faithfulness_correlation",
    "relative_change",
    "average_sensitivity",
    "effective_complexity",
    "randomise_network",
    "rank_correlation",
    "CURVE_KINDS",
    "curve_step_size",
    "curve_counts",
    "attribution_ranking",
    "PerturbationCurves",
    "perturbation_curves",
    "deletion_aopc",
    "insertion_auc",
]

#: Subset size of the faithfulness correlation in the paper (224², appendix B.2).
PAPER_SUBSET_SIZE = 224 * 224

#: The two perturbation curves; a clipped step leaves at least ``MIN_CURVE_STEPS`` steps.
CURVE_KINDS = ("deletion", "insertion")
MIN_CURVE_STEPS = 10

# stream tags of metric_seed: one independent random stream per kind of perturbation
_SUBSETS, _NOISE, _WEIGHTS = 1, 2, 3


def _to_numpy(maps) -> np.ndarray:
    if hasattr(maps, "detach"):
        maps = maps.detach().cpu().numpy()
    a = np.asarray(maps)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"attribution maps must be (K, X, Y, Z) or (X, Y, Z), got shape {a.shape}")
    return a


def normalise_by_max(maps: np.ndarray | torch.Tensor) -> np.ndarray:
    """Divide each class map by its ``max |a|`` (all-zero maps stay zero).

    Args:
        maps: (K, X, Y, Z) or (X, Y, Z) attributions.

    Returns:
        (K, X, Y, Z) float32 array with values in [-1, 1].
    """
    a = _to_numpy(maps).astype(np.float32, copy=True)
    m = np.abs(a.reshape(len(a), -1)).max(axis=1)
    m[m == 0] = 1.0
    a /= m[:, None, None, None]
    return a


def metric_seed(seed: int, shape: Sequence[int], stream: int) -> np.random.SeedSequence:
    """The random stream of one kind of perturbation, from the seed and the volume shape only.

    Independent of the attribution method, so every method gets the same subsets / noise / weights.
    """
    return np.random.SeedSequence([int(seed), *(int(s) for s in shape), int(stream)])


def clip_subset_size(subset_size: int, n_voxels: int, *, warn: bool = True) -> int:
    """The usable subset size: at most a quarter of the volume's voxels.

    The paper's 224² voxels assume a large CT (about 6 % of a 96³ model grid). On a small volume the
    subsets must still differ from each other and leave most of the input intact, so a larger size is
    clipped to ``n_voxels // 4`` with a warning.
    """
    subset_size = int(subset_size)
    if subset_size < 1:
        raise Agg2ExpError(f"subset size must be a positive number of voxels, got {subset_size}")
    cap = max(1, int(n_voxels) // 4)
    if subset_size > cap:
        if warn:
            warnings.warn(
                f"faithfulness subset size {subset_size} is too large for a volume of {n_voxels} voxels on the "
                f"model grid; using {cap} voxels (a quarter of the volume) instead",
                stacklevel=2,
            )
        return cap
    return subset_size


def random_subsets(shape: Sequence[int], n_subsets: int = 100, subset_size: int = PAPER_SUBSET_SIZE, seed: int = 0,
                   *, warn: bool = True) -> np.ndarray:
    """Scattered random voxel subsets of a volume (without replacement within a subset).

    Args:
        shape: (X, Y, Z) of the model-grid volume.
        n_subsets: number of subsets (paper: 100).
        subset_size: voxels per subset (paper: 224² = 50,176), clipped by :func:`clip_subset_size`.
        seed: metric seed; the subsets depend only on ``seed`` and ``shape``.

    Returns:
        (n_subsets, size) int64 flat voxel indices (C order).
    """
    if int(n_subsets) < 2:
        raise Agg2ExpError(f"faithfulness needs at least 2 subsets for a correlation, got {n_subsets}")
    n_vox = int(np.prod([int(s) for s in shape]))
    size = clip_subset_size(subset_size, n_vox, warn=warn)
    rng = np.random.default_rng(metric_seed(seed, shape, _SUBSETS))
    return np.stack([rng.choice(n_vox, size, replace=False) for _ in range(int(n_subsets))]).astype(np.int64)


def uniform_noise(shape: Sequence[int], n_samples: int = 3, bound: float = 0.1, seed: int = 0) -> np.ndarray:
    """Uniform input noise in ``[−bound, bound]`` (preprocessed units) for the sensitivity metric.

    Args:
        shape: (X, Y, Z) of the model-grid volume.
        n_samples: noise samples (paper: 3).
        bound: half-width of the noise (paper: 0.1).
        seed: metric seed; the noise depends only on ``seed`` and ``shape``.

    Returns:
        (n_samples, X, Y, Z) float32.
    """
    if int(n_samples) < 1:
        raise Agg2ExpError(f"sensitivity needs at least 1 noise sample, got {n_samples}")
    if not float(bound) > 0:
        raise Agg2ExpError(f"sensitivity noise bound must be positive, got {bound}")
    rng = np.random.default_rng(metric_seed(seed, shape, _NOISE))
    return rng.uniform(-float(bound), float(bound), (int(n_samples), *(int(s) for s in shape))).astype(np.float32)


def score_drops(forward: SlidingWindowTarget, inputs: torch.Tensor | np.ndarray, subsets: np.ndarray, *,
                baseline: float = 0.0, batch_size: int = 4, progress: ProgressCallback | None = None,
                cancel: CancelFlag | None = None) -> np.ndarray:
    """``f_c(x) − f_c(x_S)`` for every subset ``S`` and target class (one batched forward per subsets batch).

    The drops do not depend on the attribution method: compute them once per case and share them.

    Args:
        forward: a :class:`~napari_agg2exp.attribution.SlidingWindowTarget` (clean class masks fixed).
        inputs: (X, Y, Z) model-grid input (torch tensor or numpy).
        subsets: (n, m) flat voxel indices from :func:`random_subsets`.
        baseline: value the subset's voxels are replaced by (paper: 0).
        batch_size: perturbed volumes per forward.

    Returns:
        (n, K) float64 array.
    """
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs).float().to(forward.device)
    subs = torch.as_tensor(np.asarray(subsets), dtype=torch.long, device=x.device)
    n = subs.shape[0]
    bs = max(1, int(batch_size))
    f_clean = forward.scores(x[None], cancel=cancel)[0]
    drops = np.zeros((n, forward.num_targets))
    flat = x.reshape(-1)
    for b0 in range(0, n, bs):
        check_cancel(cancel)
        idx = subs[b0 : b0 + bs]
        batch = flat[None].repeat(len(idx), 1)
        batch.scatter_(1, idx, float(baseline))
        f = forward.scores(batch.reshape((len(idx),) + tuple(x.shape)), cancel=cancel)
        drops[b0 : b0 + len(idx)] = (f_clean[None] - f).double().cpu().numpy()
        report(progress, min(n, b0 + bs), n, "faithfulness perturbations")
    return drops


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    u = np.asarray(u, float) - np.mean(u)
    v = np.asarray(v, float) - np.mean(v)
    den = np.sqrt((u * u).sum() * (v * v).sum())
    return float((u * v).sum() / den) if den > 0 else float("nan")


def faithfulness_correlation(maps: np.ndarray | torch.Tensor, subsets: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """Pearson correlation between the subsets' attribution sums and the score drops, per class.

    Args:
        maps: (K, X, Y, Z) attributions (normalised by ``max |a|`` here).
        subsets: (n, m) flat voxel indices (the ones ``drops`` were computed with).
        drops: (n, K) ``f_c(x) − f_c(x_S)`` from :func:`score_drops`.

    Returns:
        (K,) correlations in [-1, 1]; NaN for an all-zero map or constant drops.
    """
    a = normalise_by_max(maps)
    drops = np.asarray(drops, float)
    if drops.shape != (len(subsets), len(a)):
        raise ValueError(f"drops must be (n_subsets, K) = {(len(subsets), len(a))}, got {drops.shape}")
    out = np.full(len(a), np.nan)
    for k in range(len(a)):
        sums = a[k].reshape(-1)[subsets].astype(np.float64).sum(axis=1)
        out[k] = _pearson(sums, drops[:, k])
    return out


def relative_change(maps: np.ndarray | torch.Tensor, maps_perturbed: np.ndarray | torch.Tensor) -> np.ndarray:
    """``‖â − â'‖₂ / ‖â‖₂`` per class, both maps normalised by their own ``max |a|`` (NaN for a zero map)."""
    a = normalise_by_max(maps).reshape(len(_to_numpy(maps)), -1).astype(np.float64)
    b = normalise_by_max(maps_perturbed).reshape(a.shape).astype(np.float64)
    den = np.linalg.norm(a, axis=1)
    num = np.linalg.norm(a - b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def average_sensitivity(maps: np.ndarray | torch.Tensor, attribution_fn: Callable[..., Any],
                        inputs: torch.Tensor | np.ndarray, noise: np.ndarray, *,
                        progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> np.ndarray:
    """Average sensitivity: mean over noise samples of ``‖â − â(x + ε)‖₂ / ‖â‖₂``, per class.

    Args:
        maps: (K, X, Y, Z) attributions of the clean input.
        attribution_fn: recomputes the maps for a perturbed input, ``attribution_fn(x', progress=, cancel=)
            -> (K, X, Y, Z)``, with the clean class masks fixed (see
            :meth:`~napari_agg2exp.attribution.Explainer.attribute`).
        inputs: (X, Y, Z) clean model-grid input.
        noise: (n, X, Y, Z) noise samples from :func:`uniform_noise`.

    Returns:
        (K,) mean relative L2 changes (0 = the explanation does not move).
    """
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs).float()
    noise = np.asarray(noise)
    if noise.ndim != 4 or tuple(noise.shape[1:]) != tuple(x.shape):
        raise ValueError(f"noise must be (n, *{tuple(x.shape)}), got {noise.shape}")
    changes = []
    for i, eps in enumerate(noise):
        check_cancel(cancel)
        xp = x + torch.from_numpy(np.ascontiguousarray(eps)).to(x.device)
        ap = attribution_fn(xp, progress=SubProgress(progress, i, 1, len(noise)), cancel=cancel)
        changes.append(relative_change(maps, ap))
    report(progress, len(noise), len(noise), "sensitivity")
    return np.mean(changes, axis=0)


def effective_complexity(maps: np.ndarray | torch.Tensor, threshold: float = 0.1) -> np.ndarray:
    """Fraction of voxels with ``|a| / max|a| > threshold``, per class (NaN for an all-zero map).

    Quantus' ``EffectiveComplexity`` returns the count; this is the count divided by the number of voxels.
    """
    if not 0 <= float(threshold) < 1:
        raise Agg2ExpError(f"complexity threshold must be in [0, 1), got {threshold}")
    raw = _to_numpy(maps)
    a = np.abs(normalise_by_max(raw)).reshape(len(raw), -1)
    frac = (a > float(threshold)).mean(axis=1)
    zero = np.abs(raw.reshape(len(raw), -1)).max(axis=1) == 0
    return np.where(zero, np.nan, frac)


def randomise_network(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``network`` with every parameter re-initialised; the original is not touched.

    Modules with ``reset_parameters`` (convolutions, linear and norm layers) re-draw their own weights
    with their default initialisation; any other parameter (e.g. position-bias tables) is re-drawn from
    a normal distribution with the original tensor's standard deviation. Norm layers' running statistics
    are reset with them. The copy is in eval mode with gradients off.

    Args:
        network: a torch module.
        seed: seed of the new weights (a private torch RNG state; the global one is restored).

    Returns:
        The randomised copy.
    """
    try:
        net = copy.deepcopy(network)
    except Exception as e:  # pragma: no cover - exotic modules
        raise Agg2ExpError(f"cannot copy the model to randomise its weights ({type(e).__name__}: {e})") from e
    covered: set[int] = set()
    devices = []
    if torch.cuda.is_available():
        devices = sorted({p.device.index or 0 for p in net.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(int(np.random.SeedSequence([int(seed), _WEIGHTS]).generate_state(1)[0]))
        for m in net.modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                try:
                    reset()
                except Exception:  # noqa: BLE001 - a module whose reset needs arguments: fall back below
                    continue
                covered.update(id(p) for p in m.parameters(recurse=False))
        for p in net.parameters():
            if id(p) not in covered:
                std = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 1.0)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def rank_correlation(maps: np.ndarray | torch.Tensor, maps_other: np.ndarray | torch.Tensor) -> np.ndarray:
    """Spearman correlation of ``|a|`` between two sets of maps, per class (NaN where one is constant)."""
    a = np.abs(_to_numpy(maps)).reshape(len(_to_numpy(maps)), -1)
    b = np.abs(_to_numpy(maps_other)).reshape(a.shape)
    out = np.full(len(a), np.nan)
    for k in range(len(a)):
        if np.ptp(a[k]) == 0 or np.ptp(b[k]) == 0:
            continue
        out[k] = _pearson(rankdata(a[k]), rankdata(b[k]))
    return out


def curve_step_size(step: float, n_voxels: int, *, warn: bool = True) -> int:
    """Voxels per step of the insertion / deletion curves.

    Args:
        step: a number of voxels (default 224², as the faithfulness subsets) or a fraction of the volume,
            a float in (0, 1) (e.g. 0.05: 5 % steps, rounded up). A voxel count above ``n_voxels // 10`` is
            clipped to that with a warning, so a small volume still gets a curve of 10 steps or more.
        n_voxels: voxels of the model-grid volume.
    """
    n = int(n_voxels)
    if isinstance(step, (float, np.floating)) and 0 < float(step) < 1:
        return max(1, int(np.ceil(float(step) * n)))
    if isinstance(step, bool) or not float(step).is_integer() or int(step) < 1:
        raise Agg2ExpError(f"curve step must be a number of voxels (>= 1) or a fraction in (0, 1), got {step}")
    step, cap = int(step), max(1, n // MIN_CURVE_STEPS)
    if step > cap:
        if warn:
            warnings.warn(f"curve step {step} is too large for a volume of {n} voxels on the model grid; using "
                          f"{cap} voxels ({MIN_CURVE_STEPS} steps) instead", stacklevel=2)
        return cap
    return step


def curve_counts(n_voxels: int, step: int, max_steps: int | None = None) -> np.ndarray:
    """(L + 1,) voxels perturbed after step ``k = 0..L``: ``min(k·step, N)``, ``L = min(⌈N / step⌉, max_steps)``."""
    n, step = int(n_voxels), int(step)
    n_steps = -(-n // step)
    if max_steps is not None:
        if int(max_steps) < 1:
            raise Agg2ExpError(f"curve steps must be at least 1, got {max_steps}")
        n_steps = min(n_steps, int(max_steps))
    return np.minimum(np.arange(n_steps + 1, dtype=np.int64) * step, n)


def attribution_ranking(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """Flat voxel indices of one map, most important first: descending signed attribution, ties by index.

    Normalising by ``max |a|`` does not change the order; the raw values are ranked (no rounding ties).
    """
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return np.argsort(-a.reshape(-1).astype(np.float64), kind="stable")


@dataclass
class PerturbationCurves:
    """Deletion or insertion curves of K classes, from :func:`perturbation_curves`. Attributes:
        kind: ``deletion`` or ``insertion``.
        counts: (L + 1,) voxels perturbed after each step (``counts[0] = 0``).
        scores: (K, L + 1) ``f_c`` after each step (rows of all-zero maps are NaN).
        clean: (K,) ``f_c(x)``.
        baseline: (K,) ``f_c(b)``, every voxel at the baseline value.
        n_voxels: voxels of the volume.
    """

    kind: str
    counts: np.ndarray
    scores: np.ndarray
    clean: np.ndarray
    baseline: np.ndarray
    n_voxels: int

    @property
    def fractions(self) -> np.ndarray:
        """(L + 1,) fraction ``φ_k`` of the volume perturbed after each step."""
        return self.counts / float(self.n_voxels)

    def normalised(self) -> np.ndarray:
        """(K, L + 1) ``(f_c(x_k) − f_c(b)) / (f_c(x) − f_c(b))``: 1 = clean score, 0 = all-baseline score.

        NaN where ``f_c(x) = f_c(b)`` to float32 precision (nothing to normalise by).
        """
        den = np.asarray(self.clean, float) - np.asarray(self.baseline, float)
        flat = np.abs(den) <= 1e-6 * np.maximum(np.abs(self.clean), np.abs(self.baseline))
        den = np.where(flat, np.nan, den)
        return (np.asarray(self.scores, float) - np.asarray(self.baseline, float)[:, None]) / den[:, None]


def perturbation_curves(forward: SlidingWindowTarget, inputs: torch.Tensor | np.ndarray,
                        maps: np.ndarray | torch.Tensor, kind: str = "deletion", *,
                        step: float = PAPER_SUBSET_SIZE, max_steps: int | None = None, baseline: float = 0.0,
                        batch_size: int = 4, warn: bool = True, progress: ProgressCallback | None = None,
                        cancel: CancelFlag | None = None) -> PerturbationCurves:
    """Deletion or insertion curves: ``f_c`` as ranked voxels are removed from / inserted into the input.

    Class ``c``'s voxels are ranked by :func:`attribution_ranking` of its map. Deletion: after step ``k`` the
    first ``min(k·s, N)`` ranked voxels of ``x`` are set to ``baseline``; insertion: the input is all
    ``baseline`` except those voxels, which have their values in ``x``. ``f_c`` keeps the clean mask; only
    the windows that meet ``M_c`` are run, ``batch_size`` perturbed volumes per forward.

    Args:
        forward: a :class:`~napari_agg2exp.attribution.SlidingWindowTarget` (clean class masks fixed).
        inputs: (X, Y, Z) model-grid input.
        maps: (K, X, Y, Z) attributions of ``forward``'s K classes.
        kind: ``deletion`` or ``insertion``.
        step: voxels per step or a fraction of the volume, see :func:`curve_step_size` (default 224²).
        max_steps: at most this many steps (default: until the whole volume is perturbed).
        baseline: the value of removed voxels (paper: 0).
        batch_size: perturbed volumes per forward.

    Returns:
        :class:`PerturbationCurves` with the raw scores.
    """
    if kind not in CURVE_KINDS:
        raise Agg2ExpError(f"curve kind must be one of {', '.join(CURVE_KINDS)}, got {kind!r}")
    x = torch.as_tensor(inputs).float().to(forward.device)
    a = _to_numpy(maps)
    if a.shape != (forward.num_targets,) + tuple(x.shape):
        raise ValueError(f"maps must be (K, *{tuple(x.shape)}) with K = {forward.num_targets}, got {a.shape}")
    n = x.numel()
    counts = curve_counts(n, curve_step_size(step, n, warn=warn), max_steps)
    b = torch.full_like(x, float(baseline))
    clean, base = forward.scores(torch.stack([x, b]), cancel=cancel).double().cpu().numpy()
    start, end = (clean, base) if kind == "deletion" else (base, clean)
    src, dst = (x.reshape(1, -1), b.reshape(1, -1)) if kind == "deletion" else (b.reshape(1, -1), x.reshape(1, -1))
    scores = np.full((len(a), len(counts)), np.nan)
    todo = np.flatnonzero((counts > 0) & (counts < n))
    bs = max(1, int(batch_size))
    total, done = len(a) * len(todo), 0
    for k in range(len(a)):
        if not np.any(a[k]):  # an all-zero map ranks nothing: NaN, as the other metrics
            continue
        scores[k, counts == 0], scores[k, counts == n] = start[k], end[k]
        pos = torch.empty(n, dtype=torch.long, device=x.device)
        pos[torch.from_numpy(attribution_ranking(a[k])).to(x.device)] = torch.arange(n, device=x.device)
        fwd_k = forward.subset([forward.classes[k]])
        for b0 in range(0, len(todo), bs):
            check_cancel(cancel)
            j = todo[b0 : b0 + bs]
            moved = pos[None] < torch.as_tensor(counts[j], device=x.device)[:, None]
            batch = torch.where(moved, dst, src).reshape((len(j),) + tuple(x.shape))
            scores[k, j] = fwd_k.scores(batch, cancel=cancel)[:, 0].double().cpu().numpy()
            done += len(j)
            report(progress, done, total, f"{kind} curve")
    return PerturbationCurves(kind, counts, scores, clean, base, n)


def deletion_aopc(curves: PerturbationCurves) -> np.ndarray:
    """Normalised AOPC of deletion curves, per class: ``(1/L) Σ_{k=1..L} (f_c(x) − f_c(x_k)) / (f_c(x) − f_c(b))``.

    Samek et al. (2017)'s area over the perturbation curve divided by the full drop to the all-baseline input,
    so classes and scans compare; higher is better (≈ 1: the first step removes the whole score).
    """
    if curves.kind != "deletion":
        raise ValueError(f"deletion_aopc needs deletion curves, got {curves.kind} curves")
    return np.mean(1.0 - curves.normalised()[:, 1:], axis=1)


def insertion_auc(curves: PerturbationCurves) -> np.ndarray:
    """Normalised area under insertion curves, per class: ``(1/φ_L) ∫_0^{φ_L} s(φ) dφ`` (trapezoid rule).

    ``s`` is the normalised score (:meth:`PerturbationCurves.normalised`), ``φ_k`` the inserted fraction of
    the volume; higher is better (≈ 1: the first voxels inserted already restore the score).
    """
    if curves.kind != "insertion":
        raise ValueError(f"insertion_auc needs insertion curves, got {curves.kind} curves")
    s, f = curves.normalised(), curves.fractions
    return ((s[:, 1:] + s[:, :-1]) * 0.5 * np.diff(f)).sum(axis=1) / f[-1]
