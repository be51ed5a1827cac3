"""Global RoI importance over a cohort and the class-to-RoI importance graph (SPEC §5).

``G(c <- R)`` is the mean over cases of ``mass(c <- R)``; the summary also has the median, the
standard deviation (ddof = 1; missing with a single case), the quartiles and ``n``, the number of
cases where the mass is defined (a missing mass, e.g. ``neg`` of a map without negative values, is
left out rather than counted as 0).

The graph has one node per class and per custom RoI (a RoI that is not a class, e.g. a nodule or a
joined ``lung``: "aggregated twice"), and directed edges ``R -> c`` weighted by ``G(c <- R)``.

Candidate edges (:func:`candidate_edges`): every RoI -> class pair with a positive weight, except

* excluded names (``background``, and ``none``, label 0 of the pathology vocabulary: neither nodes
  nor edge ends). Background holds 67-77 % of every class's mass, which is why a threshold on the
  *raw* cumulative mass kept nearly every edge;
* self-edges ``c -> c`` (the class's own region is read from the heatmap; the graph shows what
  *else* a class relies on), unless ``self_loops``;
* a joined RoI into one of its members (``lung -> lung_upper_lobe_left``): its mass contains the
  member's own mass, which would be counted twice. Joined RoIs are known from their definition,
  recorded by whoever computed the local table (column ``members``, see
  :func:`~napari_agg2exp.importance.tables.join_members`), never guessed from names.

Which candidates are kept (:class:`KeepRule`, one of three):

* ``keep_fraction`` (default 1/3): the heaviest ``round(fraction * n)`` of the ``n`` candidates,
  ranked over the whole graph (the paper shows "about one-third of the most important edges");
* ``top_k``: per target, its ``k`` heaviest candidates;
* ``keep_mass``: per target, the heaviest candidates while their cumulative share *among that
  target's candidates* stays <= ``keep_mass``; the heaviest is always kept (``min_edges=1``).

Ties are broken by RoI name, then target name. The graph records ``rule``, ``rule_value``,
``kept`` and ``candidates`` (``graph.graph``; also in GraphML).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from napari_agg2exp.data.labels import SEMANTIC_GROUPS, THORAX_LABELS
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write
from napari_agg2exp.importance.local import look_up_part
from napari_agg2exp.importance.tables import (
    GLOBAL_COLUMNS,
    LOCAL_COLUMNS,
    join_members,
    validate_columns,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_KEEP_FRACTION",
    "KEEP_RULES",
    "KeepRule",
    "candidate_edges",
    "global_importance",
    "graph_summary",
    "group_of",
    "importance_graph",
    "keep_rule",
    "prune_edges",
    "read_groups",
    "select_edges",
    "write_graphml",
]

#: Names never shown in the graph and the cohort figures (label 0 of the bundled vocabularies).
DEFAULT_EXCLUDE: tuple[str, ...] = ("background", "none")
#: Share of the candidate edges the graph keeps by default ("about one-third of the most important edges").
DEFAULT_KEEP_FRACTION: float = 1 / 3
#: The three keep rules: heaviest fraction over the whole graph, top k per target, cumulative share per target.
KEEP_RULES: tuple[str, ...] = ("keep_fraction", "top_k", "keep_mass")


def global_importance(local_df: pd.DataFrame, part: str | None = None) -> pd.DataFrame:
    """Summarise a cohort's local importance per ``(target, roi, part)``.

    Args:
        local_df: long table ``case,target,roi,part,mass,mean`` of several cases.
        part: keep only this part (default: all parts present).

    Returns:
        Table ``target,roi,part,mean,median,std,q25,q75,n`` of ``mass``, groups in order of first
        appearance; ``attrs["joins"]`` holds the joined RoIs recorded in ``local_df`` (see
        :func:`~napari_agg2exp.importance.tables.join_members`), which :func:`importance_graph` uses.

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
    joins = join_members(local_df)
    if df.empty:
        empty = pd.DataFrame({c: pd.Series(dtype=object if c in ("target", "roi", "part") else float)
                              for c in GLOBAL_COLUMNS})
        empty.attrs["joins"] = joins
        return empty
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
    out = out[list(GLOBAL_COLUMNS)]
    out.attrs["joins"] = joins
    return out


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


def _fraction_text(value: float) -> str:
    frac = Fraction(value).limit_denominator(12)
    if frac.denominator > 1 and abs(float(frac) - value) < 1e-9:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{value:g}"


@dataclass(frozen=True)
class KeepRule:
    """Which candidate edges the graph keeps (see the module docstring); build it with :func:`keep_rule`.

    Attributes:
        name: ``keep_fraction``, ``top_k`` or ``keep_mass``.
        value: the fraction, ``k`` or the cumulative share.
    """

    name: str
    value: float

    def describe(self) -> str:
        """A short phrase for figures and messages, e.g. ``heaviest 1/3 of all candidates``."""
        if self.name == "keep_fraction":
            return f"heaviest {_fraction_text(self.value)} of all candidates"
        if self.name == "top_k":
            return f"top {int(self.value)} per class"
        return f"cumulative share <= {self.value:g} per class"

    def kwargs(self) -> dict[str, float]:
        """``{name: value}``, the keyword argument of :func:`importance_graph` giving this rule."""
        return {self.name: int(self.value) if self.name == "top_k" else self.value}


def keep_rule(keep_fraction: float | None = None, top_k: int | None = None,
              keep_mass: float | None = None) -> KeepRule:
    """Check the keep options (at most one of them) and return the rule; none given: ``keep_fraction=1/3``.

    Raises:
        Agg2ExpError: more than one option, or a value out of range (fraction within (0, 1], ``k`` an
            integer >= 1, share within [0, 1]).
    """
    given = {k: v for k, v in (("keep_fraction", keep_fraction), ("top_k", top_k), ("keep_mass", keep_mass))
             if v is not None}
    if len(given) > 1:
        names = " and ".join(f"--{k.replace('_', '-')}" for k in given)
        raise Agg2ExpError(f"give at most one edge rule, not {names} -- --keep-fraction (the heaviest share of all "
                           "candidate edges, default 1/3), --top-k (per class) or --keep-mass (cumulative share "
                           "per class); in Python keep_fraction, top_k or keep_mass")
    if not given:
        return KeepRule("keep_fraction", DEFAULT_KEEP_FRACTION)
    name, raw = next(iter(given.items()))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if name == "keep_fraction" and not (0 < value <= 1):
        raise Agg2ExpError(f"keep_fraction (--keep-fraction) must be within (0, 1], got {raw!r} -- e.g. 1/3 keeps "
                           "the heaviest third of the candidate edges")
    integral = (isinstance(raw, (int, np.integer)) and not isinstance(raw, bool)) or (
        isinstance(raw, float) and raw.is_integer())
    if name == "top_k" and not (integral and value >= 1):
        raise Agg2ExpError(f"top_k (--top-k) must be an integer >= 1, got {raw!r} -- e.g. 3 keeps each class's 3 "
                           "heaviest incoming edges")
    if name == "keep_mass" and not (0 <= value <= 1):
        raise Agg2ExpError(f"keep_mass (--keep-mass) must be within [0, 1], got {raw!r} -- a cumulative share of "
                           "each class's candidate edges, e.g. 0.5")
    return KeepRule(name, value)


def _expanded_members(joins: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """Joined RoI -> every RoI it contains (members of member joins included)."""
    out: dict[str, set[str]] = {}
    for name in joins:
        seen, todo = set(), list(joins[name])
        while todo:
            m = todo.pop()
            if m in seen or m == name:
                continue
            seen.add(m)
            todo.extend(joins.get(m, ()))
        out[name] = seen
    return out


def candidate_edges(
    global_df: pd.DataFrame,
    part: str = "abs",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    *,
    joins: Mapping[str, Sequence[str]] | None = None,
    self_loops: bool = False,
) -> pd.DataFrame:
    """The candidate edges of the importance graph, heaviest first (ties by RoI, then target name).

    Args:
        global_df: table from :func:`global_importance` (``n`` is copied when present).
        part: which part's global importance weights the edges.
        exclude: names that are neither edge ends nor nodes.
        joins: joined RoIs ``{name: (member, ...)}``; an edge from a joined RoI into a RoI it contains
            is no candidate. Default: ``global_df.attrs["joins"]`` (none when absent).
        self_loops: also take edges ``c -> c``.

    Returns:
        Table ``roi,target,weight`` (and ``n``) of the pairs with a positive finite weight.
    """
    validate_columns(global_df, ("target", "roi", "part", "mean"), "(data frame)", "global importance table")
    if joins is None:
        joins = global_df.attrs.get("joins") or {}
    part = look_up_part(part)
    df = global_df[global_df["part"] == part]
    if df.empty:
        raise Agg2ExpError(f"the global importance table has no row with part {part!r} -- parts present: "
                           f"{sorted(global_df['part'].unique())}")
    skip = set(exclude)
    contains = _expanded_members(joins)
    cols = ["roi", "target", "mean"] + (["n"] if "n" in df.columns else [])
    out = df[cols].rename(columns={"mean": "weight"}).copy()
    out["weight"] = pd.to_numeric(out["weight"], errors="coerce")
    keep = ~out["roi"].isin(skip) & ~out["target"].isin(skip) & np.isfinite(out["weight"]) & (out["weight"] > 0)
    if not self_loops:
        keep &= out["roi"] != out["target"]
    keep &= np.array([t not in contains.get(r, ()) for r, t in zip(out["roi"], out["target"], strict=True)],
                     dtype=bool)
    out = out[keep].drop_duplicates(["roi", "target"])
    out = out.sort_values(["weight", "roi", "target"], ascending=[False, True, True], kind="mergesort")
    return out.reset_index(drop=True)


def select_edges(candidates: pd.DataFrame, rule: KeepRule | None = None, *, min_edges: int = 1) -> pd.DataFrame:
    """The kept candidate edges under ``rule`` (default: the heaviest third of all candidates).

    Args:
        candidates: table ``roi,target,weight`` (e.g. from :func:`candidate_edges`).
        rule: from :func:`keep_rule`.
        min_edges: ``keep_mass`` rule only: per target, keep at least this many of its heaviest edges.

    Returns:
        The kept rows, heaviest first (ties by RoI, then target name).
    """
    rule = rule or keep_rule()
    c = candidates.assign(weight=pd.to_numeric(candidates["weight"], errors="coerce"))
    c = c[np.isfinite(c["weight"]) & (c["weight"] > 0)]
    c = c.sort_values(["weight", "roi", "target"], ascending=[False, True, True], kind="mergesort")
    if rule.name == "keep_fraction":
        n_keep = math.floor(rule.value * len(c) + 0.5) if len(c) else 0
        return c.head(max(n_keep, 1 if len(c) else 0)).reset_index(drop=True)
    by_target = c.groupby("target", sort=False)
    rank = by_target.cumcount()
    if rule.name == "top_k":
        return c[rank < int(rule.value)].reset_index(drop=True)
    share = c["weight"] / by_target["weight"].transform("sum")
    cum = share.groupby(c["target"], sort=False).cumsum()
    return c[(cum <= rule.value + 1e-12) | (rank < min_edges)].reset_index(drop=True)


def prune_edges(weights: Mapping[str, float], keep_mass: float | None = None, min_edges: int = 1, *,
                top_k: int | None = None, keep_fraction: float | None = None) -> list[str]:
    """The RoIs whose edges into one target are kept (one target's candidates; see :func:`select_edges`).

    Args:
        weights: RoI -> edge weight for one target (non-positive or missing weights are dropped).
        keep_mass: keep the heaviest edges while their cumulative share of ``weights`` is <= this.
        min_edges: ``keep_mass`` only: keep at least this many of the heaviest edges regardless.
        top_k: keep the ``k`` heaviest edges.
        keep_fraction: keep the heaviest ``round(fraction * n)`` of the ``n`` edges (the default, 1/3,
            when no rule is given).

    Returns:
        Kept RoI names, heaviest first (ties broken by name).
    """
    rule = keep_rule(keep_fraction, top_k, keep_mass)
    table = pd.DataFrame({"roi": [str(r) for r in weights], "target": "",
                          "weight": pd.to_numeric(pd.Series(list(weights.values()), dtype=object), errors="coerce")})
    return list(select_edges(table, rule, min_edges=min_edges)["roi"])


def class_order(names: Iterable[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(THORAX_LABELS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def importance_graph(
    global_df: pd.DataFrame,
    part: str = "abs",
    keep_mass: float | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    *,
    keep_fraction: float | None = None,
    top_k: int | None = None,
    joins: Mapping[str, Sequence[str]] | None = None,
    classes: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    self_loops: bool = False,
    min_edges: int = 1,
) -> nx.DiGraph:
    """The class-to-RoI importance graph (SPEC §5).

    Give at most one of ``keep_fraction``, ``top_k`` and ``keep_mass`` (default: ``keep_fraction=1/3``).

    Args:
        global_df: table from :func:`global_importance` (columns ``target,roi,part,mean``; ``n``
            is copied onto the edges when present).
        part: which part's global importance weights the edges.
        keep_mass: per target, keep the heaviest candidates while their cumulative share among that
            target's candidates is <= ``keep_mass`` (the heaviest always, see ``min_edges``).
        exclude: names that are neither nodes nor edge ends.
        keep_fraction: keep the heaviest ``round(keep_fraction * n)`` of all ``n`` candidate edges.
        top_k: per target, keep its ``top_k`` heaviest candidates.
        joins: joined RoIs ``{name: (member, ...)}`` (no edge from a joined RoI into a RoI it
            contains). Default: ``global_df.attrs["joins"]``, set by :func:`global_importance` from
            the local table's ``members`` column.
        classes: class names (node ``kind`` = ``class``); other RoIs are ``kind`` = ``roi``.
            Default: the targets and the 17 thorax labels.
        groups: RoI -> semantic group overrides (node attribute ``group``).
        self_loops: also keep edges ``c -> c``.
        min_edges: ``keep_mass`` rule: per target, keep at least this many edges.

    Returns:
        ``networkx.DiGraph`` with node attributes ``kind``, ``group`` (and ``members`` for joined
        RoIs), edge attributes ``weight`` (and ``n``); graph attributes ``part``, ``rule``,
        ``rule_value``, ``<rule>`` (its value), ``kept``, ``candidates`` and ``joins`` (JSON text).

    Raises:
        Agg2ExpError: missing columns, no row for ``part``, or an invalid keep rule.
    """
    rule = keep_rule(keep_fraction, top_k, keep_mass)
    validate_columns(global_df, ("target", "roi", "part", "mean"), "(data frame)", "global importance table")
    if joins is None:
        joins = global_df.attrs.get("joins") or {}
    joins = {str(k): tuple(str(m) for m in v) for k, v in joins.items()}
    cands = candidate_edges(global_df, part, exclude, joins=joins, self_loops=self_loops)
    kept = select_edges(cands, rule, min_edges=min_edges)
    part = look_up_part(part)
    df = global_df[global_df["part"] == part]
    skip = set(exclude)
    targets = [t for t in class_order(df["target"].unique()) if t not in skip]
    class_set = set(targets) | set(classes if classes is not None else THORAX_LABELS)
    rois = [r for r in class_order(df["roi"].unique()) if r not in skip]

    g = nx.DiGraph(part=part, rule=rule.name, rule_value=float(rule.value), kept=len(kept), candidates=len(cands),
                   joins=json.dumps({k: list(v) for k, v in joins.items()}))
    g.graph[rule.name] = int(rule.value) if rule.name == "top_k" else float(rule.value)
    for name in class_order(set(targets) | set(rois)):
        attrs = {"kind": "class" if name in class_set else "roi", "group": group_of(name, groups)}
        if name in joins:
            attrs["members"] = ",".join(joins[name])
        g.add_node(name, **attrs)
    has_n = "n" in kept.columns
    for row in kept.itertuples(index=False):
        attrs = {"weight": float(row.weight)}
        if has_n and pd.notna(row.n):
            attrs["n"] = int(row.n)
        g.add_edge(row.roi, row.target, **attrs)
    return g


def graph_summary(graph: nx.Graph) -> str:
    """``"80 of 240 candidate edges kept (heaviest 1/3 of all candidates)"`` from the graph's attributes.

    Works on a graph read back from GraphML; a graph without the counts gives its number of edges.
    """
    a = graph.graph
    if "kept" not in a or "candidates" not in a:
        return f"{graph.number_of_edges()} edges"
    text = f"{int(a['kept'])} of {int(a['candidates'])} candidate edges kept"
    if a.get("rule") in KEEP_RULES and a.get("rule_value") is not None:
        text += f" ({KeepRule(str(a['rule']), float(a['rule_value'])).describe()})"
    return text


def write_graphml(graph: nx.Graph, path: str | os.PathLike) -> Path:
    """Write a graph as GraphML atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: nx.write_graphml(graph, tmp))
