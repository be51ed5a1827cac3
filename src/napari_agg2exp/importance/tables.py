"""Reading, validating and writing the analysis tables (CSV, or Parquet when pyarrow is installed).

All tables are long-form :class:`pandas.DataFrame` objects. The format is chosen by the file
extension: ``.csv`` always works, ``.parquet`` / ``.pq`` need ``pyarrow``. Writes are atomic (a
temporary file in the target folder, then a rename), so a failed run never leaves half a table.

Formats (SPEC §4, §5, §7):

========================  =====================================================
table                     columns
========================  =====================================================
local importance          ``case,target,roi,part,mass,mean``
quality                   ``case,class,dice,iou``
global importance         ``target,roi,part,mean,median,std,q25,q75,n``
outlier scores            ``case,target,score,outlier``
Spearman correlations     ``target,rho,p,n``
========================  =====================================================

A local importance table may have one more column, ``members``: for a joined RoI (``agg2exp
aggregate --join lung=a,b,...``) its member RoIs, comma-separated, and empty for every other RoI.
It records which RoIs contain which, so that the importance graph does not draw an edge from a
joined RoI into one of its own members (SPEC §5); tables without it have no joined RoIs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write

__all__ = [
    "GLOBAL_COLUMNS",
    "LOCAL_COLUMNS",
    "MEMBERS_COLUMN",
    "PARTS",
    "QUALITY_COLUMNS",
    "SCORES_COLUMNS",
    "SPEARMAN_COLUMNS",
    "has_parquet",
    "join_members",
    "read_local_table",
    "read_local_tables",
    "read_quality_table",
    "read_table",
    "validate_columns",
    "with_join_members",
    "write_table",
]

LOCAL_COLUMNS: tuple[str, ...] = ("case", "target", "roi", "part", "mass", "mean")
QUALITY_COLUMNS: tuple[str, ...] = ("case", "class", "dice", "iou")
GLOBAL_COLUMNS: tuple[str, ...] = ("target", "roi", "part", "mean", "median", "std", "q25", "q75", "n")
SCORES_COLUMNS: tuple[str, ...] = ("case", "target", "score", "outlier")
SPEARMAN_COLUMNS: tuple[str, ...] = ("target", "rho", "p", "n")
#: The attribution processings of SPEC §4: ``|a|``, ``max(a, 0)``, ``max(-a, 0)``.
PARTS: tuple[str, ...] = ("abs", "pos", "neg")
#: Optional column of a local importance table: a joined RoI's members, comma-separated ("" otherwise).
MEMBERS_COLUMN = "members"

#: Columns always read as text (case names such as ``"001"`` must not become numbers, and a RoI
#: called ``"none"`` must not become a missing value).
_TEXT_COLUMNS = ("case", "target", "roi", "part", "class", MEMBERS_COLUMN)
_NA_VALUES = ["", "nan", "NaN", "NA", "<NA>", "null"]
_PARQUET_SUFFIXES = (".parquet", ".pq")


def has_parquet() -> bool:
    """Whether Parquet tables can be read and written (``pyarrow`` is importable)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        if not has_parquet():
            raise Agg2ExpError(f"{path}: Parquet tables need pyarrow -- `pip install pyarrow`, or use a .csv file")
        return "parquet"
    raise Agg2ExpError(f"{path}: unknown table format -- use a .csv file (or .parquet with pyarrow installed)")


def validate_columns(df: pd.DataFrame, required: Sequence[str], source: str | os.PathLike = "table",
                     what: str = "table") -> pd.DataFrame:
    """Check that ``df`` has the ``required`` columns.

    Args:
        df: the table.
        required: column names that must be present.
        source: where the table came from (a path), for the message.
        what: what the table is ("local importance table", ...), for the message.

    Returns:
        ``df`` unchanged.

    Raises:
        Agg2ExpError: naming the missing columns, the file and the expected header.
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise Agg2ExpError(
            f"{what} {source} lacks column(s) {', '.join(missing)} -- expected a header "
            f"{','.join(required)} (found {','.join(map(str, df.columns)) or 'no columns'})"
        )
    return df


def _coerce_numeric(df: pd.DataFrame, columns: Sequence[str], source, what: str) -> None:
    for col in columns:
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]):
            continue
        converted = pd.to_numeric(df[col], errors="coerce")
        bad = df[col][converted.isna() & df[col].notna() & (df[col].astype(str) != "")]
        if len(bad):
            raise Agg2ExpError(
                f"{what} {source}: column {col} must be numeric, found {bad.iloc[0]!r} -- fix or regenerate the table"
            )
        df[col] = converted


def read_table(path: str | os.PathLike, required: Sequence[str] = (), *, what: str = "table",
               numeric: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet table and check its columns.

    Text columns (``case``, ``target``, ``roi``, ``part``, ``class``) are always read as strings;
    empty cells of numeric columns become NaN.

    Args:
        path: ``.csv``, ``.parquet`` or ``.pq`` file.
        required: columns that must be present.
        what: what the table is, for error messages.
        numeric: columns converted to numbers (a non-numeric cell is an error).

    Raises:
        Agg2ExpError: the file is missing, unreadable, of an unknown format, or lacks columns.
    """
    p = Path(path)
    if not p.exists():
        raise Agg2ExpError(f"{what} not found: {p} -- check the path")
    if p.is_dir():
        raise Agg2ExpError(f"{what} path {p} is a folder -- give a .csv or .parquet file")
    fmt = _format_of(p)
    try:
        if fmt == "csv":
            header = pd.read_csv(p, nrows=0).columns
            dtype = {c: str for c in header if c in _TEXT_COLUMNS}
            na = {c: _NA_VALUES for c in header if c not in _TEXT_COLUMNS}
            df = pd.read_csv(p, dtype=dtype, keep_default_na=False, na_values=na)
        else:
            df = pd.read_parquet(p)
            for c in _TEXT_COLUMNS:
                if c in df.columns:
                    df[c] = (df[c].fillna("") if c == MEMBERS_COLUMN else df[c]).astype(str)
    except pd.errors.EmptyDataError as e:
        raise Agg2ExpError(f"{what} {p} is empty -- expected a header {','.join(required)}") from e
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise Agg2ExpError(f"cannot read {what} {p} ({type(e).__name__}: {e}) -- is it a valid {fmt} table?") from e
    validate_columns(df, required, p, what)
    _coerce_numeric(df, numeric, p, what)
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` atomically as CSV or Parquet (chosen by the extension).

    Missing values are written as empty CSV cells. Returns the path written.
    """
    p = Path(path)
    if _format_of(p) == "csv":
        return atomic_write(p, lambda tmp: df.to_csv(tmp, index=False, na_rep=""))
    return atomic_write(p, lambda tmp: df.to_parquet(tmp, index=False))


def _check_parts(df: pd.DataFrame, source) -> None:
    bad = sorted(set(df["part"].unique()) - set(PARTS))
    if bad:
        raise Agg2ExpError(f"local importance table {source}: unknown part(s) {bad} -- part must be one of "
                           f"{list(PARTS)}")


def read_local_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a local importance table ``case,target,roi,part,mass,mean`` (SPEC §4)."""
    df = read_table(path, LOCAL_COLUMNS, what="local importance table", numeric=("mass", "mean"))
    _check_parts(df, path)
    return df


def read_local_tables(paths: Sequence[str | os.PathLike | pd.DataFrame]) -> pd.DataFrame:
    """Read and concatenate several local importance tables (one cohort); tables already read are taken as is.

    Raises:
        Agg2ExpError: no paths, or the same ``(case, target, roi, part)`` appears twice (a case in
            two tables, or two RoI tables of one case sharing a RoI name).
    """
    if not paths:
        raise Agg2ExpError("no local importance table given -- pass at least one LOCAL.csv")
    frames = []
    for i, p in enumerate(paths):
        df = p.copy() if isinstance(p, pd.DataFrame) else read_local_table(p)
        df["_source"] = f"table {i + 1}" if isinstance(p, pd.DataFrame) else str(p)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if MEMBERS_COLUMN in df.columns:  # tables without joined RoIs lack the column
        df[MEMBERS_COLUMN] = df[MEMBERS_COLUMN].fillna("").astype(str)
    key = ["case", "target", "roi", "part"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df.loc[dup].iloc[0]
        sources = sorted(set(df.loc[dup & (df[key] == first[key]).all(axis=1), "_source"]))
        raise Agg2ExpError(
            f"{int(dup.sum())} duplicate rows for the same (case, target, roi, part), e.g. "
            f"({first['case']}, {first['target']}, {first['roi']}, {first['part']}) in {', '.join(sources)} -- "
            "give each case once, and give the RoI tables of one case distinct RoI names"
        )
    return df.drop(columns="_source")


def with_join_members(df: pd.DataFrame, joins: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Record joined-RoI definitions in a local importance table (column ``members``).

    Args:
        df: local importance table.
        joins: ``{joined RoI: (member RoI, ...)}``, as given to the computation.

    Returns:
        A copy of ``df`` whose ``members`` column holds each joined RoI's members, comma-separated,
        and ``""`` for the other RoIs (members recorded before are kept); ``df`` itself when there
        is nothing to record.
    """
    if not joins:
        return df
    out = df.copy()
    before = out[MEMBERS_COLUMN].fillna("").astype(str) if MEMBERS_COLUMN in out.columns else pd.Series("", out.index)
    recorded = out["roi"].map(lambda r: ",".join(joins[r]) if r in joins else "")
    out[MEMBERS_COLUMN] = recorded.where(recorded != "", before)
    return out


def join_members(df: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """The joined RoIs recorded in a local importance table: ``{joined RoI: (member RoI, ...)}``.

    Read from the ``members`` column (see :func:`with_join_members`) and from ``df.attrs["joins"]``;
    a RoI recorded with different members (e.g. in two cases' tables) gets the union of them, in
    order of first appearance. A table without either has no joined RoIs (``{}``).
    """
    found: dict[str, list[str]] = {}

    def add(name, members) -> None:
        acc = found.setdefault(str(name), [])
        acc.extend(m for m in members if m not in acc)

    for name, members in (df.attrs.get("joins") or {}).items():
        add(name, [str(m) for m in members])
    if MEMBERS_COLUMN in df.columns and "roi" in df.columns:
        pairs = df[["roi", MEMBERS_COLUMN]].drop_duplicates()
        for roi, text in zip(pairs["roi"], pairs[MEMBERS_COLUMN], strict=True):
            if isinstance(text, str) and text.strip():
                add(roi, [m.strip() for m in text.split(",") if m.strip()])
    return {k: tuple(v) for k, v in found.items() if v}


def read_quality_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a quality table ``case,class,dice,iou``."""
    return read_table(path, QUALITY_COLUMNS, what="quality table", numeric=("dice", "iou"))

