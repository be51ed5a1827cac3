"""Summaries of metric tables: mean ± sd per method and metric, as a table and as Markdown."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from napari_agg2exp.attribution.methods import METHODS
from napari_agg2exp.evaluation.evaluate import METRICS

__all__ = ["summarise", "summary_markdown"]


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of each metric per method, over cases and targets.

    Args:
        table: the long table of :func:`evaluate_case` (or several concatenated).

    Returns:
        DataFrame ``method,metric,mean,sd,n`` (methods and metrics in order of appearance).
    """
    if len(table) == 0:
        return pd.DataFrame(columns=["method", "metric", "mean", "sd", "n"])
    g = table.dropna(subset=["value"]).groupby(["method", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    order_m = list(dict.fromkeys(table["method"]))
    order_k = list(dict.fromkeys(table["metric"]))
    out["_m"] = out["method"].map(order_m.index)
    out["_k"] = out["metric"].map(order_k.index)
    return out.sort_values(["_m", "_k"]).drop(columns=["_m", "_k"]).reset_index(drop=True)


def summary_markdown(table: pd.DataFrame, settings: dict[str, Any] | None = None) -> str:
    """A Markdown table ``method × metric`` of ``mean ± sd`` (with the direction of each metric).

    Args:
        table: the long table of :func:`evaluate_case`.
        settings: optional lines listed under the table (e.g. the reduced settings of a run).
    """
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
