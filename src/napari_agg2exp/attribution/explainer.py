"""One call to explain a segmentation: :func:`explain` (used by the CLI, the widgets and cohorts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel
from napari_agg2exp.data.volume import Volume

__all__ = ["METHODS", "MethodInfo", "Explanation", "explain", "resolve_targets", "method_defaults"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    title: str
    defaults: dict[str, Any]
    doc_url: str


#: Registry: method name -> title, paper defaults (SPEC §3), reference.
METHODS: dict[str, MethodInfo] = {
    "vg": MethodInfo("vg", "Vanilla gradient", {}, "https://arxiv.org/abs/1312.6034"),
    "ig": MethodInfo("ig", "Integrated gradients", {"n_steps": 20, "baseline": 0.0}, "https://arxiv.org/abs/1703.01365"),
    "sg": MethodInfo("sg", "SmoothGrad", {"n_samples": 20, "noise_level": 0.1}, "https://arxiv.org/abs/1706.03825"),
    "kernelshap-cubes": MethodInfo("kernelshap-cubes", "KernelSHAP (cubes)", {"n_samples": 1000, "cubes_per_axis": 8, "baseline": 0.0},
                                   "https://arxiv.org/abs/1705.07874"),
    "kernelshap-semantic": MethodInfo("kernelshap-semantic", "KernelSHAP (semantic)", {"n_samples": 200, "baseline": 0.0},
                                      "https://arxiv.org/abs/1705.07874"),
}


def method_defaults(method: str) -> dict[str, Any]:
    return dict(_method(method).defaults)


def _method(method: str) -> MethodInfo:
    if method not in METHODS:
        import difflib

        m = difflib.get_close_matches(str(method), list(METHODS), n=1, cutoff=0.3)
        raise Agg2ExpError(f"unknown method {method!r}; use one of {', '.join(METHODS)}" + (f" (did you mean {m[0]!r}?)" if m else ""))
    return METHODS[method]


@dataclass
class Explanation:
    """Per-class attribution maps of one scan.

    Attributes:
        method: method name; ``parameters`` its settings.
        targets: explained class names (in order of ``maps_model``).
        target_ids: their class ids.
        skipped: classes asked for but absent from the prediction (no attribution).
        maps_model: (K, X', Y', Z') maps on the model grid (numpy float32).
        prediction: the clean prediction on the input grid.
        pre: the preprocessing mapping.
        scores: f_c(x) per target.
        completeness: IG relative completeness error per target (IG only).
        seconds: attribution time.
    """

    method: str
    parameters: dict[str, Any]
    targets: list[str]
    target_ids: list[int]
    skipped: list[str]
    maps_model: np.ndarray
    prediction: Volume
    image: Volume
    pre: Any
    class_names: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    completeness: dict[str, float] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def map_on_input(self, target: str | int) -> np.ndarray:
        """One class map on the input grid (float32)."""
        from napari_agg2exp.data.preprocessing import to_input_grid

        k = self.targets.index(target) if isinstance(target, str) else self.target_ids.index(int(target))
        return to_input_grid(self.maps_model[k], self.pre).astype(np.float32)

    def maps_on_input(self) -> dict[str, np.ndarray]:
        return {t: self.map_on_input(t) for t in self.targets}

    def info(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "parameters": self.parameters,
            "targets": self.targets,
            "skipped": self.skipped,
            "scores": self.scores,
            "seconds": round(self.seconds, 3),
            "ig_completeness_relative_error": self.completeness,
            **self.extra,
        }


def resolve_targets(model, labels_model_grid: np.ndarray, targets: Sequence[str | int] | str | None):
    """(present ids, skipped names): explicit names/ids, ``all``/None = every class present."""
    present = set(np.unique(labels_model_grid).tolist())
    if targets is None or targets == "all" or (isinstance(targets, (list, tuple)) and list(targets) == ["all"]):
        ids = sorted(present)
    else:
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        ids = [model.class_index(t) for t in targets]
    keep = [i for i in ids if i in present]
    skipped = [model.class_names[i] for i in ids if i not in present]
    return keep, skipped


def explain(
    model,
    volume: Volume,
    method: str = "vg",
    targets: Sequence[str | int] | str | None = None,
    *,
    n_steps: int | None = None,
    n_samples: int | None = None,
    noise_level: float = 0.1,
    stdev: float | None = None,
    baseline: float = 0.0,
    ig_method: str = "riemann_middle",
    feature_mask: np.ndarray | Volume | None = None,
    spread: str = "even",
    seed: int = 0,
    window_size=None,
    overlap: float = 0.25,
    blend: str = "constant",
    sw_batch_size: int = 1,
    internal_batch_size: int = 4,
    batch_classes: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> Explanation:
    """Segment ``volume`` and explain the chosen classes with one attribution method.

    Args:
        model: a loaded :class:`~napari_agg2exp.models.loading.SegmentationModel`.
        volume: the input scan.
        method: ``vg``, ``ig``, ``sg``, ``kernelshap-cubes`` or ``kernelshap-semantic``.
        targets: class names or ids; ``None``/``"all"`` = every class present in the prediction.
        n_steps: IG steps (20). n_samples: SG samples (20), KernelSHAP coalitions (1000 cubes / 200 semantic).
        noise_level, stdev: SG noise σ = noise_level·range unless ``stdev`` is given.
        baseline: value of x₀ (IG) and of removed features (KernelSHAP), in preprocessed units.
        feature_mask: semantic KernelSHAP features on the input grid (default: the predicted regions).
        spread: KernelSHAP per-voxel convention (``even`` or ``broadcast``).
        seed: noise / coalition seed.
        window_size, overlap, blend, sw_batch_size: sliding window (SPEC §2 defaults).
        internal_batch_size: IG steps / SG samples / coalitions per batch.
        batch_classes: batched VJPs over classes (default: on CUDA).
        progress, cancel: progress callback and cancel flag.

    Returns:
        An :class:`Explanation`.
    """
    import torch

    from napari_agg2exp.models.inference import SlidingWindow, check_window_options, sliding_window_logits
    from napari_agg2exp.data.preprocessing import preprocess, preprocess_labels, to_input_grid
    from napari_agg2exp.attribution.gradient import IntegratedGradients, Saliency, SmoothGrad
    from napari_agg2exp.attribution.kernel_shap import KernelShap, cube_feature_mask
    from napari_agg2exp.attribution.target import SlidingWindowTarget

    info = _method(method)
    ws = tuple(model.window_size) if window_size is None else ((int(window_size),) * 3 if np.isscalar(window_size) else tuple(window_size))
    ws, overlap, blend = check_window_options(ws, overlap, blend)
    pre = preprocess(volume, model.preprocessing, ws)
    x = torch.from_numpy(pre.array).to(model.device)
    plan = SlidingWindow.plan(pre.array.shape, ws, overlap, blend, device=model.device)
    grad_flags = [(p, p.requires_grad) for p in model.network.parameters()]
    for p, _ in grad_flags:
        p.requires_grad_(False)  # input gradients only: no graph through the weights
    was_training = model.network.training
    model.network.eval()
    try:
        logits = sliding_window_logits(model.network, x[None], plan, n_classes=model.num_classes,
                                       sw_batch_size=sw_batch_size, progress=SubProgress(progress, 0, 5, 100), cancel=cancel)
        labels = logits.argmax(0)
        labels_np = labels.to(torch.uint8).cpu().numpy()
        prediction = volume.like(to_input_grid(labels_np, pre, mode="nearest").astype(np.uint8), name=f"{volume.name}_prediction")
        ids, skipped = resolve_targets(model, labels_np, targets)
        if not ids:
            raise Agg2ExpError(
                f"none of the requested classes is present in the prediction (absent: {', '.join(skipped)}) -- nothing to explain"
            )
        # f_c(x) of the clean input straight from the stitched logits; then free them (C volumes)
        scores = np.array([float(logits[c][labels == c].sum()) for c in ids])
        del logits
        fwd = SlidingWindowTarget(model.network, plan, labels, ids, sw_batch_size=sw_batch_size, batch_classes=batch_classes)
        sub = SubProgress(progress, 5, 95, 100)
        t0 = time.perf_counter()
        params: dict[str, Any] = {"window_size": list(ws), "overlap": overlap, "blend": blend, "seed": seed}
        completeness = None
        extra: dict[str, Any] = {}
        if method == "vg":
            maps = Saliency(fwd).attribute(x, progress=sub, cancel=cancel)
        elif method == "ig":
            steps = n_steps or info.defaults["n_steps"]
            params.update(n_steps=steps, baseline=baseline, integration=ig_method)
            res = IntegratedGradients(fwd).attribute(x, baseline, n_steps=steps, method=ig_method,
                                                     internal_batch_size=internal_batch_size,
                                                     return_convergence_delta=True, progress=sub, cancel=cancel)
            maps = res.attributions
            completeness = {model.class_names[c]: float(e) for c, e in zip(ids, res.relative_error.cpu().numpy())}
        elif method == "sg":
            samples = n_samples or info.defaults["n_samples"]
            sg = SmoothGrad(Saliency(fwd))
            maps = sg.attribute(x, n_samples=samples, stdev=stdev, noise_level=noise_level, seed=seed,
                                internal_batch_size=internal_batch_size, progress=sub, cancel=cancel)
            params.update(n_samples=samples, noise_level=noise_level, stdev=sg.stdev)
        else:
            samples = n_samples or info.defaults["n_samples"]
            if method == "kernelshap-cubes":
                fm = cube_feature_mask(pre.array.shape, info.defaults["cubes_per_axis"])
                params.update(cubes=int(info.defaults["cubes_per_axis"]) ** 3)
            elif feature_mask is None:
                fm = labels_np
                params.update(features="prediction")
            else:
                fmv = feature_mask.array if isinstance(feature_mask, Volume) else np.asarray(feature_mask)
                fm = preprocess_labels(fmv, pre)
                params.update(features="custom")
            params.update(n_samples=samples, baseline=baseline, spread=spread)
            res = KernelShap(fwd).attribute(x, fm, baselines=baseline, n_samples=samples, seed=seed,
                                            perturbations_per_eval=internal_batch_size, spread=spread,
                                            progress=sub, cancel=cancel)
            maps = res.attributions
            extra["n_features"] = int(len(res.feature_ids))
            extra["n_coalitions"] = int(res.n_coalitions)
        check_cancel(cancel)
        seconds = time.perf_counter() - t0
    finally:
        model.network.train(was_training)
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    names = [model.class_names[c] for c in ids]
    return Explanation(
        method=method,
        parameters=params,
        targets=names,
        target_ids=list(ids),
        skipped=skipped,
        maps_model=np.asarray(maps.detach().cpu().numpy(), dtype=np.float32),
        prediction=prediction,
        image=volume,
        pre=pre,
        class_names=list(model.class_names),
        scores={n: float(s) for n, s in zip(names, scores)},
        completeness=completeness,
        seconds=seconds,
        extra=extra,
    )
