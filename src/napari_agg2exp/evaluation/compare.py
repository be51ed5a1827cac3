"""Segmentation models compared on one labelled cohort (SPEC §9, appendix D).

Per case and model the Dice of every foreground class (the classes the models and the data share, by
name); per class the mean Dice of each model (appendix Table 2) and a one-way ANOVA over the models'
per-case Dice (``scipy.stats.f_oneway``), significant at p < 0.05. "overall" is the per-case mean
over the foreground classes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import f_oneway

from napari_agg2exp.data.dice import dice_iou
from napari_agg2exp.data.labels import as_label_array, read_label_names
from napari_agg2exp.data.volume import Volume, load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import segment
from napari_agg2exp.progress import CancelFlag, ProgressCallback, SubProgress, check_cancel

__all__ = [
    "OVERALL",
    "find_labelled_cases",
    "shared_classes",
    "case_dice",
    "dice_table",
    "anova_table",
    "mean_dice_table",
    "comparison_markdown",
]

#: Name of the per-case mean over the foreground classes in the summary tables.
OVERALL = "overall"


def find_labelled_cases(data_dir: str | os.PathLike) -> tuple[list[Path], list[str] | None]:
    """Case folders ``case_*/`` with ``image.nii.gz`` and ``labels.nii.gz``, and the label names.

    Returns:
        (case folders in name order, names from ``data_dir/labels.json`` or None if it is missing).

    Raises:
        Agg2ExpError: no such folder, no cases, a case without labels, or an unreadable labels.json.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise Agg2ExpError(f"data folder not found: {d} -- give a folder of case_*/image.nii.gz + labels.nii.gz")
    cases = sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("case_"))
    if not cases:
        raise Agg2ExpError(f"no cases in {d}: expected case_*/image.nii.gz + labels.nii.gz; make some with `agg2exp phantom`")
    for c in cases:
        for f in ("image.nii.gz", "labels.nii.gz"):
            if not (c / f).exists():
                raise Agg2ExpError(f"case {c.name} in {d} has no {f} -- every case needs image.nii.gz and labels.nii.gz")
    names = read_label_names(d / "labels.json") if (d / "labels.json").exists() else None
    return cases, names


def shared_classes(models: Sequence[Any], data_names: Sequence[str] | None) -> list[str]:
    """Foreground class names every model has and the data labels (all models' if ``data_names`` is None)."""
    first = list(models[0].class_names)
    common = [n for n in first if all(n in m.class_names for m in models[1:])]
    if data_names is not None:
        common = [n for n in data_names if n in common]
    return [n for n in common if n != "background" and n != first[0]]


def case_dice(model: SegmentationModel, image: Volume, labels: Volume, classes: Sequence[str],
              data_names: Sequence[str] | None = None, *, window_size: int | Sequence[int] | None = None,
              overlap: float | None = None, blend: str | None = None, sw_batch_size: int | None = None,
              progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> dict[str, float]:
    """Dice of each class of ``classes`` for one model on one case (NaN: in neither volume).

    Args:
        model: a loaded segmentation model.
        image, labels: :class:`~napari_agg2exp.data.volume.Volume` on one grid.
        classes: class names to score.
        data_names: names of the label ids of ``labels`` (default: the model's class names).
    """
    if labels.shape != image.shape:
        raise Agg2ExpError(f"labels shape {labels.shape} differs from the image's {image.shape} -- they must share a grid")
    res = segment(model, image, window_size=window_size, overlap=overlap, blend=blend, sw_batch_size=sw_batch_size,
                  progress=progress, cancel=cancel)
    names = list(data_names) if data_names is not None else list(model.class_names)
    gt = np.asarray(labels.array).astype(np.int64)
    if gt.size and (gt.min() < 0):
        raise Agg2ExpError("labels volume has negative ids -- labels must be 0..N-1")
    n = model.num_classes
    lut = np.full(max(int(gt.max()) + 1, len(names)), n, dtype=np.int64)  # unknown ids -> an extra bin
    for did, name in enumerate(names):
        if name in model.class_names:
            lut[did] = model.class_names.index(name)
    dice, _ = dice_iou(res.prediction.array, lut[gt], n)
    return {c: float(dice[model.class_names.index(c)]) for c in classes}


def dice_table(models: dict[str, Any], cases: Sequence[str | os.PathLike], data_names: Sequence[str] | None = None,
               *, classes: Sequence[str] | None = None, window_size: int | Sequence[int] | None = None,
               overlap: float | None = None, blend: str | None = None, sw_batch_size: int | None = None,
               progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> pd.DataFrame:
    """Per-case Dice of every model: DataFrame ``case,model,class,dice``.

    Args:
        models: display name -> loaded model.
        cases: case folders with ``image.nii.gz`` and ``labels.nii.gz``.
        data_names: label names of the data (``labels.json``); default: the first model's names.
        classes: classes to score (default: :func:`shared_classes`).
    """
    if not models:
        raise Agg2ExpError("no models to compare")
    ms = list(models.values())
    classes = list(classes) if classes is not None else shared_classes(ms, data_names)
    if not classes:
        raise Agg2ExpError("the models and the data share no foreground class names -- check labels.json and the models")
    rows = []
    total = len(cases) * len(models)
    step = 0
    for c in cases:
        c = Path(c)
        image = load_volume(c / "image.nii.gz", what="image")
        labels = load_volume(c / "labels.nii.gz", what="labels")
        as_label_array(labels.array, len(data_names) if data_names is not None else None,
                       what=f"labels of {c.name}")  # the one label check
        for name, model in models.items():
            check_cancel(cancel)
            d = case_dice(model, image, labels, classes, data_names, window_size=window_size, overlap=overlap,
                          blend=blend, sw_batch_size=sw_batch_size, progress=SubProgress(progress, step, 1, total),
                          cancel=cancel)
            step += 1
            rows += [{"case": c.name, "model": name, "class": k, "dice": v} for k, v in d.items()]
    if progress is not None:
        progress(total, total, "done")
    return pd.DataFrame(rows, columns=["case", "model", "class", "dice"])


def _with_overall(dice):
    overall = dice.groupby(["case", "model"], sort=False)["dice"].mean().reset_index()  # NaN-skipping mean
    overall["class"] = OVERALL
    return pd.concat([dice, overall[["case", "model", "class", "dice"]]], ignore_index=True)


def anova_table(dice: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One-way ANOVA of per-case Dice across models, per class and overall.

    Args:
        dice: DataFrame ``case,model,class,dice`` from :func:`dice_table`.
        alpha: significance level (0.05).

    Returns:
        DataFrame ``class,f,p,significant``; NaN where it is undefined (fewer than two models, one case
        per model, or identical values).
    """
    d = _with_overall(dice)
    rows = []
    for cls in dict.fromkeys(d["class"]):
        sub = d[d["class"] == cls].dropna(subset=["dice"])
        groups = [g["dice"].to_numpy(float) for _, g in sub.groupby("model", sort=False)]
        groups = [g for g in groups if len(g)]
        f = p = float("nan")
        if len(groups) >= 2 and sum(len(g) for g in groups) > len(groups):
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                res = f_oneway(*groups)
            f, p = float(res.statistic), float(res.pvalue)
        rows.append({"class": cls, "f": f, "p": p, "significant": bool(p < alpha) if np.isfinite(p) else False})
    return pd.DataFrame(rows, columns=["class", "f", "p", "significant"])


def mean_dice_table(dice: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per class (rows, ``overall`` last) and model (columns), as in appendix Table 2."""
    d = _with_overall(dice)
    t = d.pivot_table(index="class", columns="model", values="dice", aggfunc="mean", sort=False)
    order = list(dict.fromkeys(d["class"]))
    return t.reindex(index=order, columns=list(dict.fromkeys(d["model"])))


def comparison_markdown(dice: pd.DataFrame, anova: pd.DataFrame | None = None, alpha: float = 0.05) -> str:
    """Markdown table: mean Dice per class and model (best in bold), ANOVA p-value, ``*`` if p < alpha."""
    if anova is None:
        anova = anova_table(dice, alpha)
    t = mean_dice_table(dice)
    models = list(t.columns)
    pvals = dict(zip(anova["class"], anova["p"]))
    lines = ["| class | " + " | ".join(models) + " | ANOVA p |", "|---|" + "---|" * (len(models) + 1)]
    for cls, row in t.iterrows():
        vals = row.to_numpy(float)
        best = np.nanmax(vals) if np.isfinite(vals).any() else np.nan
        cells = []
        for v in vals:
            s = "n/a" if not np.isfinite(v) else f"{v:.3f}"
            cells.append(f"**{s}**" if len(models) > 1 and np.isfinite(v) and v == best else s)
        p = pvals.get(cls, np.nan)
        ps = "n/a" if not np.isfinite(p) else (f"{p:.3g}" + ("*" if p < alpha else ""))
        name = f"**{cls}**" if cls == OVERALL else cls
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ps} |")
    n_cases = dice["case"].nunique()
    lines.append("")
    lines.append(f"Mean Dice over {n_cases} case(s); {OVERALL} = per-case mean over the foreground classes. "
                 f"ANOVA: one-way over the models' per-case Dice; * p < {alpha:g}.")
    return "\n".join(lines) + "\n"
