"""Explanation quality of several attribution methods on one scan: :func:`evaluate_case` (SPEC §6).

One segmentation, one set of random voxel subsets, one set of noise samples and one randomised copy
of the network per case, shared by every method -- so the methods are compared on equal terms. The
score drops of the faithfulness correlation do not depend on the method and are computed once.
Result: a long table ``case,method,target,metric,value``; the deletion / insertion curves behind those two
metrics ride along in its ``attrs["curves"]`` (see :func:`curve_table`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.attribution.methods import look_up_method
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.evaluation.metrics import (
    PAPER_SUBSET_SIZE,
    average_sensitivity,
    curve_step_size,
    deletion_aopc,
    effective_complexity,
    faithfulness_correlation,
    insertion_auc,
    perturbation_curves,
    random_subsets,
    randomise_network,
    rank_correlation,
    score_drops,
    uniform_noise,
)
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import PreparedCase, frozen, prepare_case
from napari_agg2exp.options import look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel

__all__ = [
    "METRICS",
    "PAPER_METRICS",
    "MetricInfo",
    "TABLE_COLUMNS",
    "Perturbations",
    "make_perturbations",
    "look_up_metric",
    "look_up_methods",
    "look_up_metrics",
    "check_settings",
    "evaluate_case",
    "CURVE_METRICS",
    "CURVE_COLUMNS",
    "curve_table",
]

TABLE_COLUMNS = ["case", "method", "target", "metric", "value"]
#: Columns of the curves table: ``score`` is the normalised score (1 = clean, 0 = all-baseline input).
CURVE_COLUMNS = ["case", "method", "target", "metric", "step", "fraction", "score"]
#: Metrics that are the area of a curve (their curves are kept in ``attrs["curves"]``).
CURVE_METRICS = ("deletion", "insertion")


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
    "deletion": MetricInfo("deletion", "Deletion AOPC", "higher", "https://arxiv.org/abs/1509.06321"),
    "insertion": MetricInfo("insertion", "Insertion AUC", "higher", "https://arxiv.org/abs/1806.07421"),
}
#: The paper's metrics (SPEC §6): the default of the napari dock and of ``agg2exp evaluate``.
PAPER_METRICS: tuple[str, ...] = ("faithfulness", "sensitivity", "complexity", "randomisation")
_ALIASES = {"randomization": "randomisation", "faithfulness_correlation": "faithfulness",
            "average_sensitivity": "sensitivity", "avg_sensitivity": "sensitivity",
            "effective_complexity": "complexity", "mprt": "randomisation", "aopc": "deletion",
            "deletion_aopc": "deletion", "insertion_auc": "insertion"}


def _names(items: Sequence[str] | str) -> list[str]:
    if isinstance(items, str):
        items = items.split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def look_up_metric(name: str) -> str:
    """The canonical metric name (British or American spelling); a typo gets a suggestion."""
    return look_up_option(name, METRICS, what="metric", aliases=_ALIASES, normalise=True)


def look_up_methods(methods: Sequence[str] | str) -> list[str]:
    """Validated, de-duplicated method names (order kept)."""
    out: list[str] = []
    for m in _names(methods):
        name = look_up_method(m).name
        if name not in out:
            out.append(name)
    if not out:
        raise Agg2ExpError("no attribution methods given -- e.g. vg,ig,sg,kernelshap-cubes,kernelshap-semantic")
    return out


def look_up_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Validated, de-duplicated metric names (order kept)."""
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


def curve_table(table: pd.DataFrame) -> pd.DataFrame:
    """The deletion / insertion curves of an :func:`evaluate_case` table (``CURVE_COLUMNS``; empty if none)."""
    return pd.DataFrame(table.attrs.get("curves") or {c: [] for c in CURVE_COLUMNS}, columns=CURVE_COLUMNS)


def check_settings(n_subsets: int, subset_size: int, n_noise: int, noise_bound: float, threshold: float,
                   curve_step: float = PAPER_SUBSET_SIZE, curve_steps: int | None = None) -> None:
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
    try:
        curve_step_size(curve_step, 1 << 40, warn=False)
    except (Agg2ExpError, TypeError, ValueError):
        raise Agg2ExpError(f"--curve-step must be a number of voxels (>= 1) or a fraction in (0, 1), "
                           f"got {curve_step}") from None
    if curve_steps is not None and int(curve_steps) < 1:
        raise Agg2ExpError(f"--curve-steps must be at least 1, got {curve_steps}")


def evaluate_case(
    case: PreparedCase | SegmentationModel,
    volume: Volume | None = None,
    methods: Sequence[str] | str = ("vg", "ig", "sg", "kernelshap-cubes", "kernelshap-semantic"),
    metrics: Sequence[str] | str = ("faithfulness", "sensitivity", "complexity", "randomisation"),
    targets: Sequence[str | int] | str | None = None,
    *,
    name: str | None = None,
    n_subsets: int = 100,
    subset_size: int = PAPER_SUBSET_SIZE,
    n_noise: int = 3,
    noise_bound: float = 0.1,
    threshold: float = 0.1,
    baseline: float = 0.0,
    curve_step: float = PAPER_SUBSET_SIZE,
    curve_steps: int | None = None,
    seed: int = 0,
    method_params: dict[str, dict[str, Any]] | None = None,
    perturbations: Perturbations | None = None,
    window_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    batch_size: int = 4,
    batch_classes: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> pd.DataFrame:
    """Score attribution methods on one scan with the metrics of SPEC §6.

    Every metric works on the model grid with the sliding-window engine; ``f_c`` keeps the clean
    class mask ``M_c`` for every perturbed input. Attributions are normalised by ``max |a|`` per class.

    Args:
        case: a :class:`~napari_agg2exp.models.prepared.PreparedCase` (the scan segmented once, e.g. by
            an earlier explain step), or a model -- then ``volume`` is prepared here with ``window_size``,
            ``overlap`` and ``blend`` (default: the model's window, 0.25, constant).
        volume: the scan, when ``case`` is a model.
        methods: attribution methods (names or a comma-separated string).
        metrics: ``faithfulness``, ``sensitivity``, ``complexity``, ``randomisation``, ``deletion``,
            ``insertion`` (see :func:`~napari_agg2exp.evaluation.metrics.perturbation_curves`).
        targets: class names or ids; ``None``/``"all"`` = every class present in the prediction.
            Requested classes absent from the prediction are skipped (listed in ``attrs["skipped"]``).
        name: case name in the table (default: the volume's name).
        n_subsets, subset_size: faithfulness subsets (paper: 100 of 224² voxels; the size is clipped to a
            quarter of the volume with a warning).
        n_noise, noise_bound: sensitivity noise samples, uniform in ``[−bound, bound]`` (paper: 3, 0.1).
        threshold: complexity threshold θ on ``|a| / max|a|`` (paper: 0.1).
        baseline: value of the faithfulness subsets' and the curves' voxels after removal (paper: 0).
        curve_step: deletion / insertion step, voxels (default 224², clipped to a tenth of the volume with
            a warning) or a fraction of the volume in (0, 1) (e.g. 0.05).
        curve_steps: at most this many curve steps (default: until the whole volume is perturbed).
        seed: metric seed (subsets, noise, random weights); also the methods' seed unless
            ``method_params`` sets one.
        method_params: per-method parameters of :class:`~napari_agg2exp.attribution.Explainer`, e.g.
            ``{"ig": {"n_steps": 10}}``.
        perturbations: explicit subsets / noise (default: drawn from ``seed`` and the model-grid shape).
        batch_size: perturbed inputs per forward pass (faithfulness subsets, IG steps, SG samples,
            KernelSHAP coalitions).
        batch_classes: batched VJPs over classes (default: on CUDA).
        progress, cancel: progress callback and cancel flag.

    Returns:
        DataFrame ``case,method,target,metric,value`` (one row per method × target × metric).
        ``attrs`` holds ``skipped`` (absent classes), ``subset_size`` (after clipping), ``seconds``
        (per method), ``model_grid`` (shape), ``targets``, ``curve_step`` (voxels after clipping, None
        without curve metrics) and ``curves``: the curves' columns ``CURVE_COLUMNS`` as lists (read them
        with :func:`curve_table`); ``score`` is the normalised score ``s_k`` whose mean / area is the value.

    Raises:
        Agg2ExpError: unknown method / metric / class, bad settings, or no requested class predicted.
    """
    methods = look_up_methods(methods)
    metrics = look_up_metrics(metrics)
    check_settings(n_subsets, subset_size, n_noise, noise_bound, threshold, curve_step, curve_steps)
    bs = max(1, int(batch_size))
    explainers = {}
    for m, params in (method_params or {}).items():
        look_up_method(m)
    for m in methods:
        method = look_up_method(m)
        common = {k: v for k, v in (("seed", seed), ("internal_batch_size", bs)) if k in method.defaults}
        explainers[m] = Explainer(method, batch_classes=batch_classes, **{**common, **(method_params or {}).get(m, {})})
    if isinstance(targets, str) and targets != "all":
        targets = _names(targets)
    if isinstance(case, PreparedCase):
        if volume is not None:
            raise Agg2ExpError("give a prepared case or a model and a volume, not both")
        prepared = case
    else:
        if volume is None:
            raise Agg2ExpError("evaluate_case needs the scan (volume) to prepare it with the model")
        for t in targets if isinstance(targets, (list, tuple)) else []:
            case.class_index(t)  # unknown names fail before any work
        prepared = None
    model = prepared.model if prepared is not None else case
    name = name or (prepared.image.name if prepared is not None else volume.name) or "case"

    # progress: segmentation, faithfulness drops, then per method: clean maps, noise samples, random model, curves
    curve_metrics = [m for m in metrics if m in CURVE_METRICS]
    per_method = (1 + (n_noise if "sensitivity" in metrics else 0) + (1 if "randomisation" in metrics else 0)
                  + len(curve_metrics))
    units = (1 if prepared is None else 0) + (2 if "faithfulness" in metrics else 0) + len(methods) * per_method
    total = 100 * units
    done = 0

    def sub(n_units: int = 1) -> SubProgress:
        nonlocal done
        s = SubProgress(progress, done, 100 * n_units, total)
        done += 100 * n_units
        return s

    if prepared is None:
        prepared = prepare_case(model, volume, window_size=window_size, overlap=overlap, blend=blend,
                                sw_batch_size=bs, progress=sub(), cancel=cancel)
    ids, skipped = prepared.resolve_targets(targets)
    if skipped:
        warnings.warn(f"{name}: classes absent from the prediction are not evaluated: {', '.join(skipped)}",
                      stacklevel=2)
    if not ids:
        raise Agg2ExpError(f"{name}: none of the requested classes is present in the prediction "
                           f"(absent: {', '.join(skipped)}) -- nothing to evaluate")
    names = [model.class_names[c] for c in ids]
    shape = tuple(prepared.labels.shape)
    if perturbations is None:
        perturbations = make_perturbations(shape, n_subsets=n_subsets, subset_size=subset_size, n_noise=n_noise,
                                           noise_bound=noise_bound, seed=seed,
                                           subsets="faithfulness" in metrics, noise="sensitivity" in metrics)
    n_vox = int(np.prod(shape))
    if perturbations.subsets is not None and (perturbations.subsets.ndim != 2 or perturbations.subsets.max() >= n_vox):
        raise Agg2ExpError(f"{name}: the faithfulness subsets do not index the model grid {shape}")
    if perturbations.noise is not None and tuple(perturbations.noise.shape[1:]) != shape:
        raise Agg2ExpError(f"{name}: noise of shape {tuple(perturbations.noise.shape[1:])} does not fit the model "
                           f"grid {shape}")
    if "faithfulness" in metrics and perturbations.subsets is None:
        raise Agg2ExpError("faithfulness needs voxel subsets in `perturbations`")
    if "sensitivity" in metrics and perturbations.noise is None:
        raise Agg2ExpError("sensitivity needs noise samples in `perturbations`")
    step = curve_step_size(curve_step, n_vox) if curve_metrics else None
    x = prepared.inputs
    net = model.network
    rows: list[dict[str, Any]] = []
    curves: dict[str, list] = {c: [] for c in CURVE_COLUMNS}
    seconds: dict[str, float] = {}
    with frozen(net):
        drops = None
        if "faithfulness" in metrics or curve_metrics:
            fwd = next(iter(explainers.values())).forward(prepared, ids)
        if "faithfulness" in metrics:
            drops = score_drops(fwd, x, perturbations.subsets, baseline=baseline, batch_size=bs, progress=sub(2),
                                cancel=cancel)
        random_net = randomise_network(net, seed) if "randomisation" in metrics else None
        for method, explainer in explainers.items():
            check_cancel(cancel)
            t0 = time.perf_counter()

            def attribution_fn(inputs, progress=None, cancel=None, explainer=explainer):
                return explainer.attribute(prepared, ids, inputs=inputs, progress=progress, cancel=cancel)[0]

            maps = attribution_fn(x, progress=sub(), cancel=cancel)
            values: dict[str, np.ndarray] = {}
            if "faithfulness" in metrics:
                values["faithfulness"] = faithfulness_correlation(maps, perturbations.subsets, drops)
            if "sensitivity" in metrics:
                values["sensitivity"] = average_sensitivity(maps, attribution_fn, x, perturbations.noise,
                                                            progress=sub(n_noise), cancel=cancel)
            if "complexity" in metrics:
                values["complexity"] = effective_complexity(maps, threshold)
            if "randomisation" in metrics:
                maps_random = explainer.attribute(prepared, ids, network=random_net, progress=sub(), cancel=cancel)[0]
                values["randomisation"] = rank_correlation(maps, maps_random)
                del maps_random
            for metric in curve_metrics:
                c = perturbation_curves(fwd, x, maps, metric, step=curve_step, max_steps=curve_steps,
                                        baseline=baseline, batch_size=bs, warn=False, progress=sub(), cancel=cancel)
                values[metric] = deletion_aopc(c) if metric == "deletion" else insertion_auc(c)
                for target, s in zip(names, c.normalised()):
                    for k, (f, v) in enumerate(zip(c.fractions, s)):
                        for col, val in zip(CURVE_COLUMNS, (name, method, target, metric, k, float(f), float(v))):
                            curves[col].append(val)
            seconds[method] = time.perf_counter() - t0
            for metric in metrics:
                for target, v in zip(names, values[metric]):
                    rows.append({"case": name, "method": method, "target": target, "metric": metric, "value": float(v)})
            del maps
    if progress is not None:
        progress(total, total, "done")
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df.attrs.update(skipped=list(skipped), subset_size=perturbations.subset_size, seconds=seconds,
                    model_grid=list(shape), targets=names, curve_step=step, curves=curves)
    return df
