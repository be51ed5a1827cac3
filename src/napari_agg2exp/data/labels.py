"""Label vocabularies: the paper's 17 thorax classes and their semantic groups (SPEC §5, §9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_agg2exp.errors import Agg2ExpError

__all__ = [
    "THORAX_LABELS",
    "PATHOLOGY_LABELS",
    "SEMANTIC_GROUPS",
    "GROUP_COLOURS",
    "semantic_group",
    "read_label_names",
    "label_names_json",
    "as_label_array",
    "MAX_LABEL_ID",
]

#: The paper's 17 thorax labels (TotalSegmentator v2 subset), index = label id.
THORAX_LABELS: tuple[str, ...] = (
    "background",
    "aorta",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "trachea",
    "heart",
    "pulmonary_vein",
    "thyroid_gland",
    "ribs",
    "vertebrae",
    "autochthon_left",
    "autochthon_right",
    "sternum",
    "costal_cartilages",
)

#: Custom RoIs of the phantom's pathology volume.
PATHOLOGY_LABELS: tuple[str, ...] = ("none", "nodule", "effusion")

#: Default semantic grouping used to colour distribution plots (appendix Fig. 7).
SEMANTIC_GROUPS: dict[str, str] = {
    "aorta": "cardiovascular",
    "heart": "cardiovascular",
    "pulmonary_vein": "cardiovascular",
    "autochthon_left": "muscles",
    "autochthon_right": "muscles",
    "ribs": "bones",
    "vertebrae": "bones",
    "sternum": "bones",
    "costal_cartilages": "bones",
}

GROUP_COLOURS: dict[str, str] = {
    "cardiovascular": "tab:red",
    "muscles": "gold",
    "bones": "tab:blue",
    "other": "tab:grey",
}


def semantic_group(name: str, groups: dict[str, str] | None = None) -> str:
    return (groups or SEMANTIC_GROUPS).get(name, "other")


def read_label_names(path: str | Path) -> list[str]:
    """Read ``{"0": "background", "1": ...}`` (the format ``segment`` writes) into a list by id."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as e:
        raise Agg2ExpError(f"label names file not found: {p} -- check the path") from e
    except UnicodeDecodeError as e:
        raise Agg2ExpError(f"label names file {p} is not UTF-8 text ({e.reason} at byte {e.start}) -- save it as "
                           "UTF-8 JSON {\"0\": \"background\", ...}") from e
    except IsADirectoryError as e:
        raise Agg2ExpError(f"label names path {p} is a folder -- give a JSON file") from e
    except (OSError, json.JSONDecodeError) as e:
        raise Agg2ExpError(f"label names file {p} is not valid JSON ({e}) -- expected {{\"0\": \"background\", ...}}") from e
    if isinstance(raw, list):
        return [str(v) for v in raw]
    if not isinstance(raw, dict):
        raise Agg2ExpError(f"label names file {p} must hold an object {{\"0\": \"background\", ...}}")
    try:
        items = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError as e:
        raise Agg2ExpError(f"label names file {p}: keys must be integer ids, got {list(raw)[:5]}") from e
    ids = [k for k, _ in items]
    if ids != list(range(len(ids))):
        raise Agg2ExpError(f"label names file {p}: ids must be 0..N-1 without gaps, got {ids}")
    return [v for _, v in items]


def label_names_json(names: list[str] | tuple[str, ...]) -> str:
    return json.dumps({str(i): n for i, n in enumerate(names)}, indent=2) + "\n"


#: Largest label id accepted: per-label tables are indexed by id (a bincount of ``max id + 1`` entries), so
#: ids like 4·10⁹ would ask for tens of GiB. 2²⁴ − 1 covers every atlas and instance map in use.
MAX_LABEL_ID = 2**24 - 1


def as_label_array(rois: np.ndarray, n_classes: int | None = None, *, what: str = "RoI label volume") -> np.ndarray:
    """The one check of every label volume (ground truth, RoIs, feature masks, predictions read back).

    Returns ``rois`` as a non-negative integer array (float volumes must hold whole numbers).

    Args:
        rois: the label array.
        n_classes: when given, ids must be below it (labels of a model's classes ``0..n_classes-1``).
        what: the volume's name in messages (``"ground truth"``, ``"features volume"``, ...).

    Raises:
        Agg2ExpError: negative, non-integral, non-finite, non-numeric or too large labels, or ids of
            classes the model does not have.
    """
    a = np.asarray(rois)
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if a.size and not np.isfinite(a).all():
            n = int((~np.isfinite(a)).sum())
            raise Agg2ExpError(f"{what} holds {n} NaN or infinite values -- labels must be whole numbers >= 0")
        if a.size and not np.array_equal(a, np.round(a)):
            raise Agg2ExpError(f"{what} holds fractional values -- labels must be whole numbers >= 0 "
                               "(was it resampled with linear interpolation? use nearest neighbour)")
        if a.size and a.min() < 0:
            raise Agg2ExpError(f"{what} holds negative label {int(a.min())} -- labels must be >= 0")
        if a.size and a.max() > MAX_LABEL_ID:
            raise Agg2ExpError(f"{what} holds label id {a.max():.0f}, above the largest id {MAX_LABEL_ID} -- "
                               "renumber the labels to small ids (0..N)")
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise Agg2ExpError(f"{what} has dtype {a.dtype} -- an integer label volume is needed")
    if a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        raise Agg2ExpError(f"{what} holds negative label {lo} -- labels must be >= 0")
    if hi > MAX_LABEL_ID:
        raise Agg2ExpError(f"{what} holds label id {hi}, above the largest id {MAX_LABEL_ID} -- renumber the labels "
                           "to small ids (0..N)")
    if n_classes is not None and hi >= n_classes:
        raise Agg2ExpError(f"{what} holds label {hi} but the model has {n_classes} classes (ids 0..{n_classes - 1}) "
                           "-- give labels of this model's classes")
    return a
