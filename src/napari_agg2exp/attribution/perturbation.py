"""captum's perturbation methods through the sliding window: occlusion, feature ablation, Shapley sampling.

Each class wraps captum's (``Occlusion``, ``FeatureAblation``, ``ShapleyValueSampling``) with the
interface of :mod:`napari_agg2exp.attribution.base`. captum runs on a small *presence* input, one value
per feature (1 = the clean voxels, 0 = the baseline), and our forward turns a presence vector into the
perturbed volume ``x' = b + z[feature] · (x − b)`` and its class scores:

- all classes from one set of forwards: the forward returns (B, K) and captum (target ``None``) keeps
  one attribution per output, so each perturbed input is scored once for every class;
- only the windows a perturbation touches run the network (:class:`~napari_agg2exp.attribution.target.WindowCache`):
  the clean per-window contributions are computed once, and a window is reused when no feature
  meeting it differs from a reference state (the clean input, the all-removed input, or the previous
  perturbation: Shapley sampling adds one feature per step);
- occlusion on a grid of cells of ``gcd(window, stride)`` voxels per axis is captum's voxel-grid occlusion
  exactly (same patches, same clipping at the border, same per-voxel average), with captum's work and
  memory divided by the cell volume.

Feature maps follow KernelSHAP's conventions: ``spread="even"`` spreads a feature's value over its voxels
(the region sum is the value), ``"broadcast"`` puts the full value on each voxel (captum's).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import Occlusion as CaptumOcclusion
from captum.attr import ShapleyValueSampling as CaptumShapleyValueSampling

from napari_agg2exp.attribution.base import Attribution, TargetType, as_volume
from napari_agg2exp.attribution.kernel_shap import SPREADS
from napari_agg2exp.attribution.target import WindowCache
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = ["FeatureAblation", "FeatureForward", "Occlusion", "PerturbationDetails", "ShapleyValueSampling",
           "occlusion_shape"]


def occlusion_shape(value: int | Sequence[int], what: str = "sliding_window_shapes") -> tuple[int, int, int]:
    """``N`` or ``(X, Y, Z)`` (a one-item sequence counts as ``N``) -> three positive ints."""
    try:
        vals = [value] if np.isscalar(value) else list(value)
        if len(vals) == 1:
            vals = vals * 3
        ok = len(vals) == 3 and all(not isinstance(v, (bool, str)) and float(v) == int(v) >= 1 for v in vals)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise Agg2ExpError(f"{what} must be 1 or 3 positive integers, got {value!r}")
    return tuple(int(v) for v in vals)


@dataclass
class PerturbationDetails:
    """What a perturbation run found besides the maps (``return_details=True``).

    Attributes:
        values: (M, K) value per feature and class (feature ablation, Shapley sampling); ``None`` for occlusion.
        n_features: features (occlusion: patch positions).
        n_forwards: inputs scored (captum's reference input included).
        network_windows: windows run through the network (the clean ones included).
        full_windows: windows the same forwards would run without the cache.
    """

    values: np.ndarray | None
    n_features: int
    n_forwards: int
    network_windows: int
    full_windows: int

    def summary(self) -> dict[str, int]:
        """JSON-ready counts (``attribution_info.json``)."""
        return {"n_features": self.n_features, "n_forwards": self.n_forwards,
                "network_windows": self.network_windows, "full_windows": self.full_windows}


class FeatureForward:
    """captum's forward on presences: (B, M) or (B, *grid) values in [0, 1] -> (B, K) class scores.

    Feature ``m`` covers the voxels where ``feature_index == m``; the scored volume is ``x`` where the
    presence is 1, the baseline where it is 0 (``b + z · (x − b)`` in between).

    Args:
        cache: the window cache of the clean input ``x``.
        feature_index: (X, Y, Z) integer tensor, values 0..M-1.
        n_features: M.
        baselines: the removed value, a number or an (X, Y, Z) tensor.
        expected_calls: forward calls expected (progress); ``progress``, ``cancel`` as usual.
    """

    def __init__(self, cache: WindowCache, feature_index: torch.Tensor, n_features: int,
                 baselines: float | torch.Tensor = 0.0, *, expected_calls: int = 0,
                 progress: ProgressCallback | None = None, cancel: CancelFlag | None = None):
        self.cache = cache
        dev = cache.target.device
        self.n_features = int(n_features)
        self.index = feature_index.to(dev).to(torch.int32 if self.n_features < 2**31 else torch.int64)
        b = torch.as_tensor(baselines, dtype=torch.float32, device=dev)
        self.baselines = b if b.ndim == 0 else b.reshape(cache.clean.shape)
        self.expected_calls, self.progress, self.cancel = expected_calls, progress, cancel
        self.calls = 0
        windows = cache.target.windows
        # incidence: feature m meets window i
        self.incidence = torch.zeros((self.n_features, len(windows)), dtype=torch.float32, device=dev)
        for i in cache.active:
            hit = torch.bincount(self.index[windows[i].slices].flatten().long(), minlength=self.n_features) > 0
            self.incidence[:, i] = hit.float()
        self._refs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (presence, (n_w, K) contributions)

    def _meets(self, differs: torch.Tensor) -> torch.Tensor:
        """(n_windows,) bool: windows meeting a feature where ``differs`` (M,) is True."""
        return (differs.float() @ self.incidence) > 0

    def _window_input(self, z: torch.Tensor, i: int) -> torch.Tensor:
        sl = self.cache.target.windows[i].slices
        x = self.cache.clean[sl]
        b = self.baselines if self.baselines.ndim == 0 else self.baselines[sl]
        zw = z[self.index[sl].long()]
        return torch.where(zw == 1, x, b + zw * (x - b))

    def __call__(self, presence: torch.Tensor) -> torch.Tensor:
        check_cancel(self.cancel)
        cache = self.cache
        z_all = presence.to(cache.target.device).float().reshape(-1, self.n_features)
        B, n_w = z_all.shape[0], cache.num_windows
        rows: list[list[Any]] = []  # per input: per window a (K,) tensor or an index into `results`
        results: list[torch.Tensor | None] = []
        pending: list[tuple[int, int, torch.Tensor]] = []  # (result index, window, window input)

        def flush() -> None:
            vals = cache.window_contributions([(i, xw) for _, i, xw in pending], cancel=self.cancel)
            for (k, _, _), v in zip(pending, vals):
                results[k] = v
            pending.clear()

        for b in range(B):
            z = z_all[b].clone()
            refs = [(self._meets(z != zr), row) for zr, row in self._refs.values()]
            clean_meets = self._meets(z != 1)
            row: list[Any] = [None] * n_w
            for i in cache.active:
                if not clean_meets[i]:
                    row[i] = cache.contributions[i]
                    continue
                for meets, ref_row in refs:
                    if not meets[i]:
                        row[i] = ref_row[i]
                        break
                else:
                    row[i] = len(results)
                    results.append(None)
                    pending.append((row[i], i, self._window_input(z, i)))
                    if len(pending) >= cache.target.sw_batch_size:
                        flush()
            rows.append(row)
            self._refs["previous"] = (z, row)  # entries resolved below
            if not bool(z.any()):
                self._refs["removed"] = (z, row)
        if pending:
            flush()
        ran = sum(isinstance(v, int) for row in rows for v in row)
        cache.reused_windows += B * len(cache.active) - ran
        cache.calls += B
        zeros = torch.zeros(cache.target.num_targets, device=cache.target.device)
        per = torch.stack([torch.stack([zeros if v is None else (results[v] if isinstance(v, int) else v)
                                        for v in row]) for row in rows])  # (B, n_w, K)
        where = {id(row): b for b, row in enumerate(rows)}
        for name, (z, row) in list(self._refs.items()):  # references set in this call: their resolved rows
            if isinstance(row, list):
                self._refs[name] = (z, per[where[id(row)]])
        self.calls += 1
        report(self.progress, self.calls, max(self.calls, self.expected_calls), "perturbations")
        return per.sum(1)


def _feature_table(feature_mask: torch.Tensor | np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(feature ids, (X, Y, Z) index 0..M-1) of a label volume shaped like the input."""
    fm = np.asarray(feature_mask.cpu() if isinstance(feature_mask, torch.Tensor) else feature_mask)
    while fm.ndim > 3 and fm.shape[0] == 1:
        fm = fm[0]
    if fm.shape != tuple(shape):
        raise Agg2ExpError(f"feature mask shape {fm.shape} differs from the input's {tuple(shape)}")
    ids, inverse = np.unique(fm, return_inverse=True)
    return ids, inverse.reshape(fm.shape)


def _spread(values: torch.Tensor, index: torch.Tensor, spread: str) -> torch.Tensor:
    """(K, M) feature values -> (K, X, Y, Z) maps, ``even`` (divided by the feature's size) or ``broadcast``."""
    idx = index.long()
    if spread == "even":
        sizes = torch.bincount(idx.flatten(), minlength=values.shape[1]).clamp_min(1).to(values.dtype)
        values = values / sizes[None]
    return values[:, idx]


class _PerturbationAttribution(Attribution):
    """Shared set-up: the restricted forward, its window cache and the presence forward."""

    def _setup(self, inputs, target, index: torch.Tensor, n_features: int, baselines, expected_calls: int,
               progress, cancel) -> tuple[FeatureForward, bool]:
        fwd, single = self._forward_for(target)
        x = as_volume(inputs).to(fwd.device)
        cache = fwd.window_cache(x, cancel=cancel)
        return FeatureForward(cache, index, n_features, baselines, expected_calls=expected_calls, progress=progress,
                              cancel=cancel), single

    @staticmethod
    def _details(ff: FeatureForward, values: np.ndarray | None, n_features: int) -> PerturbationDetails:
        c = ff.cache
        return PerturbationDetails(values, int(n_features), int(c.calls), int(c.network_windows),
                                   int(c.calls * len(c.active)))


class Occlusion(_PerturbationAttribution):
    """Occlusion (Zeiler & Fergus, 2014, https://arxiv.org/abs/1311.2901; MONAI's ``OcclusionSensitivity``).

    A patch slides over the model grid; the attribution of a voxel is the mean of ``f_c(x) − f_c(x_occluded)``
    over the patch positions covering it (captum's ``Occlusion``: positions ``k · stride`` per axis, the last
    one clipped at the border).

    Examples::

        >>> maps = Occlusion(fwd).attribute(x, sliding_window_shapes=16, strides=8)   # (K, X, Y, Z)
    """

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *,
                  sliding_window_shapes: int | Sequence[int] = 16, strides: int | Sequence[int] | None = None,
                  baselines: float | torch.Tensor = 0.0, perturbations_per_eval: int = 4,
                  return_details: bool = False, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> torch.Tensor | tuple[torch.Tensor, PerturbationDetails]:
        """Occlusion maps of the class scores.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            sliding_window_shapes: patch size, 1 or 3 ints (clipped to the volume). Default: 16.
            strides: patch step, 1 or 3 ints, at most the patch. Default: half the patch.
            baselines: value inside the patch, a number or a volume like ``inputs``. Default: 0.
            perturbations_per_eval: patches per forward call. Default: 4.
            return_details: also return :class:`PerturbationDetails`.
            progress, cancel: progress callback and cancel flag.

        Returns:
            Maps shaped like ``inputs`` (one class id) or ``(K,) + inputs.shape``; with ``return_details``
            also the details.
        """
        shape = tuple(as_volume(inputs).shape)
        ws = tuple(min(w, n) for w, n in zip(occlusion_shape(sliding_window_shapes), shape))
        st = (tuple(max(1, w // 2) for w in ws) if strides is None else occlusion_shape(strides, "strides"))
        if any(s > w for s, w, n in zip(st, ws, shape) if w < n):
            raise Agg2ExpError(f"occlusion strides {st} must not exceed the patch {ws}")
        g = tuple(math.gcd(w, s) for w, s in zip(ws, st))
        grid = tuple(-(-n // c) for n, c in zip(shape, g))  # cells of g voxels (the last one may be shorter)
        cells = [torch.arange(n) // c for n, c in zip(shape, g)]
        index = (cells[0][:, None, None] * grid[1] + cells[1][None, :, None]) * grid[2] + cells[2][None, None, :]
        positions = int(np.prod([-(-(n - w) // s) + 1 for n, w, s in zip(shape, ws, st)]))
        ppe = max(1, int(perturbations_per_eval))
        ff, single = self._setup(inputs, target, index, int(np.prod(grid)), baselines, 1 + -(-positions // ppe),
                                 progress, cancel)
        ones = torch.ones((1,) + grid, device=ff.cache.target.device)
        with torch.no_grad():
            attr = CaptumOcclusion(ff).attribute(
                ones, sliding_window_shapes=tuple(w // c for w, c in zip(ws, g)),
                strides=tuple(s // c for s, c in zip(st, g)), baselines=0.0, perturbations_per_eval=ppe)
        maps = attr.reshape(attr.shape[0], -1).float()[:, ff.index.long()]
        out = self._shaped(maps, inputs, single)
        return (out, self._details(ff, None, positions)) if return_details else out


class _GroupAttribution(_PerturbationAttribution):
    """A method over a partition of the voxels into features (a label volume)."""

    def _run(self, captum_cls, inputs, target, feature_mask, baselines, perturbations_per_eval: int, spread: str,
             return_input_shape: bool, return_details: bool, calls_per_feature: int, progress, cancel,
             configure=None, **kwargs):
        spread = look_up_option(spread, SPREADS, what="spread")
        x = as_volume(inputs)
        ids, inverse = _feature_table(feature_mask, tuple(x.shape))
        M = len(ids)
        ppe = max(1, int(perturbations_per_eval))
        ff, single = self._setup(inputs, target, torch.as_tensor(inverse), M, baselines,
                                 1 + calls_per_feature * -(-M // ppe), progress, cancel)
        method = captum_cls(ff)
        if configure is not None:
            configure(method)
        with torch.no_grad():
            values = method.attribute(torch.ones((1, M), device=ff.cache.target.device), baselines=0.0,
                                      perturbations_per_eval=ppe, **kwargs)
        values = values.reshape(-1, M).float()  # (K, M)
        if return_input_shape:
            out = self._shaped(_spread(values, ff.index, spread), inputs, single)
        else:
            out = values[0] if single else values
        if not return_details:
            return out
        return out, self._details(ff, values.T.cpu().numpy().astype(float), M)


class FeatureAblation(_GroupAttribution):
    """Feature ablation (captum's ``FeatureAblation``): ``f_c(x) − f_c(x with feature m removed)`` per feature.

    Examples::

        >>> maps = FeatureAblation(fwd).attribute(x, feature_mask=cube_feature_mask(x.shape, 8))
        >>> values = FeatureAblation(fwd).attribute(x, feature_mask=regions, return_input_shape=False)  # (K, M)
    """

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float | torch.Tensor = 0.0,
                  perturbations_per_eval: int = 4, spread: str = "even", return_input_shape: bool = True,
                  return_details: bool = False, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> torch.Tensor | tuple[torch.Tensor, PerturbationDetails]:
        """Ablation values of the class scores over the features of ``feature_mask``.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            feature_mask: integer labels shaped like ``inputs``; each distinct value is one feature.
            baselines: value of a removed feature, a number or a volume like ``inputs``. Default: 0.
            perturbations_per_eval: features removed per forward call. Default: 4.
            spread: ``even`` (region sum = value) or ``broadcast`` (every voxel carries the value, captum's).
            return_input_shape: per-voxel maps (default); ``False``: the values per feature, (M,) or (K, M).
            return_details: also return :class:`PerturbationDetails`.
            progress, cancel: progress callback and cancel flag.
        """
        return self._run(CaptumFeatureAblation, inputs, target, feature_mask, baselines, perturbations_per_eval,
                         spread, return_input_shape, return_details, 1, progress, cancel)


class ShapleyValueSampling(_GroupAttribution):
    """Shapley value sampling (Castro et al., 2009; captum's ``ShapleyValueSampling``).

    ``n_samples`` random feature permutations; each adds the features to the baseline one by one and
    credits each with its marginal change. Exact on additive games; ``Σ_m φ_m = f(x) − f(baseline)``.
    Consecutive inputs differ by one feature, so each step runs only the windows that feature meets.

    Examples::

        >>> maps = ShapleyValueSampling(fwd).attribute(x, feature_mask=cube_feature_mask(x.shape, 4), n_samples=25)
    """

    def attribute(self, inputs: torch.Tensor | np.ndarray, target: TargetType = None, *,
                  feature_mask: torch.Tensor | np.ndarray, baselines: float | torch.Tensor = 0.0, n_samples: int = 25,
                  perturbations_per_eval: int = 4, spread: str = "even", seed: int = 0,
                  return_input_shape: bool = True, return_details: bool = False,
                  progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> torch.Tensor | tuple[torch.Tensor, PerturbationDetails]:
        """Sampled Shapley values of the class scores over the features of ``feature_mask``.

        Args:
            inputs: the model-grid volume, (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z).
            target: class id(s) among the forward's classes; ``None`` = all.
            feature_mask: integer labels shaped like ``inputs``; each distinct value is one feature.
            baselines: value of a removed feature, a number or a volume like ``inputs``. Default: 0.
            n_samples: feature permutations. Default: 25 (captum's).
            perturbations_per_eval: steps per forward call. Default: 4.
            spread: ``even`` (region sum = value) or ``broadcast`` (every voxel carries the value, captum's).
            seed: permutation seed.
            return_input_shape: per-voxel maps (default); ``False``: the values per feature, (M,) or (K, M).
            return_details: also return :class:`PerturbationDetails`.
            progress, cancel: progress callback and cancel flag.
        """
        if int(n_samples) < 1:
            raise Agg2ExpError(f"Shapley sampling needs at least 1 permutation, got {n_samples}")
        gen = torch.Generator().manual_seed(int(seed))

        def permutations(n_features: int, n: int) -> Iterator[list[int]]:
            for _ in range(n):
                yield torch.randperm(n_features, generator=gen).tolist()

        def configure(method: CaptumShapleyValueSampling) -> None:
            method.permutation_generator = permutations

        return self._run(CaptumShapleyValueSampling, inputs, target, feature_mask, baselines, perturbations_per_eval,
                         spread, return_input_shape, return_details, int(n_samples), progress, cancel,
                         configure=configure, n_samples=int(n_samples))
