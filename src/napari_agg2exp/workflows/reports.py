"""HTML reports of case folders (any layout version)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from napari_agg2exp.files import atomic_write_text
from napari_agg2exp.progress import CancelFlag, ProgressCallback
from napari_agg2exp.report.html import REPORT_NAME, case_report_html
from napari_agg2exp.workflows.case_folder import LOCAL_TABLE, CaseFolder
from napari_agg2exp.workflows.case_importance import case_local_importance

__all__ = ["write_case_report"]


def write_case_report(case_dir: str | os.PathLike, out_html: str | os.PathLike | None = None, *,
                      targets: Iterable[str] | None = None, zero_background: bool = False, top: int = 5,
                      progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> Path:
    """Write the HTML report of one case folder.

    The local importance is read from the folder's ``local_importance.csv``, or computed for the
    predicted RoIs when that file is absent.

    Args:
        case_dir: a case folder (``explain``, ``demo`` or ``COHORT/cases/<case>`` with maps).
        out_html: file to write (default ``CASE_DIR/report.html``; overwritten).
        targets: classes to include (default: every attribution map).
        zero_background: zero the maps where the prediction is background in the figures.
        top: RoIs listed per class.
        progress, cancel: progress callback and stop flag (one step per class).

    Returns:
        The path of the HTML file.

    Raises:
        Agg2ExpError: the case folder is incomplete (see :meth:`CaseFolder.load`).
    """
    folder = CaseFolder(case_dir)
    case = folder.load(load_image=True)
    local = folder.local_importance()
    note = f"from {LOCAL_TABLE}"
    if local is None:
        local = case_local_importance(case)
        note = f"computed for the predicted RoIs (no {LOCAL_TABLE} in the case folder)"
    page = case_report_html(case, local, local_note=note, quality=folder.quality(), targets=targets,
                            zero_background=zero_background, top=top, progress=progress, cancel=cancel)
    return atomic_write_text(Path(out_html) if out_html is not None else folder.path / REPORT_NAME, page)
