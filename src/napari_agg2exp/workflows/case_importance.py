"""Local RoI importance of a case folder: predicted, ground-truth, custom and joined RoIs (SPEC §4)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_agg2exp.data.geometry import label_occupancy, resample_labels
from napari_agg2exp.data.labels import as_label_array, read_label_names
from napari_agg2exp.data.volume import Volume, load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.importance.local import (
    local_importance,
    occupancy_local_importance,
    parse_joins,
    roi_name_map,
)
from napari_agg2exp.importance.tables import (
    PARTS,
    join_members,
    read_local_tables,
    with_join_members,
    write_table,
)
from napari_agg2exp.progress import CancelFlag, ProgressCallback
from napari_agg2exp.workflows.case_folder import LOCAL_TABLE, CaseData, CaseFolder, is_case_folder, load_case

__all__ = ["case_local_importance", "read_local_importance", "write_local_importance"]


def _rois_for(case: CaseData, rois, roi_names, ground_truth: bool):
    """Resolve the RoI volume and names: prediction (default), ground truth, or a custom volume."""
    if rois is not None and ground_truth:
        raise Agg2ExpError("give either custom RoIs or the ground truth, not both")
    if ground_truth:
        return case.load_ground_truth().array, list(case.class_names)
    if rois is None:
        return case.prediction.array, list(case.class_names)
    if isinstance(rois, (str, os.PathLike)):
        rois = load_volume(rois, what="RoI label volume")
    if isinstance(rois, Volume):
        arr = resample_labels(rois, case.prediction)
    else:
        arr = as_label_array(np.asarray(rois))
        if arr.shape != case.prediction.shape:
            raise Agg2ExpError(f"RoI array has shape {arr.shape} but the case grid is {case.prediction.shape} -- "
                               "pass a Volume (with its affine) to resample it, or an array on the image grid")
    if roi_names is None:
        roi_names = {0: "background"}
    elif isinstance(roi_names, (str, os.PathLike)):
        roi_names = read_label_names(roi_names)
    return arr, roi_names


def case_local_importance(
    case: CaseData | str | os.PathLike,
    rois: Volume | np.ndarray | str | os.PathLike | None = None,
    roi_names: Sequence[str] | Mapping[int, str] | str | os.PathLike | None = None,
    *,
    ground_truth: bool = False,
    joins: Mapping[str, Sequence[str]] | Iterable[str] | None = None,
    parts: Sequence[str] = PARTS,
    skip_labels: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> pd.DataFrame:
    """Local importance of a case folder for its predicted, ground-truth or custom RoIs.

    Args:
        case: a :class:`CaseData` or a case folder.
        rois: custom RoIs: a label :class:`~napari_agg2exp.data.volume.Volume` or NIfTI path (resampled
            with nearest neighbour if its shape differs), or an array on the case grid. Default:
            the prediction.
        roi_names: names of the custom RoIs (sequence, ``{id: name}`` or a ``labels.json``-style
            file). Default for custom RoIs: 0 = ``background``, others ``label_<id>``.
        ground_truth: use the ground truth named in the case folder as RoIs.
        joins: joined RoIs (see :func:`~napari_agg2exp.importance.local.local_importance`).
        parts: processings among ``abs``, ``pos``, ``neg``.
        skip_labels: label ids not reported. Default: none for the prediction and ground truth,
            ``(0,)`` for custom RoIs (label 0 of a custom volume is the unlabelled rest, and leaving
            it out lets its table be combined with the prediction's table of the same case).
        progress, cancel: as in :func:`~napari_agg2exp.importance.local.local_importance`.
    """
    if not isinstance(case, CaseData):
        case = load_case(case, load_image=False)
    custom = rois is not None
    if isinstance(rois, (str, os.PathLike)):
        rois = load_volume(rois, what="RoI label volume")
    arr, names = _rois_for(case, rois, roi_names, ground_truth)
    if skip_labels is None:
        skip_labels = (0,) if custom else ()
    if case.maps_on_prediction_grid:
        return local_importance(case.attributions, arr, names, case=case.name, parts=parts, joins=joins,
                                skip_labels=skip_labels, progress=progress, cancel=cancel)
    if not custom and not ground_truth:  # the predicted RoIs are on the model grid already
        return local_importance(case.attributions, case.maps_labels.array, names, case=case.name, parts=parts,
                                joins=joins, skip_labels=skip_labels, progress=progress, cancel=cancel)
    # ground truth or custom RoIs on the scan's grid: their share of each model voxel (SPEC §4)
    source = rois if isinstance(rois, Volume) else Volume(arr, case.prediction.affine)
    skip = {int(s) for s in skip_labels}
    ids = [int(i) for i in np.unique(as_label_array(source.array)) if int(i) not in skip]
    occ = label_occupancy(source, case.maps_grid.shape, case.maps_grid.affine, ids)
    by_id = roi_name_map(names, ids)
    occupancy = {by_id[i]: occ[i] for i in ids}
    return occupancy_local_importance(case.attributions, occupancy, case=case.name, parts=parts,
                                      joins=parse_joins(joins or {}, occupancy) if joins else None,
                                      progress=progress, cancel=cancel)


def write_local_importance(
    case_dir: str | os.PathLike,
    rois: Volume | np.ndarray | str | os.PathLike | None = None,
    roi_names: Sequence[str] | Mapping[int, str] | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    ground_truth: bool = False,
    joins: Mapping[str, Sequence[str]] | Iterable[str] | None = None,
    parts: Sequence[str] = PARTS,
    skip_labels: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> Path:
    """Compute a case folder's local importance and write it (atomically).

    This is what ``agg2exp explain`` calls at its end (defaults: predicted RoIs, all parts, written
    to ``CASE_DIR/local_importance.csv``). Arguments as :func:`case_local_importance`; ``out`` is
    the table to write (``.csv``, or ``.parquet`` with pyarrow). The ``joins`` are recorded in the
    table's ``members`` column (see :func:`~napari_agg2exp.importance.tables.with_join_members`).

    Returns:
        The path written.
    """
    case = load_case(case_dir, load_image=False)
    df = case_local_importance(case, rois, roi_names, ground_truth=ground_truth, joins=joins, parts=parts,
                               skip_labels=skip_labels, progress=progress, cancel=cancel)
    df = with_join_members(df, parse_joins(joins) if joins else {})
    return write_table(df, Path(out) if out is not None else case.case_dir / LOCAL_TABLE)


def read_local_importance(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Local importance tables from CSV/Parquet files, case folders and cohort folders, combined.

    A case folder gives its ``local_importance.csv`` (computed for the predicted RoIs when absent and
    the folder keeps maps); a cohort folder (with ``cases/``) gives every committed case's table.

    Joined RoIs recorded by whoever computed a table (its ``members`` column, written by ``agg2exp
    aggregate --join``) are kept, and also set as ``attrs["joins"]`` (``{joined RoI: members}``,
    empty for tables without joins) for the importance graph.

    Raises:
        Agg2ExpError: a path that is none of these, or tables that cannot be combined.
    """
    sources: list[pd.DataFrame | Path] = []
    for raw in paths:
        p = Path(raw)
        folders = [p] if is_case_folder(p) else (
            sorted(c for c in (p / "cases").iterdir() if not c.name.startswith(".") and is_case_folder(c))
            if p.is_dir() and (p / "cases").is_dir() else None)
        if folders is None:
            if p.is_dir():
                raise Agg2ExpError(f"{p} is a folder but neither a case folder nor a cohort folder (with cases/) -- "
                                   "give local importance tables (.csv), case folders or a cohort folder")
            sources.append(p)
            continue
        if not folders:
            raise Agg2ExpError(f"cohort folder {p} has no committed case yet")
        for f in folders:
            table = CaseFolder(f).local_importance()
            sources.append(table if table is not None else case_local_importance(f))
    df = read_local_tables(sources)
    df.attrs["joins"] = join_members(df)
    return df
