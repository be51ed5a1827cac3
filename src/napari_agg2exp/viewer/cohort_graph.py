"""Cohorts: local importance of several scans (run here or read from tables), their global
importance graph (SPEC §5), and showing it in the "Cohort & graph" dock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.importance.global_importance import KeepRule, global_importance, keep_rule
from napari_agg2exp.importance.global_importance import importance_graph as _graph
from napari_agg2exp.importance.tables import join_members
from napari_agg2exp.progress import SubProgress, check_cancel
from napari_agg2exp.viewer.docks import cohort_section
from napari_agg2exp.viewer.jobs import Job, model_for
from napari_agg2exp.viewer.layer_lookup import get_image_layer, image_layers
from napari_agg2exp.viewer.layers import layer_volume
from napari_agg2exp.viewer.session import session
from napari_agg2exp.workflows.case import run_case
from napari_agg2exp.workflows.case_importance import read_local_importance
from napari_agg2exp.workflows.discover import discover_cases

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_agg2exp.models.loading import SegmentationModel

__all__ = ["GraphResult", "cohort", "cohort_job", "cohort_table", "importance_graph", "load_tables", "show_graph"]


def cohort_job(viewer: napari.Viewer, images: Sequence[napari.layers.Image | str] | str | Path | None = None,
               method: str = "vg", model: SegmentationModel | str | Path | None = None, *,
               parts: Sequence[str] = ("abs", "pos", "neg"), **params: Any) -> Job:
    """Job running a small cohort: explain every scan and compute its local importance with the
    predicted RoIs; no layer is added. ``apply`` returns the cohort table (one case per scan).

    Args:
        images: None (every open scan), a list of Image layers / names, or a cohort folder / manifest in
            any layout of :func:`~napari_agg2exp.workflows.discover.discover_cases` (``case_XXXX/image.nii.gz``
            as ``agg2exp phantom`` writes, flat ``<case>.nii.gz`` files, a ``case,image`` manifest CSV).
        method, model, **params: as in :func:`~napari_agg2exp.viewer.jobs.explain_job` (targets: all
            present classes).
    """
    explainer = Explainer(method, **params)
    state = session(viewer)
    if isinstance(images, (str, Path)) and not (isinstance(images, str) and images in viewer.layers):
        sources: list = [(row["case"], Path(row["image"])) for row in discover_cases(images)]
    else:
        layers = image_layers(viewer) if images is None else [get_image_layer(viewer, i) for i in images]
        if not layers:
            raise Agg2ExpError("no image layer is open -- open scans or give a folder of NIfTI scans")
        sources = [layer_volume(ly) for ly in layers]

    def compute(progress, cancel):
        m, new = model_for(state, model)
        frames = []
        for i, src in enumerate(sources):
            check_cancel(cancel)
            case, vol = (src[0], load_volume(src[1])) if isinstance(src, tuple) else (src.name or f"case{i}", src)
            sub = SubProgress(progress, 100 * i, 100, 100 * len(sources))
            res = run_case(m, vol, case=case, explainer=explainer, progress=sub, cancel=cancel)
            frames.append(res.local_importance[res.local_importance["part"].isin(parts)])
        return m, new, pd.concat(frames, ignore_index=True)

    def apply(result):
        m, new, table = result
        if new:
            state.set_model(m)
        state.cohort = table
        state.tables_changed.emit()
        return table

    return Job(f"Cohort of {len(sources)} scan{'s' if len(sources) != 1 else ''}", compute, apply)


def cohort(viewer: napari.Viewer, images: Sequence[napari.layers.Image | str] | str | Path | None = None,
           method: str = "vg", model: SegmentationModel | str | Path | None = None,
           **kwargs: Any) -> pd.DataFrame:
    """Run a small cohort (see :func:`cohort_job`); returns its local importance table."""
    return cohort_job(viewer, images, method, model, **kwargs).run()


def load_tables(viewer: napari.Viewer, paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read local importance tables (CSV/Parquet), case folders or cohort folders into the session;
    returns the combined table."""
    table = read_local_importance([str(p) for p in paths])
    state = session(viewer)
    state.cohort = table
    state.tables_changed.emit()
    return table


def cohort_table(viewer: napari.Viewer) -> pd.DataFrame:
    """The cohort table to show: the last loaded / run cohort, else this session's prediction tables.

    Raises:
        Agg2ExpError: there is none yet.
    """
    state = session(viewer)
    table = state.cohort if state.cohort is not None else state.session_table()
    if table is None or len(table) == 0:
        raise Agg2ExpError("no local importance table yet -- compute RoI importance, run a cohort or load tables")
    return table


@dataclass
class GraphResult:
    """Global importance of a cohort, its graph (networkx) and the parameters used."""

    local: Any
    global_: Any
    graph: Any
    part: str
    rule: KeepRule

    @property
    def keep_mass(self) -> float | None:
        """The cumulative share per class when that rule was used, else None."""
        return self.rule.value if self.rule.name == "keep_mass" else None

    @property
    def kept(self) -> int:
        """Number of edges kept."""
        return int(self.graph.graph.get("kept", self.graph.number_of_edges()))

    @property
    def candidates(self) -> int:
        """Number of candidate edges."""
        return int(self.graph.graph.get("candidates", self.graph.number_of_edges()))


def importance_graph(table: pd.DataFrame, part: str = "abs", keep_mass: float | None = None,
                     groups: Mapping[str, str] | None = None, *, keep_fraction: float | None = None,
                     top_k: int | None = None) -> GraphResult:
    """Global importance (SPEC §5) and the class-to-RoI graph of a local importance table.

    One of ``keep_fraction`` (default 1/3 of all candidate edges), ``top_k`` (per class) or
    ``keep_mass`` (cumulative share per class); joined RoIs recorded in the table (its ``members``
    column) send no edge into a RoI they contain.
    """
    rule = keep_rule(keep_fraction, top_k, keep_mass)
    g = global_importance(table)
    graph = _graph(g, part=part, groups=groups, joins=join_members(table), **rule.kwargs())
    return GraphResult(table, g, graph, part, rule)


def show_graph(viewer: napari.Viewer, tables: pd.DataFrame | str | Path | Sequence[str | Path] | None = None, *,
               part: str = "abs", keep_mass: float | None = None, keep_fraction: float | None = None,
               top_k: int | None = None) -> GraphResult | None:
    """Show the importance graph and the distribution plots in the results dock (the Cohort section
    of the main panel when it is open, else the "Cohort & graph" dock draws them).

    Args:
        tables: None (the session's cohort / RoI tables), a local importance DataFrame, or paths of
            local importance CSV files.
        part: graph option (SPEC §5).
        keep_fraction, top_k, keep_mass: the edge rule, at most one (default: the heaviest third of
            all candidate edges); see :func:`importance_graph`.

    Returns:
        The :class:`GraphResult` drawn.
    """
    if tables is not None:
        if isinstance(tables, pd.DataFrame):
            state = session(viewer)
            state.cohort = tables
            state.tables_changed.emit()
        else:
            load_tables(viewer, [tables] if isinstance(tables, (str, Path)) else list(tables))
    return cohort_section(viewer).draw(part=part, keep_mass=keep_mass, keep_fraction=keep_fraction, top_k=top_k)
