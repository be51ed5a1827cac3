"""The one manifest reader: a CSV of cases ``case,image[,labels][,rois]`` (cohorts, evaluation)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from napari_agg2exp.errors import Agg2ExpError

__all__ = ["read_manifest", "CASE_NAME"]

#: Case names become folder names: letters, digits, ``_``, ``-``, ``.`` (not starting with ``.``/``-``).
CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_COLUMNS = ("image", "labels", "rois")


def read_manifest(path: str | os.PathLike, *, columns: tuple[str, ...] = ("labels", "rois")) -> list[dict[str, str]]:
    """Rows ``{"case", "image"[, "labels"][, "rois"]}`` with absolute paths, every file checked.

    Relative paths are relative to the manifest's folder. A UTF-8 byte-order mark is accepted.

    Args:
        path: the CSV file (header ``case,image`` and optional columns).
        columns: the optional file columns this caller reads; others are refused.

    Raises:
        Agg2ExpError: missing or unreadable file, missing or unknown columns, no rows, a bad or repeated case
            name, or a file that does not exist -- naming the line.
    """
    p = Path(path)
    if not p.is_file():
        raise Agg2ExpError(f"manifest not found: {p} -- give a CSV with columns case,image[,{','.join(columns)}]")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [str(c).strip() for c in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise Agg2ExpError(f"cannot read manifest {p} ({e}) -- it must be a UTF-8 CSV with columns case,image") from e
    usage = f"columns: case,image[,{','.join(columns)}]"
    missing = [c for c in ("case", "image") if c not in header]
    if missing:
        raise Agg2ExpError(f"manifest {p} lacks column(s) {', '.join(missing)} -- {usage}")
    unknown = [c for c in header if c and c not in ("case", "image") + tuple(columns)]
    if unknown:
        raise Agg2ExpError(f"manifest {p} has unknown column(s) {', '.join(unknown)} -- {usage}")
    if not rows:
        raise Agg2ExpError(f"manifest {p} has no cases -- it needs a header case,image and one row per case")
    seen: set[str] = set()
    cleaned = []
    for line, r in enumerate(rows, start=2):
        r = {str(k).strip(): (v or "").strip() for k, v in r.items() if k is not None}
        case = r.get("case", "")
        if not CASE_NAME.match(case):
            raise Agg2ExpError(f"manifest {p} line {line}: case name {case!r} must be letters, digits, '_', '-', '.'")
        if case in seen:
            raise Agg2ExpError(f"manifest {p} line {line}: case {case!r} appears twice -- case names must be unique")
        seen.add(case)
        cleaned.append((line, case, r))
    out = []
    for line, case, r in cleaned:
        row = {"case": case}
        for col in ("image",) + tuple(c for c in columns if c in _FILE_COLUMNS):
            v = r.get(col, "")
            if not v:
                continue
            f = Path(v) if os.path.isabs(v) else (p.parent / v).resolve()
            if not f.is_file():
                raise Agg2ExpError(f"manifest {p} line {line}: case {case}: {col} file not found: {v}")
            row[col] = str(f)
        if "image" not in row:
            raise Agg2ExpError(f"manifest {p} line {line}: case {case!r} has no image")
        out.append(row)
    return out
