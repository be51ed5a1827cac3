"""Cohort figures: global heatmap, importance graph, per-target distributions, outlier correlations.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot, no GUI backend), so they
work in a terminal, a worker thread or inside napari alike.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch

from napari_agg2exp.data.labels import GROUP_COLOURS, THORAX_LABELS
from napari_agg2exp.files import atomic_write_bytes
from napari_agg2exp.importance.global_importance import DEFAULT_EXCLUDE, graph_summary, group_of

__all__ = [
    "distribution_figure",
    "figure_png",
    "graph_figure",
    "group_colours",
    "heatmap_figure",
    "save_figure",
    "spearman_figure",
]

_EXTRA_COLOURS = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def group_colours(group_names: Sequence[str]) -> dict[str, str]:
    """Colour per semantic group: the paper's four (red, yellow, blue, grey), then tab10 colours."""
    out, extra = {}, iter(_EXTRA_COLOURS * 4)
    for g in group_names:
        out[g] = GROUP_COLOURS.get(g) or next(extra)
    return out


def _ordered(names, groups: Mapping[str, str] | None = None, by_group: bool = False) -> list[str]:
    rank = {n: i for i, n in enumerate(THORAX_LABELS)}
    group_rank = {g: i for i, g in enumerate(GROUP_COLOURS)}

    def key(n):
        g = group_of(n, groups)
        return ((group_rank.get(g, len(group_rank)), g) if by_group else (0, "")) + (rank.get(n, len(rank)), n)

    return sorted(names, key=key)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure as PNG atomically. Returns the path."""
    return atomic_write_bytes(path, figure_png(fig, dpi))


def heatmap_figure(global_df: pd.DataFrame, part: str = "abs", *, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                   value: str = "mean") -> Figure:
    """Heatmap of global importance: targets (rows) × RoIs (columns), cells = mean mass.

    Args:
        global_df: table from :func:`~napari_agg2exp.importance.global_importance.global_importance`.
        part: which part to show.
        exclude: names left out of rows and columns.
        value: which statistic column to show.
    """
    df = global_df[(global_df["part"] == part) & ~global_df["target"].isin(exclude) & ~global_df["roi"].isin(exclude)]
    table = df.pivot_table(index="target", columns="roi", values=value, aggfunc="first")
    table = table.reindex(index=_ordered(table.index), columns=_ordered(table.columns))
    n_r, n_c = table.shape
    fig = Figure(figsize=(max(5.0, 0.45 * n_c + 3), max(3.5, 0.4 * n_r + 2.5)))
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(table.to_numpy(dtype=float))
    im = ax.imshow(data, cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(n_c), table.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), table.index, fontsize=8)
    ax.set_xlabel("RoI")
    ax.set_ylabel("target class")
    ax.set_title(f"Global RoI importance ({value} {part} mass over cases)")
    if n_r * n_c <= 600 and n_r and n_c:
        top = float(np.nanmax(table.to_numpy(dtype=float))) if np.isfinite(table.to_numpy(dtype=float)).any() else 1
        for i in range(n_r):
            for j in range(n_c):
                v = table.iat[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if v > 0.6 * top else "white")
    fig.colorbar(im, ax=ax, label=f"{value} mass")
    fig.tight_layout()
    return fig


def graph_figure(graph: nx.DiGraph, *, groups: Mapping[str, str] | None = None, title: str | None = None) -> Figure:
    """Draw the importance graph: classes on a circle (by semantic group), custom RoIs inside.

    Edge width is proportional to the weight; node colour is the semantic group; squares are custom
    RoIs ("aggregated twice"). The default title says how many of the candidate edges are kept and
    by which rule (``graph.graph["kept"]``, ``["candidates"]``, ``["rule"]``).
    """
    fig = Figure(figsize=(9, 9))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_aspect("equal")
    classes = _ordered([n for n, d in graph.nodes(data=True) if d.get("kind") != "roi"], groups, by_group=True)
    customs = _ordered([n for n, d in graph.nodes(data=True) if d.get("kind") == "roi"], groups)
    pos = {}
    for ring, names in ((1.0, classes), (0.45, customs)):
        for i, n in enumerate(names):
            ang = np.pi / 2 - 2 * np.pi * i / max(len(names), 1)
            pos[n] = (ring * np.cos(ang), ring * np.sin(ang)) if len(names) > 1 or ring == 1.0 else (0.0, 0.0)
    node_groups = {n: graph.nodes[n].get("group") or group_of(n, groups) for n in graph.nodes}
    colours = group_colours(sorted(set(node_groups.values()), key=lambda g: (g not in GROUP_COLOURS, g)))
    weights = [d.get("weight", 0.0) for _, _, d in graph.edges(data=True)]
    w_max = max(weights) if weights else 1.0
    for u, v, d in graph.edges(data=True):
        w = d.get("weight", 0.0) / w_max if w_max > 0 else 0
        ax.add_patch(FancyArrowPatch(pos[u], pos[v], arrowstyle="-|>", mutation_scale=12,
                                     connectionstyle="arc3,rad=0.18", lw=0.6 + 4.0 * w,
                                     color=colours[node_groups[u]], alpha=0.35 + 0.5 * w,
                                     shrinkA=9, shrinkB=9, zorder=1))
    for n, (x, y) in pos.items():
        ax.scatter([x], [y], s=260, marker="s" if n in customs else "o", color=colours[node_groups[n]],
                   edgecolors="black", linewidths=0.8, zorder=2)
        r = np.hypot(x, y)
        if n in customs or r == 0:
            ax.text(x, y - 0.09, n, ha="center", va="top", fontsize=8, zorder=3)
        else:
            ax.text(x * 1.1, y * 1.1, n, ha="left" if x > 0.05 else "right" if x < -0.05 else "center",
                    va="center", fontsize=8, zorder=3)
    ax.set_xlim(-1.65, 1.65)
    ax.set_ylim(-1.35, 1.35)
    handles = [Line2D([], [], marker="o", ls="", color=c, markeredgecolor="black", label=g)
               for g, c in colours.items()]
    if customs:
        handles.append(Line2D([], [], marker="s", ls="", color="white", markeredgecolor="black", label="custom RoI"))
    ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False)
    part = graph.graph.get("part", "")
    ax.set_title(title or f"Global RoI importance graph (edges RoI -> class, {part} mass)\n"
                 f"{graph_summary(graph)}", fontsize=10)
    return fig


def distribution_figure(local_df: pd.DataFrame, target: str, part: str = "abs", *,
                        groups: Mapping[str, str] | None = None, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> Figure:
    """Box plots of the per-case ``mass(target <- R)`` for every RoI, coloured by semantic group."""
    df = local_df[(local_df["target"] == target) & (local_df["part"] == part) & ~local_df["roi"].isin(exclude)]
    rois = _ordered(df["roi"].unique(), groups, by_group=True)
    data = [pd.to_numeric(df.loc[df["roi"] == r, "mass"], errors="coerce").dropna().to_numpy() for r in rois]
    roi_groups = [group_of(r, groups) for r in rois]
    colours = group_colours(sorted(set(roi_groups), key=lambda g: (g not in GROUP_COLOURS, g)))
    fig = Figure(figsize=(max(6.0, 0.45 * len(rois) + 2), 4.5))
    ax = fig.add_subplot()
    if rois:
        bp = ax.boxplot(data, patch_artist=True, widths=0.6, flierprops={"markersize": 3})
        for box, g in zip(bp["boxes"], roi_groups, strict=True):
            box.set_facecolor(colours[g])
            box.set_alpha(0.8)
        for med in bp["medians"]:
            med.set_color("black")
        ax.set_xticks(range(1, len(rois) + 1), rois, rotation=60, ha="right", fontsize=8)
        ax.legend(handles=[Patch(color=c, label=g) for g, c in colours.items()], fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    n_cases = df["case"].nunique()
    ax.set_ylabel(f"{part} mass")
    ax.set_title(f"Local RoI importance for target {target} ({n_cases} case{'s' if n_cases != 1 else ''})")
    fig.tight_layout()
    return fig


def spearman_figure(spearman_df: pd.DataFrame, scores: pd.DataFrame | None = None,
                    quality: pd.DataFrame | None = None, alpha: float = 0.05) -> Figure:
    """Bar chart of Spearman's rho (outlier score vs Dice) per target, significant bars marked ``*``.

    With ``scores`` and ``quality`` also a scatter of score vs Dice over all targets.
    """
    df = spearman_df.reset_index(drop=True)
    scatter = scores is not None and quality is not None
    fig = Figure(figsize=(max(6.0, 0.45 * len(df) + 2) + (5 if scatter else 0), 4.5))
    ax = fig.add_subplot(1, 2 if scatter else 1, 1)
    rho = pd.to_numeric(df["rho"], errors="coerce").to_numpy(dtype=float)
    p = pd.to_numeric(df["p"], errors="coerce").to_numpy(dtype=float)
    colours = ["tab:blue" if np.isfinite(v) and v >= 0 else "tab:red" for v in rho]
    x = np.arange(len(df))
    ax.bar(x, np.nan_to_num(rho), color=colours)
    for i, (r, pv) in enumerate(zip(rho, p, strict=True)):
        if np.isfinite(pv) and pv < alpha:
            ax.text(i, r + (0.02 if r >= 0 else -0.06), "*", ha="center", fontsize=12)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, df["target"], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman rho (score vs Dice)")
    ax.set_title(f"Outlier score vs Dice per target (* p < {alpha:g})")
    if scatter:
        ax2 = fig.add_subplot(1, 2, 2)
        merged = scores.merge(quality.rename(columns={"class": "target"}), on=["case", "target"], how="inner")
        ax2.scatter(merged["score"], merged["dice"], s=12,
                    c=np.where(merged["outlier"].astype(bool), "tab:red", "tab:blue"))
        ax2.set_xlabel("IsolationForest score (higher = more normal)")
        ax2.set_ylabel("Dice")
        ax2.set_title("All targets (red: flagged outliers)")
    fig.tight_layout()
    return fig
