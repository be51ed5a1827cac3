"""The files of a cohort analysis: global importance, graph and figures; outlier scores and figure."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import safe_file_name
from napari_agg2exp.importance.global_importance import (
    DEFAULT_EXCLUDE,
    class_order,
    global_importance,
    importance_graph,
    keep_rule,
    write_graphml,
)
from napari_agg2exp.importance.local import look_up_part
from napari_agg2exp.importance.outliers import OutlierResult
from napari_agg2exp.importance.tables import join_members, write_table
from napari_agg2exp.progress import ProgressCallback, report
from napari_agg2exp.report.cohort_figures import (
    distribution_figure,
    graph_figure,
    heatmap_figure,
    save_figure,
    spearman_figure,
)

__all__ = ["write_global_analysis", "write_outlier_analysis"]


def write_global_analysis(
    local_df: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    part: str = "abs",
    keep_fraction: float | None = None,
    top_k: int | None = None,
    keep_mass: float | None = None,
    joins: Mapping[str, Sequence[str]] | None = None,
    groups: Mapping[str, str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    progress: ProgressCallback | None = None,
) -> dict[str, Path]:
    """Write the cohort outputs of ``agg2exp global`` into ``out_dir``.

    Files: ``global_importance.csv`` (all parts), ``graph.graphml``, ``graph.png``, ``heatmap.png``
    and ``distributions/<target>.png`` (graph and figures for ``part``).

    The graph keeps one of :func:`~napari_agg2exp.importance.global_importance.importance_graph`'s
    rules (at most one of ``keep_fraction``, ``top_k``, ``keep_mass``; default the heaviest third of
    the candidate edges). ``joins`` (joined RoI -> members) defaults to the joined RoIs recorded in
    ``local_df`` (its ``members`` column); no edge goes from a joined RoI into a RoI it contains.

    Returns:
        Name -> path of every file written.
    """
    rule = keep_rule(keep_fraction, top_k, keep_mass)  # checked before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part = look_up_part(part)
    if joins is None:
        joins = join_members(local_df)
    gdf = global_importance(local_df)
    if not (gdf["part"] == part).any():
        raise Agg2ExpError(f"the local importance tables have no row with part {part!r} -- parts present: "
                           f"{sorted(gdf['part'].unique())}; choose one with --part")
    written = {"global_importance": write_table(gdf, out / "global_importance.csv")}
    graph = importance_graph(gdf, part, exclude=exclude, joins=joins, groups=groups, **rule.kwargs())
    written["graphml"] = write_graphml(graph, out / "graph.graphml")
    written["graph"] = save_figure(graph_figure(graph, groups=groups), out / "graph.png")
    written["heatmap"] = save_figure(heatmap_figure(gdf, part, exclude=exclude), out / "heatmap.png")
    targets = [t for t in class_order(local_df["target"].unique()) if t not in set(exclude)]
    for i, target in enumerate(targets):
        report(progress, i, len(targets), f"distributions: {target}")
        fig = distribution_figure(local_df, target, part, groups=groups, exclude=exclude)
        written[f"distributions/{target}"] = save_figure(fig, out / "distributions" / f"{safe_file_name(target)}.png")
    report(progress, len(targets), len(targets), "done")
    return written


def write_outlier_analysis(result: OutlierResult, out_dir: str | os.PathLike,
                           quality: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``scores.csv``, ``spearman.csv`` and ``spearman.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "scores": write_table(result.scores, out / "scores.csv"),
        "spearman": write_table(result.spearman, out / "spearman.csv"),
    }
    fig = spearman_figure(result.spearman, result.scores if quality is not None else None, quality)
    written["figure"] = save_figure(fig, out / "spearman.png")
    return written
