"""Local RoI importance of one case (SPEC §4).

For an attribution map ``A_c`` of target class ``c``, a processing ``g`` (``abs`` = ``|a|``,
``pos`` = ``max(a, 0)``, ``neg`` = ``max(-a, 0)``) and a RoI ``R``::

    mass(c <- R) = sum_{v in R} g(A_c(v)) / sum_v g(A_c(v))
    mean(c <- R) = sum_{v in R} g(A_c(v)) / |R|

The RoIs are the labels of one integer label volume (a partition of the grid: prediction, ground
truth or any custom volume) plus *joined* RoIs, named unions of labels (``lung`` = the five lobes).

Algorithm: the label volume is indexed once per case (voxel counts, and the runs of equal labels
along the memory order, cut at fixed-size chunks). Each target map is then read once, chunk by chunk:
its positive and negative parts are summed per run (``np.add.reduceat``) and the run sums are
scattered onto the labels with a weighted ``np.bincount``. ``abs`` is ``pos + neg``; a joined RoI
is the sum of its members' entries. No masked pass per RoI is ever made. Label volumes too
fragmented for runs to pay off (more than one run per 8 voxels) fall back to a chunked weighted
bincount over the voxels. :func:`naive_local_importance` is the straightforward per-RoI masked
computation, kept as a reference for tests and the benchmark (``benchmarks/bench_aggregation.py``:
about 20-25x slower on a 256^3 case with 17 targets and 17 RoIs).

Precision: float32 maps are summed in float32 within a run (pairwise summation, at most 65,536
voxels) and in float64 across runs; other dtypes in float64. Results agree with the float64
reference to about 1e-7 relative.

Conventions:
    * Every label id named in ``roi_names`` is reported, present or not (an absent RoI has
      ``mass`` 0 and a missing ``mean``). A label present in the volume but not named is reported
      as ``label_<id>``, so the reported RoIs always cover the whole grid and ``mass`` sums to 1
      over them (unless ``skip_labels`` hides some rows; skipped voxels still count in the total).
    * A target whose processed map sums to zero (e.g. ``neg`` of a map with no negative value) has
      a missing ``mass`` for that part; its ``mean`` stays defined (0).
    * Joined RoIs overlap their members: they are extra rows, not part of the partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from napari_agg2exp.data.labels import as_label_array
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.importance.tables import LOCAL_COLUMNS, PARTS
from napari_agg2exp.options import did_you_mean, look_up_option
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = [
    "PARTS",
    "THORAX_JOINS",
    "LocalImportance",
    "OccupancyImportance",
    "as_label_array",
    "local_importance",
    "look_up_part",
    "naive_local_importance",
    "occupancy_local_importance",
    "parse_joins",
    "roi_name_map",
]

#: Useful joined RoIs for the 17 thorax labels (not applied unless passed as ``joins``).
THORAX_JOINS: dict[str, tuple[str, ...]] = {
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "lung": (
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ),
    "autochthon": ("autochthon_left", "autochthon_right"),
}

#: Voxels per chunk: a chunk of float64 fits in the L2 cache, and runs never cross chunks.
_CHUNK = 1 << 16
#: Above one run per this many voxels the run-length path is not worth it.
_MIN_MEAN_RUN = 8


def look_up_part(part: str) -> str:
    """Validate one processing name (``abs``, ``pos`` or ``neg``), suggesting the closest on a typo."""
    return look_up_option(str(part).strip().lower(), PARTS, what="part")


def roi_name_map(roi_names: Sequence[str] | Mapping[int, str], present: Iterable[int] = ()) -> dict[int, str]:
    """Label id -> RoI name: the given names, plus ``label_<id>`` for present ids without a name.

    Args:
        roi_names: names by id (a sequence, index = id) or a mapping ``{id: name}``.
        present: label ids that occur in the volume.

    Raises:
        Agg2ExpError: two ids share one name.
    """
    if isinstance(roi_names, Mapping):
        names = {int(k): str(v) for k, v in roi_names.items()}
    else:
        names = {i: str(n) for i, n in enumerate(roi_names)}
    for i in present:
        names.setdefault(int(i), f"label_{int(i)}")
    seen: dict[str, int] = {}
    for i, n in sorted(names.items()):
        if n in seen:
            raise Agg2ExpError(f"RoI name {n!r} is used by labels {seen[n]} and {i} -- RoI names must be unique")
        seen[n] = i
    return dict(sorted(names.items()))


def parse_joins(specs: Iterable[str] | Mapping[str, Sequence[str]],
                roi_names: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Parse joined-RoI definitions ``NAME=a,b,c`` (the CLI's ``--join``).

    Args:
        specs: strings ``"lung=lung_upper_lobe_left,lung_lower_lobe_left"``, or an already parsed
            mapping (then only checked).
        roi_names: the RoI names available; when given, members must be among them and a join may
            not reuse one of them as its name.

    Returns:
        ``{name: (member, ...)}`` in the given order.

    Raises:
        Agg2ExpError: malformed text, empty name or member list, a name given twice, an unknown
            member (with the closest known name), or a join named like an existing RoI.
    """
    items: list[tuple[str, list[str]]] = []
    if isinstance(specs, Mapping):
        items = [(str(k), [str(m) for m in v]) for k, v in specs.items()]
    else:
        for spec in specs:
            if "=" not in spec:
                raise Agg2ExpError(f"join {spec!r} is not NAME=a,b,... -- e.g. --join lung=lung_upper_lobe_left,"
                                   "lung_lower_lobe_left")
            name, _, rest = spec.partition("=")
            items.append((name.strip(), [m.strip() for m in rest.split(",") if m.strip()]))
    known = None if roi_names is None else list(roi_names)
    joins: dict[str, tuple[str, ...]] = {}
    for name, members in items:
        if not name:
            raise Agg2ExpError(f"join with members {members} has no name -- write NAME=a,b,...")
        if not members:
            raise Agg2ExpError(f"join {name!r} has no members -- write {name}=a,b,...")
        if name in joins:
            raise Agg2ExpError(f"join {name!r} is defined twice -- give each joined RoI once")
        if len(set(members)) != len(members):
            raise Agg2ExpError(f"join {name!r} lists a member twice: {members}")
        if known is not None:
            if name in known:
                raise Agg2ExpError(f"join name {name!r} is already a RoI name -- choose another name")
            for m in members:
                if m not in known:
                    raise Agg2ExpError(f"join {name!r}: unknown RoI {m!r}{did_you_mean(m, known, cutoff=0.6)} -- known RoIs: "
                                       f"{', '.join(known)}")
        joins[name] = tuple(members)
    return joins


@dataclass
class _LabelIndex:
    """The label volume, indexed once for all targets."""

    order: str  # memory order used to flatten labels and maps alike
    shape: tuple[int, ...]
    n_bins: int
    counts: np.ndarray  # voxels per label id, (n_bins,)
    flat: np.ndarray  # flattened labels
    starts: np.ndarray | None  # run starts (None: bincount path)
    run_labels: np.ndarray | None
    chunk_runs: np.ndarray | None  # index of the first run of each chunk, plus len(starts)

    @classmethod
    def build(cls, labels: np.ndarray, n_bins: int, chunk: int = _CHUNK) -> _LabelIndex:
        order = "F" if labels.flags.f_contiguous and not labels.flags.c_contiguous else "C"
        flat = labels.ravel(order=order)
        n = flat.size
        counts = np.zeros(n_bins, np.int64)
        starts = run_labels = chunk_runs = None
        if n:
            change = flat[1:] != flat[:-1]
            change[chunk - 1 :: chunk] = True  # every chunk starts a run
            if np.count_nonzero(change) < n // _MIN_MEAN_RUN:
                starts = np.concatenate([[0], np.flatnonzero(change) + 1])
                run_labels = flat[starts].astype(np.intp)
                chunk_runs = np.append(np.searchsorted(starts, np.arange(0, n, chunk)), len(starts))
                counts = np.bincount(run_labels, np.diff(starts, append=n), n_bins).astype(np.int64)
            else:
                lab = np.empty(min(chunk, n), dtype=np.intp)
                for s0 in range(0, n, chunk):
                    lb = lab[: min(n, s0 + chunk) - s0]
                    lb[...] = flat[s0 : s0 + chunk]
                    counts += np.bincount(lb, minlength=n_bins)
        return cls(order, tuple(labels.shape), n_bins, counts, flat, starts, run_labels, chunk_runs)

    def part_sums(self, attribution: np.ndarray, chunk: int = _CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """Per-label sums of ``max(a, 0)`` and ``max(-a, 0)``, each (n_bins,) float64."""
        a = attribution.ravel(order=self.order)
        n = a.size
        if a.dtype != np.float32:
            a = a.astype(np.float64, copy=False)
        buf = np.empty(min(chunk, max(n, 1)), dtype=a.dtype)
        if self.starts is not None:
            n_runs = len(self.starts)
            pos_runs = np.empty(n_runs)
            neg_runs = np.empty(n_runs)
            for k, s0 in enumerate(range(0, n, chunk)):
                e = min(n, s0 + chunk)
                i0, i1 = self.chunk_runs[k], self.chunk_runs[k + 1]
                loc = self.starts[i0:i1] - s0
                b = buf[: e - s0]
                np.fmax(a[s0:e], 0, out=b)  # max(a, 0); fmax is much faster than maximum
                pos_runs[i0:i1] = np.add.reduceat(b, loc)
                np.subtract(b, a[s0:e], out=b)  # max(-a, 0) exactly; a NaN reappears here
                neg_runs[i0:i1] = np.add.reduceat(b, loc)
            pos = np.bincount(self.run_labels, pos_runs, self.n_bins)
            neg = np.bincount(self.run_labels, neg_runs, self.n_bins)
        else:
            pos = np.zeros(self.n_bins)
            neg = np.zeros(self.n_bins)
            buf = np.empty(buf.size, dtype=np.float64)  # bincount weights are float64
            lab = np.empty(buf.size, dtype=np.intp)
            for s0 in range(0, n, chunk):
                e = min(n, s0 + chunk)
                b, lb = buf[: e - s0], lab[: e - s0]
                lb[...] = self.flat[s0:e]
                np.fmax(a[s0:e], 0, out=b)
                pos += np.bincount(lb, b, self.n_bins)
                np.subtract(b, a[s0:e], out=b)
                neg += np.bincount(lb, b, self.n_bins)
        return pos, neg


def _array_of(x) -> np.ndarray:
    return np.asarray(getattr(x, "array", x))


def _prepare(rois, parts: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Shared validation of :func:`local_importance` and :func:`naive_local_importance`."""
    labels = as_label_array(_array_of(rois))
    if labels.ndim == 0:
        raise Agg2ExpError("RoI label volume is a scalar -- give a label array shaped like the attribution maps")
    parts = tuple(look_up_part(p) for p in parts)
    if not parts:
        raise Agg2ExpError("no part requested -- choose some of abs, pos, neg")
    if len(set(parts)) != len(parts):
        raise Agg2ExpError(f"parts {list(parts)} repeat a value -- give each of abs, pos, neg at most once")
    return labels, parts


def _name_table(labels: np.ndarray, counts: np.ndarray, roi_names, joins, skip_labels):
    present = np.flatnonzero(counts)
    names = roi_name_map(roi_names, present)
    joins = parse_joins(joins or {}, names.values())
    by_name = {n: i for i, n in names.items()}
    skip = {int(s) for s in skip_labels}
    ids = [i for i in names if i not in skip]
    join_ids = {j: [by_name[m] for m in members] for j, members in joins.items()}
    return names, ids, join_ids


def _check_shape(target: str, a: np.ndarray, shape) -> None:
    if a.shape != tuple(shape):
        raise Agg2ExpError(
            f"attribution map for {target!r} has shape {a.shape} but the RoI volume has shape {tuple(shape)} -- "
            "resample the RoIs to the attribution grid"
        )


def _frame(case: str, rows: list[tuple[str, str, list[str], np.ndarray, np.ndarray]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object if c not in ("mass", "mean") else float)
                             for c in LOCAL_COLUMNS})
    target = np.concatenate([np.full(len(r[2]), r[0], dtype=object) for r in rows])
    part = np.concatenate([np.full(len(r[2]), r[1], dtype=object) for r in rows])
    roi = np.concatenate([np.asarray(r[2], dtype=object) for r in rows])
    mass = np.concatenate([r[3] for r in rows])
    mean = np.concatenate([r[4] for r in rows])
    return pd.DataFrame({"case": np.full(len(roi), str(case), dtype=object), "target": target, "roi": roi,
                         "part": part, "mass": mass.astype(float), "mean": mean.astype(float)})


def _divide(num: np.ndarray, den) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(num, dtype=float) / den
    return np.where(np.asarray(den) > 0, out, np.nan)


def local_importance(
    attributions: Mapping[str, np.ndarray],
    rois: np.ndarray,
    roi_names: Sequence[str] | Mapping[int, str],
    *,
    case: str = "case",
    parts: Sequence[str] = PARTS,
    joins: Mapping[str, Sequence[str]] | Iterable[str] | None = None,
    skip_labels: Iterable[int] = (),
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> pd.DataFrame:
    """Local RoI importance of one case: ``mass`` and ``mean`` per target × RoI × part (SPEC §4).

    Args:
        attributions: target class name -> attribution map (X, Y, Z) (arrays or
            :class:`~napari_agg2exp.data.volume.Volume`; a lazy mapping is read one map at a time).
        rois: (X, Y, Z) integer label volume on the attribution grid (a partition of the grid).
        roi_names: RoI names by label id (sequence, index = id) or ``{id: name}``. Present ids
            without a name are reported as ``label_<id>``.
        case: value of the ``case`` column.
        parts: processings to report, among ``abs``, ``pos``, ``neg``.
        joins: joined RoIs ``{name: (member RoI name, ...)}`` or ``["name=a,b", ...]``; each is
            reported as the union of its members (sums of their entries, no extra pass).
        skip_labels: label ids whose rows are left out (their voxels still count in the totals).
        progress: called as ``progress(done, total, message)`` once per target.
        cancel: stop flag, checked between targets.

    Returns:
        Long table with columns ``case, target, roi, part, mass, mean``: targets in the given order,
        then parts, then RoIs by label id followed by the joins.

    Raises:
        Agg2ExpError: a map's shape differs from the RoI volume's, a map holds NaN/inf, bad labels,
            parts, names or joins.
        Cancelled: ``cancel`` was set.

    Example:
        >>> a = {"heart": np.array([[[1.0, -1.0], [2.0, 0.0]]])}
        >>> rois = np.array([[[0, 1], [1, 1]]])
        >>> local_importance(a, rois, ["background", "heart"], parts=["abs"])[["roi", "mass"]].values.tolist()
        [['background', 0.25], ['heart', 0.75]]
    """
    agg = LocalImportance(rois, roi_names, case=case, parts=parts, joins=joins, skip_labels=skip_labels)
    return _add_all(agg, attributions, progress, cancel)


def _add_all(agg: LocalImportance | OccupancyImportance, attributions: Mapping[str, np.ndarray], progress: ProgressCallback | None,
             cancel: CancelFlag | None) -> pd.DataFrame:
    """Feed every map to a one-map-at-a-time aggregator and return its table."""
    targets = list(attributions)
    for t_i, target in enumerate(targets):
        check_cancel(cancel)
        report(progress, t_i, len(targets), f"local importance: {target}")
        agg.add(target, attributions[target])
    report(progress, len(targets), len(targets), "local importance: done")
    return agg.table()


class LocalImportance:
    """:func:`local_importance` one map at a time: the RoIs are indexed once, each :meth:`add` reads one map
    once and keeps only its rows, so maps can be dropped (or written) as soon as they are made.

    Args:
        rois, roi_names, case, parts, joins, skip_labels: as in :func:`local_importance`.
    """

    def __init__(self, rois: np.ndarray, roi_names: Sequence[str] | Mapping[int, str], *, case: str = "case",
                 parts: Sequence[str] = PARTS, joins: Mapping[str, Sequence[str]] | Iterable[str] | None = None,
                 skip_labels: Iterable[int] = ()):
        labels, self.parts = _prepare(rois, parts)
        n_named = max((int(k) for k in roi_names), default=-1) + 1 if isinstance(roi_names, Mapping) else len(roi_names)
        n_bins = max(int(labels.max()) + 1 if labels.size else 0, n_named)
        self._index = _LabelIndex.build(labels, n_bins)
        names, self._ids, self._join_ids = _name_table(labels, self._index.counts, roi_names, joins, skip_labels)
        self._roi_list = [names[i] for i in self._ids] + list(self._join_ids)
        self._counts = np.concatenate([self._index.counts[self._ids],
                                       [self._index.counts[m].sum() for m in self._join_ids.values()]]).astype(float)
        self.case, self._rows = case, []

    def add(self, target: str, attribution: np.ndarray) -> None:
        """The rows of one target's map (on the RoIs' grid); a bad shape or NaN/inf is an Agg2ExpError."""
        a = _array_of(attribution)
        _check_shape(target, a, self._index.shape)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite maps are reported just below
            pos, neg = self._index.part_sums(a)
        if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
            raise Agg2ExpError(f"attribution map for {target!r} holds NaN or infinite values -- recompute it")
        for part in self.parts:
            sums = {"abs": pos + neg, "pos": pos, "neg": neg}[part]
            total = sums.sum()
            roi_sums = np.concatenate([sums[self._ids], [sums[m].sum() for m in self._join_ids.values()]])
            mass = _divide(roi_sums, total) if total > 0 else np.full(len(roi_sums), np.nan)
            self._rows.append((str(target), part, self._roi_list, mass, _divide(roi_sums, self._counts)))

    def table(self) -> pd.DataFrame:
        """The long table of the maps added so far (in the order added)."""
        return _frame(self.case, self._rows)


_PART_FUNCS = {
    "abs": np.abs,
    "pos": lambda a: np.maximum(a, 0),
    "neg": lambda a: np.maximum(-a, 0),
}


def naive_local_importance(
    attributions: Mapping[str, np.ndarray],
    rois: np.ndarray,
    roi_names: Sequence[str] | Mapping[int, str],
    *,
    case: str = "case",
    parts: Sequence[str] = PARTS,
    joins: Mapping[str, Sequence[str]] | Iterable[str] | None = None,
    skip_labels: Iterable[int] = (),
) -> pd.DataFrame:
    """Reference implementation of :func:`local_importance`: one masked pass per target × part × RoI.

    Same arguments, conventions and output as :func:`local_importance`; slow by design (it is what
    the benchmark compares against). Sums are accumulated in float64.
    """
    labels, parts = _prepare(rois, parts)
    counts = np.bincount(labels.ravel()) if labels.size else np.zeros(0, np.int64)
    names, ids, join_ids = _name_table(labels, counts, roi_names, joins, skip_labels)
    masks = [(names[i], [i]) for i in ids] + list(join_ids.items())
    rows = []
    for target, amap in attributions.items():
        a = _array_of(amap)
        _check_shape(target, a, labels.shape)
        for part in parts:
            g = _PART_FUNCS[part](a)
            total = g.sum(dtype=np.float64)
            mass, mean = [], []
            for _name, members in masks:
                mask = labels == members[0] if len(members) == 1 else np.isin(labels, members)
                vals = g[mask]
                s = vals.sum(dtype=np.float64)
                mass.append(s / total if total > 0 else np.nan)
                mean.append(s / vals.size if vals.size else np.nan)
            rows.append((str(target), part, [m[0] for m in masks], np.array(mass), np.array(mean)))
    return _frame(case, rows)


def occupancy_local_importance(
    attributions: Mapping[str, np.ndarray],
    occupancy: Mapping[str, np.ndarray],
    *,
    case: str = "case",
    parts: Sequence[str] = PARTS,
    joins: Mapping[str, Sequence[str]] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> pd.DataFrame:
    """Local RoI importance for RoIs given as fractional occupancy of the attribution grid (SPEC §4).

    ``mass(c ← R) = Σ_v g(a(v))·w_R(v) / Σ_v g(a(v))`` and ``mean(c ← R) = Σ_v g(a(v))·w_R(v) / Σ_v w_R(v)``
    with ``w_R(v)`` the share of voxel v inside R (from
    :func:`~napari_agg2exp.data.geometry.label_occupancy`): with 0/1 weights this is
    :func:`local_importance`; a RoI smaller than a voxel keeps its share.

    Args:
        attributions: target -> (X, Y, Z) map.
        occupancy: RoI name -> (X, Y, Z) weights in [0, 1] on the same grid.
        case, parts, progress, cancel: as in :func:`local_importance`.
        joins: ``{name: member RoI names}`` reported as the sum of the members' weights.

    Returns:
        The long table ``case, target, roi, part, mass, mean``.
    """
    agg = OccupancyImportance(occupancy, case=case, parts=parts, joins=joins)
    return _add_all(agg, attributions, progress, cancel)


class OccupancyImportance:
    """:func:`occupancy_local_importance` one map at a time (as :class:`LocalImportance`)."""

    def __init__(self, occupancy: Mapping[str, np.ndarray], *, case: str = "case", parts: Sequence[str] = PARTS,
                 joins: Mapping[str, Sequence[str]] | None = None):
        self.parts = tuple(look_up_part(p) for p in parts)
        names = list(occupancy)
        for name, members in (joins or {}).items():
            unknown = [m for m in members if m not in occupancy]
            if unknown:
                raise Agg2ExpError(f"join {name!r}: unknown RoI {unknown[0]!r}{did_you_mean(unknown[0], names)}")
        self._weights = [np.asarray(occupancy[n], np.float64).ravel() for n in names] + [
            sum(np.asarray(occupancy[m], np.float64).ravel() for m in members) for members in (joins or {}).values()]
        self._roi_list = names + list(joins or {})
        self._sizes = np.array([w.sum() for w in self._weights])
        self._shape = np.shape(occupancy[names[0]]) if names else None
        self.case, self._rows = case, []

    def add(self, target: str, attribution: np.ndarray) -> None:
        """The rows of one target's map (on the occupancy grid)."""
        a = _array_of(attribution)
        _check_shape(target, a, a.shape if self._shape is None else self._shape)
        a = a.astype(np.float64).ravel()
        if not np.isfinite(a).all():
            raise Agg2ExpError(f"attribution map for {target!r} holds NaN or infinite values -- recompute it")
        pos, neg = np.maximum(a, 0), np.maximum(-a, 0)
        for part in self.parts:
            g = {"abs": pos + neg, "pos": pos, "neg": neg}[part]
            total = g.sum()
            sums = np.array([g @ w for w in self._weights])
            mass = _divide(sums, total) if total > 0 else np.full(len(sums), np.nan)
            self._rows.append((str(target), part, self._roi_list, mass, _divide(sums, self._sizes)))

    def table(self) -> pd.DataFrame:
        """The long table of the maps added so far."""
        return _frame(self.case, self._rows)
