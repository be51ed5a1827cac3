"""Self-contained HTML reports of one case and of a cohort (one file, PNG figures embedded as base64).

Case report (``agg2exp report CASE_DIR``): for every target class, the three-plane attribution
figure (SPEC §8) and its most important RoIs; the quality row of the case when ``quality.csv``
exists. The local importance is read from ``CASE_DIR/local_importance.csv`` or computed on the fly
(predicted RoIs) when that file is absent.

Cohort report (``agg2exp report --cohort DIR``) expects the output folder of ``agg2exp global``::

    DIR/global_importance.csv       required
    DIR/heatmap.png, DIR/graph.png  embedded (redrawn from global_importance.csv when missing)
    DIR/graph.graphml               used to redraw graph.png when missing
    DIR/distributions/<target>.png  all embedded
    DIR/local_importance.csv        optional: per-case table of the cohort (number of cases)
    DIR/outliers/scores.csv, spearman.csv, spearman.png
                                    optional: output of `agg2exp outliers --out DIR/outliers`
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import pandas as pd

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write_text
from napari_agg2exp.importance.global_importance import (
    DEFAULT_EXCLUDE,
    graph_summary,
    importance_graph,
)
from napari_agg2exp.importance.tables import GLOBAL_COLUMNS, read_local_table, read_table
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report
from napari_agg2exp.report.case_figures import case_figures
from napari_agg2exp.report.cohort_figures import figure_png, graph_figure, heatmap_figure

if TYPE_CHECKING:
    from napari_agg2exp.workflows.case_folder import CaseData

__all__ = ["REPORT_NAME", "case_report_html", "top_rois", "write_cohort_report"]

REPORT_NAME = "report.html"

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1250px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.meta { color: #555; font-size: .9em; } .note { color: #777; font-size: .85em; }
section.cls { display: grid; grid-template-columns: minmax(0, 3fr) minmax(220px, 1fr); gap: 1em; align-items: start; }
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="", float_format=lambda v: f"{v:.{digits}g}"
                      if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}")


def _page(title: str, body: list[str]) -> str:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(body)
        + f"\n<p class=\"note\">Written by napari-agg2exp on {stamp}. All figures are embedded in this file.</p>\n"
        "</body>\n</html>\n"
    )


def top_rois(local_df: pd.DataFrame, target: str, k: int = 5, part: str = "abs") -> pd.DataFrame:
    """The ``k`` RoIs with the largest ``part`` mass for one target, with mass per part and mean.

    Returns:
        Columns ``roi``, ``mass (abs)``, ``mass (pos)``, ``mass (neg)`` (those present) and
        ``mean (<part>)``, heaviest first.
    """
    df = local_df[local_df["target"] == target]
    if df.empty:
        return pd.DataFrame(columns=["roi"])
    mass = df.pivot_table(index="roi", columns="part", values="mass", aggfunc="first", dropna=False)
    mean = df[df["part"] == part].set_index("roi")["mean"]
    out = pd.DataFrame({"roi": mass.index})
    for p in ("abs", "pos", "neg"):
        if p in mass.columns:
            out[f"mass ({p})"] = mass[p].to_numpy()
    out[f"mean ({part})"] = mean.reindex(mass.index).to_numpy()
    key = f"mass ({part})" if f"mass ({part})" in out else out.columns[1]
    return out.sort_values(key, ascending=False, na_position="last").head(k).reset_index(drop=True)


def case_report_html(case: CaseData, local: pd.DataFrame, *, local_note: str = "", quality: pd.DataFrame | None = None,
                     targets: Iterable[str] | None = None, zero_background: bool = False, top: int = 5,
                     progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> str:
    """The HTML report of one loaded case.

    Args:
        case: a :class:`~napari_agg2exp.workflows.case_folder.CaseData` loaded with its image.
        local: its local importance table; ``local_note`` says where it came from.
        quality: its segmentation quality table, if any.
        targets: classes to include (default: every attribution map).
        zero_background: zero the maps where the prediction is background in the figures.
        top: RoIs listed per class.
        progress, cancel: progress callback and stop flag (one step per class).
    """
    names = list(targets) if targets is not None else list(case.attributions)
    info = case.info
    body = ['<p class="meta">', f"<b>case:</b> {html.escape(str(case.name))}<br>"]
    for key, label in (("method", "attribution method"), ("image", "image"), ("ground_truth", "ground truth")):
        if info.get(key):
            body.append(f"<b>{label}:</b> {html.escape(str(info[key]))}<br>")
    body.append(f"<b>grid:</b> {case.prediction.shape}, spacing "
                f"{', '.join(f'{s:.2f}' for s in case.prediction.spacing)} mm</p>")
    if quality is not None:
        q = quality
        body += ["<h2>Segmentation quality</h2>", _table(q[q["case"] == case.name] if (q["case"] == case.name).any()
                                                         else q)]
    body.append("<h2>Local RoI importance</h2>")
    body.append(f'<p class="note">Share of each class\'s attribution inside each RoI ({html.escape(local_note)}); '
                f"top {top} RoIs per class by |a| mass. Figures: blue-white-red attribution, limits at the 95th "
                "percentile of |a|, values under 1% of max |a| transparent, prediction outlined in yellow.</p>")
    for i, target in enumerate(names):
        check_cancel(cancel)
        report(progress, i, len(names), f"report: {target}")
        fig = case_figures(case, [target], zero_background=zero_background)[target]
        body.append(f"<h2>{html.escape(target)}</h2>")
        body.append(f'<section class="cls"><div>{_img(figure_png(fig), f"attribution for {target}")}</div>'
                    f"<div>{_table(top_rois(local, target, top))}</div></section>")
    report(progress, len(names), len(names), "report: done")
    return _page(f"Agg²Exp case report: {case.name}", body)


def _png_or_none(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _read_graph(path: Path) -> nx.DiGraph | None:
    if not path.exists():
        return None
    try:
        return nx.read_graphml(path)
    except Exception:  # noqa: BLE001 - an unreadable graph only loses the edge counts of the note
        return None


def _graph_note(graph: nx.DiGraph | None, part: str) -> str:
    text = (f"Edges RoI &rarr; class weighted by global importance (mean {html.escape(part)} mass). Candidate "
            f"edges: every RoI &rarr; class pair except {', '.join(DEFAULT_EXCLUDE)}, self-edges and joined RoIs "
            "into a RoI they contain")
    if graph is None or "kept" not in graph.graph:
        return text + "."
    return text + f"; {html.escape(graph_summary(graph))}."


def write_cohort_report(cohort_dir: str | os.PathLike, out_html: str | os.PathLike | None = None, *,
                        top: int = 5, part: str = "abs") -> Path:
    """Write the HTML report of a cohort folder (see the module docstring for the layout).

    Args:
        cohort_dir: output folder of ``agg2exp global`` (optionally with ``outliers/``).
        out_html: file to write (default ``DIR/report.html``; overwritten).
        top: RoIs listed per target.
        part: which part the tables rank by.

    Returns:
        The path of the HTML file.

    Raises:
        Agg2ExpError: the folder or its ``global_importance.csv`` is missing.
    """
    d = Path(cohort_dir)
    if not d.is_dir():
        raise Agg2ExpError(f"cohort folder not found: {d} -- give the --out folder of `agg2exp global`")
    gpath = d / "global_importance.csv"
    if not gpath.exists():
        raise Agg2ExpError(f"{d} has no global_importance.csv -- run `agg2exp global LOCAL.csv ... --out {d}` first")
    gdf = read_table(gpath, GLOBAL_COLUMNS, what="global importance table",
                     numeric=("mean", "median", "std", "q25", "q75", "n"))
    if part not in set(gdf["part"]):
        part = str(gdf["part"].iloc[0]) if len(gdf) else part
    body = [f'<p class="meta"><b>cohort folder:</b> {html.escape(d.name)}<br>']
    local_path = d / "local_importance.csv"
    if local_path.exists():
        local = read_local_table(local_path)
        body.append(f"<b>cases:</b> {local['case'].nunique()}<br>")
    n_max = int(pd.to_numeric(gdf["n"], errors="coerce").max()) if len(gdf) else 0
    body.append(f"<b>targets:</b> {gdf['target'].nunique()}, <b>RoIs:</b> {gdf['roi'].nunique()}, "
                f"<b>cases per (target, RoI):</b> up to {n_max}</p>")

    heat = _png_or_none(d / "heatmap.png") or figure_png(heatmap_figure(gdf, part))
    body += ["<h2>Global RoI importance</h2>",
             (f'<p class="note">Mean over cases of the share of each target\'s attribution ({part}) inside each '
              "RoI.</p>"), _img(heat, "global importance heatmap")]
    graph = _read_graph(d / "graph.graphml")  # what `agg2exp global` kept: its rule and counts
    graph_png = _png_or_none(d / "graph.png")
    if graph_png is None:
        graph = graph if graph is not None else importance_graph(gdf, part)
        graph_png = figure_png(graph_figure(graph))
    graph_part = str(graph.graph.get("part", part)) if graph is not None else part
    body += ["<h2>Importance graph</h2>", f'<p class="note">{_graph_note(graph, graph_part)}</p>',
             _img(graph_png, "importance graph")]

    rows = []
    for target in pd.unique(gdf["target"]):
        g = gdf[(gdf["target"] == target) & (gdf["part"] == part)].sort_values("mean", ascending=False).head(top)
        for _, r in g.iterrows():
            rows.append({"target": target, "roi": r["roi"], "mean": r["mean"], "median": r["median"],
                         "std": r["std"], "n": r["n"]})
    body += [f"<h2>Top {top} RoIs per target</h2>", _table(pd.DataFrame(rows))]

    dist_dir = d / "distributions"
    dists = sorted(dist_dir.glob("*.png")) if dist_dir.is_dir() else []
    if dists:
        body.append("<h2>Distributions over cases</h2>")
        body += [_img(p.read_bytes(), f"distribution for {p.stem}") for p in dists]

    out_dir = d / "outliers"
    if out_dir.is_dir():
        body.append("<h2>Outlier analysis</h2>")
        sp = out_dir / "spearman.csv"
        if sp.exists():
            body += [('<p class="note">Spearman correlation between IsolationForest score (higher = more normal) '
                      "and Dice, per target.</p>"), _table(read_table(sp, ("target", "rho", "p", "n")))]
        png = _png_or_none(out_dir / "spearman.png")
        if png is not None:
            body.append(_img(png, "spearman correlations"))
        sc = out_dir / "scores.csv"
        if sc.exists():
            scores = read_table(sc, ("case", "target", "score", "outlier"), numeric=("score",))
            flagged = scores[scores["outlier"].astype(str).str.lower().isin(["true", "1"])]
            body += [f"<p>{len(flagged)} of {len(scores)} (case, target) pairs flagged as outliers; lowest scores:</p>",
                     _table(scores.sort_values("score").head(10))]
    out = Path(out_html) if out_html is not None else d / REPORT_NAME
    atomic_write_text(out, _page(f"Agg²Exp cohort report: {d.name}", body))
    return out
