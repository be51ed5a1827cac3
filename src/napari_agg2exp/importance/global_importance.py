"""Global RoI importance over a cohort and the class-to-RoI importance graph (SPEC §5).

``G(c <- R)`` is the mean over cases of ``mass(c <- R)``; the summary also has the median, the
standard deviation (ddof = 1; missing with a single case), the quartiles and ``n``, the number of
cases where the mass is defined (a missing mass, e.g. ``neg`` of a map without negative values, is
left out rather than counted as 0).

The graph has one node per class and per custom RoI (a RoI that is not a class, e.g. a nodule or a
joined ``lung``: "aggregated twice"), and directed edges ``R -> c`` weighted by ``G(c <- R)``.
Pruning, per target ``c``: candidate edges are sorted by weight (heaviest first, ties by RoI name)
and kept while their cumulative weight stays <= ``keep_mass``; the heaviest edge is always kept
(``min_edges=1``) so that no target is left without an explanation when one RoI alone carries more
than ``keep_mass``. Excluded names (``background``, and ``none``, label 0 of the pathology
vocabulary) are neither nodes nor edge ends; self-edges ``c -> c`` are left out by default (the
class's own region is read from the heatmap; the graph shows what *else* a class relies on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from napari_agg2exp.data.labels import SEMANTIC_GROUPS, THORAX_LABELS
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write
from napari_agg2exp.importance.local import look_up_part
from napari_agg2exp.importance.tables import GLOBAL_COLUMNS, LOCAL_COLUMNS, validate_columns

__all__ = [
    "DEFAULT_EXCLUDE",
    "global_importance",
    "group_of",
    "importance_graph",
    "prune_edges",
    "read_groups",
    "write_graphml",
]

#: Names never shown in the graph and the cohort figures (label 0 of the bundled vocabularies).
DEFAULT_EXCLUDE: tuple[str, ...] = ("background", "none")


def global_importance(local_df: pd.DataFrame, part: str | None = None) -> pd.DataFrame:
    """Summarise a cohort's local importance per ``(target, roi, part)``.

    Args:
        local_df: long table ``case,target,roi,part,mass,mean`` of several cases.
        part: keep only this part (default: all parts present).

    Returns:
        Table ``target,roi,part,mean,median,std,q25,q75,n`` of ``mass``, groups in order of first
        appearance.

    Raises:
        Agg2ExpError: missing columns, or no row for ``part``.
    """
    validate_columns(local_df, LOCAL_COLUMNS, "(data frame)", "local importance table")
    df = local_df
    if part is not None:
        part = look_up_part(part)
        df = df[df["part"] == part]
        if df.empty:
            raise Agg2ExpError(f"the local importance table has no row with part {part!r} -- parts present: "
                               f"{sorted(local_df['part'].unique())}")
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("target", "roi", "part") else float)
                             for c in GLOBAL_COLUMNS})
    mass = df.assign(mass=pd.to_numeric(df["mass"], errors="coerce")).groupby(
        ["target", "roi", "part"], sort=False)["mass"]
    out = pd.DataFrame({
        "mean": mass.mean(),
        "median": mass.median(),
        "std": mass.std(ddof=1),
        "q25": mass.quantile(0.25),
        "q75": mass.quantile(0.75),
        "n": mass.count().astype(int),
    }).reset_index()
    return out[list(GLOBAL_COLUMNS)]


def read_groups(path: str | os.PathLike) -> dict[str, str]:
    """Read a RoI grouping JSON ``{"roi name": "group", ...}`` (overrides the default grouping).

    Raises:
        Agg2ExpError: missing file, invalid JSON, or not an object of strings.
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError as e:
        raise Agg2ExpError(f"groups file not found: {p} -- check the path") from e
    except (OSError, json.JSONDecodeError) as e:
        raise Agg2ExpError(f"groups file {p} is not valid JSON ({e}) -- expected {{\"aorta\": \"cardiovascular\", "
                           "...}}") from e
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise Agg2ExpError(f"groups file {p} must map RoI names to group names, e.g. {{\"nodule\": \"pathology\"}}")
    return {str(k): v for k, v in raw.items()}


def group_of(name: str, groups: Mapping[str, str] | None = None) -> str:
    """Semantic group of a RoI: ``groups`` first, then the default thorax grouping, else ``other``."""
    if groups and name in groups:
        return groups[name]
    return SEMANTIC_GROUPS.get(name, "other")


def prune_edges(weights: Mapping[str, float], keep_mass: float = 0.35, min_edges: int = 1) -> list[str]:
    """The RoIs whose edges into one target are kept.

    Args:
        weights: RoI -> edge weight for one target (non-positive or missing weights are dropped).
        keep_mass: keep the heaviest edges while their cumulative weight is <= this.
        min_edges: keep at least this many of the heaviest edges regardless.

    Returns:
        Kept RoI names, heaviest first (ties broken by name).
    """
    if not 0 <= keep_mass <= 1:
        raise Agg2ExpError(f"keep_mass must be within [0, 1], got {keep_mass}")
    items = sorted(((r, float(w)) for r, w in weights.items() if w is not None and np.isfinite(w) and w > 0),
                   key=lambda rw: (-rw[1], rw[0]))
    kept, total = [], 0.0
    for r, w in items:
        if total + w <= keep_mass + 1e-12 or len(kept) < min_edges:
            kept.append(r)
            total += w
        else:
            break
    return kept


def class_order(names: Iterable[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(THORAX_LABELS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def importance_graph(
    global_df: pd.DataFrame,
    part: str = "abs",
    keep_mass: float = 0.35,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    *,
    classes: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    self_loops: bool = False,
    min_edges: int = 1,
) -> nx.DiGraph:
    """The class-to-RoI importance graph (SPEC §5).

    Args:
        global_df: table from :func:`global_importance` (columns ``target,roi,part,mean``; ``n``
            is copied onto the edges when present).
        part: which part's global importance weights the edges.
        keep_mass: per target, keep the heaviest incoming edges while their cumulative weight is
            <= ``keep_mass`` (see :func:`prune_edges`).
        exclude: names that are neither nodes nor edge ends.
        classes: class names (node ``kind`` = ``class``); other RoIs are ``kind`` = ``roi``.
            Default: the targets and the 17 thorax labels.
        groups: RoI -> semantic group overrides (node attribute ``group``).
        self_loops: also keep edges ``c -> c``.
        min_edges: per target, keep at least this many edges.

    Returns:
        ``networkx.DiGraph`` with node attributes ``kind``, ``group`` and edge attributes ``weight``
        (and ``n``); graph attributes ``part`` and ``keep_mass``.
    """
    validate_columns(global_df, ("target", "roi", "part", "mean"), "(data frame)", "global importance table")
    part = look_up_part(part)
    df = global_df[global_df["part"] == part]
    if df.empty:
        raise Agg2ExpError(f"the global importance table has no row with part {part!r} -- parts present: "
                           f"{sorted(global_df['part'].unique())}")
    skip = set(exclude)
    targets = [t for t in class_order(df["target"].unique()) if t not in skip]
    class_set = set(targets) | set(classes if classes is not None else THORAX_LABELS)
    rois = [r for r in class_order(df["roi"].unique()) if r not in skip]

    g = nx.DiGraph(part=part, keep_mass=float(keep_mass))
    for name in class_order(set(targets) | set(rois)):
        g.add_node(name, kind="class" if name in class_set else "roi", group=group_of(name, groups))
    has_n = "n" in df.columns
    for target in targets:
        rows = df[(df["target"] == target) & ~df["roi"].isin(skip)]
        if not self_loops:
            rows = rows[rows["roi"] != target]
        weights = dict(zip(rows["roi"], pd.to_numeric(rows["mean"], errors="coerce"), strict=True))
        n_by_roi = dict(zip(rows["roi"], rows["n"], strict=True)) if has_n else {}
        for roi in prune_edges(weights, keep_mass, min_edges):
            attrs = {"weight": float(weights[roi])}
            if has_n:
                attrs["n"] = int(n_by_roi[roi])
            g.add_edge(roi, target, **attrs)
    return g


def write_graphml(graph: nx.Graph, path: str | os.PathLike) -> Path:
    """Write a graph as GraphML atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: nx.write_graphml(graph, tmp))
