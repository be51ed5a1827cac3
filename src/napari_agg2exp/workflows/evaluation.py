"""Explanation quality of several cases: each case runs through :func:`run_case` (segmented once)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from napari_agg2exp.evaluation.evaluate import CURVE_METRICS, curve_table
from napari_agg2exp.evaluation.summary import summary_markdown
from napari_agg2exp.files import atomic_write_text
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.progress import CancelFlag, ProgressCallback
from napari_agg2exp.workflows.case import run_case

__all__ = ["evaluate_cases"]


def evaluate_cases(
    model: SegmentationModel,
    cases: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str],
    metrics: Sequence[str],
    targets: Sequence[str] | str | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    window: Mapping[str, Any] | None = None,
    progress_for: Callable[[str, int], ProgressCallback | None] | None = None,
    cancel: CancelFlag | None = None,
    **metric_settings: Any,
) -> tuple[pd.DataFrame, str]:
    """Evaluate every case; write ``metrics.csv``, ``metrics.md``, ``evaluation_info.json`` (and ``quality.csv``).

    With a ``deletion`` or ``insertion`` metric the curves go to ``curves.csv``
    (``case,method,target,metric,step,fraction,score``, the normalised score after each step).

    Args:
        model: the segmentation model.
        cases: rows ``{case, image[, labels]}`` (see :func:`~napari_agg2exp.workflows.manifest.read_manifest`).
        out_dir: output folder (normally a staging folder).
        methods, metrics, targets, method_params: see :func:`~napari_agg2exp.evaluation.evaluate.evaluate_case`.
        settings: recorded in ``evaluation_info.json`` and listed under the Markdown table.
        window: sliding-window settings (``window_size``, ``overlap``, ``blend``).
        progress_for: ``progress_for(case, index)`` gives each case's progress callback.
        cancel: cancel flag.
        **metric_settings: further :func:`~napari_agg2exp.evaluation.evaluate.evaluate_case` settings.

    Returns:
        (metrics table, Markdown summary).
    """
    out = Path(out_dir)
    tables, quality, info_cases, curves = [], [], [], []
    for i, c in enumerate(cases):
        t0 = time.perf_counter()
        res = run_case(model, c["image"], case=c["case"], ground_truth=c.get("labels"), targets=targets,
                       evaluate={"methods": list(methods), "metrics": list(metrics),
                                 "method_params": dict(method_params or {}), **metric_settings},
                       progress=progress_for(c["case"], i) if progress_for else None, cancel=cancel,
                       **dict(window or {}))
        df = res.metrics
        tables.append(df)
        curves.append(curve_table(df))
        info_cases.append({"case": c["case"], "image": str(c["image"]), "seconds": round(time.perf_counter() - t0, 1),
                           "seconds_per_method": {k: round(v, 1) for k, v in df.attrs["seconds"].items()},
                           "targets": df.attrs["targets"], "skipped": df.attrs["skipped"],
                           "model_grid": df.attrs["model_grid"], "subset_size": df.attrs["subset_size"],
                           "curve_step": df.attrs.get("curve_step")})
        if res.quality is not None:
            quality.append(res.quality)
    table = pd.concat(tables, ignore_index=True)
    atomic_write_text(out / "metrics.csv", table.to_csv(index=False))
    if any(m in CURVE_METRICS for m in metrics):
        atomic_write_text(out / "curves.csv", pd.concat(curves, ignore_index=True).to_csv(index=False))
    md = summary_markdown(table, settings)
    atomic_write_text(out / "metrics.md", md)
    info = {"model": model.source, "methods": list(methods), "metrics": list(metrics), "settings": dict(settings or {}),
            "method_parameters": dict(method_params or {}), "cases": info_cases}
    atomic_write_text(out / "evaluation_info.json", json.dumps(info, indent=2, default=str) + "\n")
    if quality:
        atomic_write_text(out / "quality.csv", pd.concat(quality, ignore_index=True).to_csv(index=False))
    return table, md
