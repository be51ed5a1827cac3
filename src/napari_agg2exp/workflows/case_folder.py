"""One explained case on disk (the output folder of ``agg2exp explain``) and its local importance.

Layout of a case folder ``CASE_DIR/``::

    prediction.nii.gz            uint8 labels on the input grid
    labels.json                  {"0": "background", "1": ...} class names by id
    attributions/<class>.nii.gz  float32 attribution map of target <class>, input grid
    attribution_info.json        {"method": ..., "image": "/abs/path/ct.nii.gz" (or relative to CASE_DIR), "case": ...,
                                  "ground_truth": "/abs/path/gt.nii.gz" (optional), ...}
    local_importance.csv         (optional) case,target,roi,part,mass,mean
    quality.csv                  (optional) case,class,dice,iou
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.data.labels import read_label_names
from napari_agg2exp.progress import CancelFlag, ProgressCallback
from napari_agg2exp.data.volume import Volume, load_volume
from napari_agg2exp.importance.local import PARTS, as_label_array, local_importance
from napari_agg2exp.importance.tables import write_table

__all__ = [
    "LOCAL_TABLE_NAME",
    "CaseData",
    "case_local_importance",
    "load_case",
    "resample_labels",
    "write_local_importance",
]

LOCAL_TABLE_NAME = "local_importance.csv"
_NIFTI = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


class _LazyMaps(Mapping):
    """target -> attribution array, each read from its NIfTI file on access (never cached)."""

    def __init__(self, files: dict[str, Path], shape: tuple[int, ...]):
        self._files = files
        self._shape = shape

    def __getitem__(self, target: str) -> np.ndarray:
        vol = load_volume(self._files[target], what=f"attribution map of {target!r}")
        if vol.shape != self._shape:
            raise Agg2ExpError(f"attribution map {self._files[target]} has shape {vol.shape} but the prediction has "
                               f"shape {self._shape} -- the case folder is inconsistent; rerun agg2exp explain")
        return np.asarray(vol.array, dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def path(self, target: str) -> Path:
        return self._files[target]


@dataclass
class CaseData:
    """An explained case read from its folder.

    Attributes:
        case_dir: the folder.
        name: case name (``attribution_info.json``'s ``case``, else the folder name).
        image: the input CT (None when not loaded).
        prediction: (X, Y, Z) predicted labels on the input grid.
        class_names: class names by id.
        attributions: target class name -> (X, Y, Z) float32 map, in class-id order (read lazily
            from disk on each access unless loaded eagerly).
        info: the content of ``attribution_info.json``.
    """

    case_dir: Path
    name: str
    image: Volume | None
    prediction: Volume
    class_names: list[str]
    attributions: Mapping[str, np.ndarray]
    info: dict = field(default_factory=dict)

    @property
    def ground_truth_path(self) -> Path | None:
        gt = self.info.get("ground_truth")
        return Path(gt) if gt else None

    def load_ground_truth(self) -> Volume:
        """The ground-truth label volume named in ``attribution_info.json``, on the prediction grid."""
        p = self.ground_truth_path
        if p is None:
            raise Agg2ExpError(f"case {self.case_dir} has no ground truth (no \"ground_truth\" in "
                               "attribution_info.json) -- pass the label file with --ground-truth FILE")
        gt = load_volume(p, what="ground truth")
        return Volume(resample_labels(gt, self.prediction), self.prediction.affine, gt.name)

    def table_path(self, name: str) -> Path:
        return self.case_dir / name


def load_case(case_dir: str | os.PathLike, *, load_image: bool = True, lazy: bool = True,
              targets: Iterable[str] | None = None) -> CaseData:
    """Read a case folder written by ``agg2exp explain``.

    Args:
        case_dir: the folder.
        load_image: also read the input CT named in ``attribution_info.json`` (needed for figures).
        lazy: read attribution maps on access (one at a time) instead of all now.
        targets: only these targets (default: every map in ``attributions/``).

    Raises:
        Agg2ExpError: the folder or one of its pieces is missing or unreadable, with what to do.
    """
    d = Path(case_dir)
    if not d.is_dir():
        raise Agg2ExpError(f"case folder not found: {d} -- give the output folder of `agg2exp explain`")
    info_path = d / "attribution_info.json"
    if not info_path.exists():
        raise Agg2ExpError(f"{d} has no attribution_info.json -- is it the output folder of `agg2exp explain`?")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise Agg2ExpError(f"{info_path} is not valid JSON ({e}) -- rerun agg2exp explain") from e
    if not isinstance(info, dict):
        raise Agg2ExpError(f"{info_path} must hold a JSON object -- rerun agg2exp explain")
    if not (d / "labels.json").exists():
        raise Agg2ExpError(f"{d} has no labels.json (class names) -- rerun agg2exp explain")
    class_names = read_label_names(d / "labels.json")
    pred_path = d / "prediction.nii.gz"
    if not pred_path.exists() and (d / "prediction.nii").exists():
        pred_path = d / "prediction.nii"
    if not pred_path.exists():
        raise Agg2ExpError(f"{d} has no prediction.nii.gz -- rerun agg2exp explain")
    prediction = load_volume(pred_path, what="prediction")
    prediction = Volume(as_label_array(prediction.array), prediction.affine, prediction.name)

    att_dir = d / "attributions"
    if not att_dir.is_dir():
        raise Agg2ExpError(f"{d} has no attributions/ folder -- rerun agg2exp explain")
    files = {_stem(p): p for p in sorted(att_dir.iterdir()) if p.name.endswith(_NIFTI)}
    if not files:
        raise Agg2ExpError(f"{att_dir} holds no attribution maps (<class>.nii.gz) -- rerun agg2exp explain")
    rank = {n: i for i, n in enumerate(class_names)}
    ordered = sorted(files, key=lambda t: (rank.get(t, len(rank)), t))
    if targets is not None:
        wanted = list(targets)
        missing = [t for t in wanted if t not in files]
        if missing:
            raise Agg2ExpError(f"no attribution map for {missing} in {att_dir} -- available: {', '.join(ordered)}")
        ordered = [t for t in ordered if t in set(wanted)]
    maps = _LazyMaps({t: files[t] for t in ordered}, prediction.shape)
    attributions: Mapping[str, np.ndarray] = maps if lazy else {t: maps[t] for t in maps}

    image = None
    if load_image:
        img = info.get("image")
        if not img:
            raise Agg2ExpError(f"{info_path} does not name the input image (\"image\") -- rerun agg2exp explain")
        img = Path(img) if Path(img).is_absolute() else d / img  # relative paths: relative to the case folder
        image = load_volume(img, what="input image (from attribution_info.json)")
        if image.shape != prediction.shape:
            raise Agg2ExpError(f"input image {img} has shape {image.shape} but the prediction has shape "
                               f"{prediction.shape} -- attribution_info.json names the wrong image")
    name = str(info.get("case") or d.name)
    return CaseData(d, name, image, prediction, class_names, attributions, info)


def resample_labels(labels: Volume, reference: Volume) -> np.ndarray:
    """Put a label volume on the grid of ``reference`` (nearest neighbour, through the affines).

    A volume with the reference's shape is taken to be on its grid already (napari label layers and
    label files written by this tool share the image grid) and returned unchanged. Voxels of the
    reference grid that fall outside ``labels`` get label 0.

    Raises:
        Agg2ExpError: an affine cannot be inverted, or no reference voxel falls inside ``labels``.
    """
    src = as_label_array(labels.array)
    if src.ndim != 3:
        raise Agg2ExpError(f"RoI label volume must be 3D, got shape {src.shape}")
    if src.shape == reference.shape[-3:]:
        return src
    from scipy import ndimage

    try:
        to_src = np.linalg.inv(np.asarray(labels.affine, float)) @ np.asarray(reference.affine, float)
    except np.linalg.LinAlgError as e:
        raise Agg2ExpError(f"RoI volume {labels.name or ''} has a singular affine -- it cannot be mapped onto the "
                           f"image grid; save it with the image's affine") from e
    shape = reference.shape[-3:]
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float).T
    mapped = (to_src @ corners)[:3]
    lo, hi = mapped.min(axis=1), mapped.max(axis=1)
    if np.any(hi < -0.5) or np.any(lo > np.array(src.shape) - 0.5):
        raise Agg2ExpError(
            f"RoI volume of shape {src.shape} does not overlap the image grid of shape {tuple(shape)} (their affines "
            "place them apart) -- give a label volume on the image's grid or with the right affine"
        )
    out = ndimage.affine_transform(src, to_src[:3, :3], offset=to_src[:3, 3], output_shape=tuple(shape),
                                   order=0, mode="grid-constant", cval=0, prefilter=False)
    return out


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
        ground_truth: use the ground truth named in ``attribution_info.json`` as RoIs.
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
    arr, names = _rois_for(case, rois, roi_names, ground_truth)
    if skip_labels is None:
        skip_labels = (0,) if custom else ()
    return local_importance(case.attributions, arr, names, case=case.name, parts=parts, joins=joins,
                            skip_labels=skip_labels, progress=progress, cancel=cancel)


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
    the table to write (``.csv``, or ``.parquet`` with pyarrow).

    Returns:
        The path written.
    """
    case = load_case(case_dir, load_image=False)
    df = case_local_importance(case, rois, roi_names, ground_truth=ground_truth, joins=joins, parts=parts,
                               skip_labels=skip_labels, progress=progress, cancel=cancel)
    return write_table(df, Path(out) if out is not None else case.case_dir / LOCAL_TABLE_NAME)
