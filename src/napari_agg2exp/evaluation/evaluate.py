"""Explanation quality of several attribution methods on one scan: :func:`evaluate_case` (SPEC §6).

One segmentation, one set of random voxel subsets, one set of noise samples and one randomised copy
of the network per case, shared by every method -- so the methods are compared on equal terms. The
score drops of the faithfulness correlation do not depend on the method and are computed once.
Result: a long table ``case,method,target,metric,value``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.evaluation.metrics import (
    PAPER_SUBSET_SIZE,
    average_sensitivity,
    effective_complexity,
    faithfulness_correlation,
    randomise_network,
    random_subsets,
    rank_correlation,
    score_drops,
    uniform_noise,
)

__all__ = [
    "METRICS",
    "MetricInfo",
    "TABLE_COLUMNS",
    "Perturbations",
    "make_perturbations",
    "look_up_metric",
    "look_up_methods",
    "evaluate_case",
    "summarise",
    "summary_markdown",
]

TABLE_COLUMNS = ["case", "method", "target", "metric", "value"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    title: str
    better: str  # "higher" or "lower"
    doc_url: str


#: Registry: metric name -> title, direction, reference.
METRICS: dict[str, MetricInfo] = {
    "faithfulness": MetricInfo("faithfulness", "Faithfulness correlation", "higher", "https://arxiv.org/abs/2005.00631"),
    "sensitivity": MetricInfo("sensitivity", "Average sensitivity", "lower", "https://arxiv.org/abs/1901.09392"),
    "complexity": MetricInfo("complexity", "Effective complexity", "lower", "https://arxiv.org/abs/2007.07584"),
    "randomisation": MetricInfo("randomisation", "Randomisation ρ", "lower",
                                "https://arxiv.org/abs/1810.03292"),
}
_ALIASES = {"randomization": "randomisation", "faithfulness_correlation": "faithfulness",
            "average_sensitivity": "sensitivity", "avg_sensitivity": "sensitivity",
            "effective_complexity": "complexity", "mprt": "randomisation"}


def _names(items: Sequence[str] | str) -> list[str]:
    if isinstance(items, str):
        items = items.split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def look_up_metric(name: str) -> str:
    """The canonical metric name (British or American spelling); a typo gets a suggestion."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in METRICS:
        return key
    import difflib

    m = difflib.get_close_matches(key, list(METRICS) + list(_ALIASES), n=1, cutoff=0.3)
    hint = f" (did you mean {_ALIASES.get(m[0], m[0])!r}?)" if m else ""
    raise Agg2ExpError(f"unknown metric {name!r}; use one of {', '.join(METRICS)}{hint}")


def look_up_methods(methods: Sequence[str] | str) -> list[str]:
    """Validated, de-duplicated method names (order kept)."""
    from napari_agg2exp.attribution.explainer import _method

    out: list[str] = []
    for m in _names(methods):
        _method(m)
        if m not in out:
            out.append(m)
    if not out:
        raise Agg2ExpError("no attribution methods given -- e.g. vg,ig,sg,kernelshap-cubes,kernelshap-semantic")
    return out


def _look_up_metrics(metrics: Sequence[str] | str) -> list[str]:
    out: list[str] = []
    for m in _names(metrics):
        k = look_up_metric(m)
        if k not in out:
            out.append(k)
    if not out:
        raise Agg2ExpError(f"no metrics given -- use some of {', '.join(METRICS)}")
    return out


@dataclass
class Perturbations:
    """The random parts of the metrics for one model-grid shape (shared by every method).

    Attributes:
        subsets: (n_subsets, size) flat voxel indices of the faithfulness subsets.
        noise: (n_noise, X, Y, Z) float32 sensitivity noise.
        seed: the metric seed they were drawn from.
    """

    subsets: np.ndarray | None
    noise: np.ndarray | None
    seed: int = 0

    @property
    def subset_size(self) -> int | None:
        return None if self.subsets is None else int(self.subsets.shape[1])


def make_perturbations(shape: Sequence[int], *, n_subsets: int = 100, subset_size: int = PAPER_SUBSET_SIZE,
                       n_noise: int = 3, noise_bound: float = 0.1, seed: int = 0, subsets: bool = True,
                       noise: bool = True) -> Perturbations:
    """Draw the subsets and noise of one case from ``seed`` and the model-grid ``shape`` alone."""
    return Perturbations(
        random_subsets(shape, n_subsets, subset_size, seed) if subsets else None,
        uniform_noise(shape, n_noise, noise_bound, seed) if noise else None,
        int(seed),
    )


def _check_settings(n_subsets, subset_size, n_noise, noise_bound, threshold):
    if int(n_subsets) < 2:
        raise Agg2ExpError(f"--subsets must be at least 2 (a correlation needs several points), got {n_subsets}")
    if int(subset_size) < 1:
        raise Agg2ExpError(f"--subset-size must be a positive number of voxels, got {subset_size}")
    if int(n_noise) < 1:
        raise Agg2ExpError(f"--noise-samples must be at least 1, got {n_noise}")
    if not float(noise_bound) > 0:
        raise Agg2ExpError(f"--noise-bound must be positive, got {noise_bound}")
    if not 0 <= float(threshold) < 1:
        raise Agg2ExpError(f"--threshold must be in [0, 1), got {threshold}")


def evaluate_case(
    model,
    volume: Volume,
    methods: Sequence[str] | str = ("vg", "ig", "sg", "kernelshap-cubes", "kernelshap-semantic"),
    metrics: Sequence[str] | str = ("faithfulness", "sensitivity", "complexity", "randomisation"),
    targets: Sequence[str | int] | str | None = None,
    *,
    case: str | None = None,
    n_subsets: int = 100,
    subset_size: int = PAPER_SUBSET_SIZE,
    n_noise: int = 3,
    noise_bound: float = 0.1,
    threshold: float = 0.1,
    baseline: float = 0.0,
    seed: int = 0,
    method_params: dict[str, dict[str, Any]] | None = None,
    perturbations: Perturbations | None = None,
    window_size=None,
    overlap: float = 0.25,
    blend: str = "constant",
    batch_size: int = 4,
    batch_classes: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
):
    """Score attribution methods on one scan with the metrics of SPEC §6.

    Every metric works on the model grid with the sliding-window engine; ``f_c`` keeps the clean
    class mask ``M_c`` for every perturbed input. Attributions are normalised by ``max |a|`` per class.

    Args:
        model: a loaded :class:`~napari_agg2exp.models.loading.SegmentationModel`.
        volume: the scan.
        methods: attribution methods (names or a comma-separated string).
        metrics: ``faithfulness``, ``sensitivity``, ``complexity``, ``randomisation``.
        targets: class names or ids; ``None``/``"all"`` = every class present in the prediction.
            Requested classes absent from the prediction are skipped (listed in ``attrs["skipped"]``).
        case: case name in the table (default: the volume's name).
        n_subsets, subset_size: faithfulness subsets (paper: 100 of 224² voxels; the size is clipped to a
            quarter of the volume with a warning).
        n_noise, noise_bound: sensitivity noise samples, uniform in ``[−bound, bound]`` (paper: 3, 0.1).
        threshold: complexity threshold θ on ``|a| / max|a|`` (paper: 0.1).
        baseline: value of the faithfulness subsets' voxels after removal (paper: 0).
        seed: metric seed (subsets, noise, random weights); also the methods' seed unless
            ``method_params`` sets one.
        method_params: per-method parameters for
            :meth:`~napari_agg2exp.evaluation.attribution_function.AttributionFunction.create`, e.g. ``{"ig": {"n_steps": 10}}``.
        perturbations: explicit subsets / noise (default: drawn from ``seed`` and the model-grid shape).
        window_size, overlap, blend: sliding window (default: the model's window, 0.25, constant).
        batch_size: perturbed inputs per forward pass (faithfulness subsets, IG steps, SG samples,
            KernelSHAP coalitions).
        batch_classes: batched VJPs over classes (default: on CUDA).
        progress, cancel: progress callback and cancel flag.

    Returns:
        pandas DataFrame ``case,method,target,metric,value`` (one row per method × target × metric).
        ``attrs`` holds ``skipped`` (absent classes), ``subset_size`` (after clipping), ``seconds``
        (per method) and ``model_grid`` (shape).

    Raises:
        Agg2ExpError: unknown method / metric / class, bad settings, or no requested class predicted.
    """
    import pandas as pd
    import torch

    from napari_agg2exp.attribution.explainer import resolve_targets
    from napari_agg2exp.attribution.target import SlidingWindowTarget
    from napari_agg2exp.models.inference import SlidingWindow, check_window_options, sliding_window_logits
    from napari_agg2exp.data.preprocessing import preprocess
    from napari_agg2exp.evaluation.attribution_function import AttributionFunction

    methods = look_up_methods(methods)
    metrics = _look_up_metrics(metrics)
    _check_settings(n_subsets, subset_size, n_noise, noise_bound, threshold)
    method_params = dict(method_params or {})
    _allowed = {"n_steps", "n_samples", "noise_level", "stdev", "baseline", "cubes_per_axis", "feature_mask", "spread",
                "seed", "internal_batch_size", "sw_batch_size", "batch_classes"}
    for m, params in method_params.items():
        look_up_methods([m])
        bad = sorted(set(params) - _allowed)
        if bad:
            raise Agg2ExpError(f"unknown parameter(s) for {m}: {', '.join(bad)}; use {', '.join(sorted(_allowed))}")
    if isinstance(targets, str) and targets != "all":
        targets = _names(targets)
    for t in targets if isinstance(targets, (list, tuple)) else []:
        model.class_index(t)  # unknown names fail before any work
    case = case or volume.name or "case"

    ws = tuple(model.window_size) if window_size is None else (
        (int(window_size),) * 3 if np.isscalar(window_size) else tuple(window_size))
    ws, overlap, blend = check_window_options(ws, overlap, blend)
    bs = max(1, int(batch_size))

    # progress: segmentation, faithfulness drops, then per method: clean maps, noise samples, random model
    per_method = 1 + (n_noise if "sensitivity" in metrics else 0) + (1 if "randomisation" in metrics else 0)
    units = 1 + (2 if "faithfulness" in metrics else 0) + len(methods) * per_method
    total = 100 * units
    done = 0

    def sub(n_units: int = 1) -> SubProgress:
        nonlocal done
        s = SubProgress(progress, done, 100 * n_units, total)
        done += 100 * n_units
        return s

    net = model.network
    was_training = net.training
    grad_flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    try:
        pre = preprocess(volume, model.preprocessing, ws)
        x = torch.from_numpy(pre.array).to(model.device)
        plan = SlidingWindow.plan(pre.array.shape, ws, overlap, blend, device=model.device)
        logits = sliding_window_logits(net, x[None], plan, n_classes=model.num_classes, progress=sub(), cancel=cancel)
        labels_np = logits.argmax(0).to(torch.int16).cpu().numpy()
        del logits
        ids, skipped = resolve_targets(model, labels_np, targets)
        if skipped:
            warnings.warn(f"{case}: classes absent from the prediction are not evaluated: {', '.join(skipped)}",
                          stacklevel=2)
        if not ids:
            raise Agg2ExpError(f"{case}: none of the requested classes is present in the prediction "
                               f"(absent: {', '.join(skipped)}) -- nothing to evaluate")
        names = [model.class_names[c] for c in ids]
        shape = tuple(pre.array.shape)
        if perturbations is None:
            perturbations = make_perturbations(shape, n_subsets=n_subsets, subset_size=subset_size, n_noise=n_noise,
                                               noise_bound=noise_bound, seed=seed,
                                               subsets="faithfulness" in metrics, noise="sensitivity" in metrics)
        n_vox = int(np.prod(shape))
        if perturbations.subsets is not None and (perturbations.subsets.ndim != 2 or perturbations.subsets.max() >= n_vox):
            raise Agg2ExpError(f"{case}: the faithfulness subsets do not index the model grid {shape}")
        if perturbations.noise is not None and tuple(perturbations.noise.shape[1:]) != shape:
            raise Agg2ExpError(f"{case}: noise of shape {tuple(perturbations.noise.shape[1:])} does not fit the model "
                               f"grid {shape}")
        drops = None
        if "faithfulness" in metrics:
            if perturbations.subsets is None:
                raise Agg2ExpError("faithfulness needs voxel subsets in `perturbations`")
            fwd = SlidingWindowTarget(net, plan, labels_np, ids, sw_batch_size=bs)
            drops = score_drops(fwd, x, perturbations.subsets, baseline=baseline, batch_size=bs, progress=sub(2),
                                cancel=cancel)
        if "sensitivity" in metrics and perturbations.noise is None:
            raise Agg2ExpError("sensitivity needs noise samples in `perturbations`")
        random_net = randomise_network(net, seed) if "randomisation" in metrics else None

        for method in methods:
            check_cancel(cancel)
            t0 = time.perf_counter()
            params = {"seed": seed, "internal_batch_size": bs, "sw_batch_size": bs, "batch_classes": batch_classes,
                      **method_params.get(method, {})}
            fn = AttributionFunction.create(method, net, plan, labels_np, ids, x, **params)
            maps = fn(x, progress=sub(), cancel=cancel)
            values: dict[str, np.ndarray] = {}
            if "faithfulness" in metrics:
                values["faithfulness"] = faithfulness_correlation(maps, perturbations.subsets, drops)
            if "sensitivity" in metrics:
                values["sensitivity"] = average_sensitivity(maps, fn, x, perturbations.noise,
                                                            progress=sub(n_noise), cancel=cancel)
            if "complexity" in metrics:
                values["complexity"] = effective_complexity(maps, threshold)
            if "randomisation" in metrics:
                maps_random = fn.with_network(random_net)(x, progress=sub(), cancel=cancel)
                values["randomisation"] = rank_correlation(maps, maps_random)
                del maps_random
            seconds[method] = time.perf_counter() - t0
            for metric in metrics:
                for name, v in zip(names, values[metric]):
                    rows.append({"case": case, "method": method, "target": name, "metric": metric, "value": float(v)})
            del maps
    finally:
        for p, flag in zip(net.parameters(), grad_flags):
            p.requires_grad_(flag)
        net.train(was_training)
    if progress is not None:
        progress(total, total, "done")
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df.attrs.update(skipped=list(skipped), subset_size=perturbations.subset_size, seconds=seconds,
                    model_grid=list(shape), targets=names)
    return df


def summarise(table):
    """Mean, standard deviation and count of each metric per method, over cases and targets.

    Args:
        table: the long table of :func:`evaluate_case` (or several concatenated).

    Returns:
        DataFrame ``method,metric,mean,sd,n`` (methods and metrics in order of appearance).
    """
    import pandas as pd

    if len(table) == 0:
        return pd.DataFrame(columns=["method", "metric", "mean", "sd", "n"])
    g = table.dropna(subset=["value"]).groupby(["method", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    order_m = list(dict.fromkeys(table["method"]))
    order_k = list(dict.fromkeys(table["metric"]))
    out["_m"] = out["method"].map(order_m.index)
    out["_k"] = out["metric"].map(order_k.index)
    return out.sort_values(["_m", "_k"]).drop(columns=["_m", "_k"]).reset_index(drop=True)


def summary_markdown(table, settings: dict[str, Any] | None = None) -> str:
    """A Markdown table ``method × metric`` of ``mean ± sd`` (with the direction of each metric).

    Args:
        table: the long table of :func:`evaluate_case`.
        settings: optional lines listed under the table (e.g. the reduced settings of a run).
    """
    from napari_agg2exp.attribution.explainer import METHODS

    s = summarise(table)
    methods = list(dict.fromkeys(table["method"]))
    metrics = list(dict.fromkeys(table["metric"]))
    arrow = {"higher": "↑", "lower": "↓"}
    head = "| method | " + " | ".join(f"{METRICS[m].title} {arrow[METRICS[m].better]}" for m in metrics) + " |"
    lines = [head, "|---|" + "---|" * len(metrics)]
    for meth in methods:
        cells = []
        for metric in metrics:
            r = s[(s["method"] == meth) & (s["metric"] == metric)]
            if len(r) == 0:
                cells.append("n/a")
            else:
                r = r.iloc[0]
                sd = "" if np.isnan(r["sd"]) else f" ± {r['sd']:.3f}"
                cells.append(f"{r['mean']:.3f}{sd}")
        title = METHODS[meth].title if meth in METHODS else meth
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    n_cases = table["case"].nunique()
    n_targets = table["target"].nunique()
    lines.append("")
    lines.append(f"mean ± sd over {n_cases} case(s) × {n_targets} target class(es); "
                 "↑ higher is better, ↓ lower is better.")
    if settings:
        lines.append("")
        lines.extend(f"- {k}: {v}" for k, v in settings.items())
    return "\n".join(lines) + "\n"
