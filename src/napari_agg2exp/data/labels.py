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
        raw = json.loads(p.read_text())
    except FileNotFoundError as e:
        raise Agg2ExpError(f"label names file not found: {p} -- check the path") from e
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


def as_label_array(rois: np.ndarray) -> np.ndarray:
    """Return ``rois`` as a non-negative integer array (float volumes must hold whole numbers).

    Raises:
        Agg2ExpError: negative, non-integral, non-finite or non-numeric labels.
    """
    a = np.asarray(rois)
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if a.size and not np.isfinite(a).all():
            raise Agg2ExpError("RoI label volume holds NaN or infinite values -- labels must be whole numbers >= 0")
        if a.size and not np.array_equal(a, np.round(a)):
            raise Agg2ExpError("RoI label volume holds fractional values -- labels must be whole numbers >= 0 "
                               "(was it resampled with linear interpolation? use nearest neighbour)")
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise Agg2ExpError(f"RoI label volume has dtype {a.dtype} -- an integer label volume is needed")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise Agg2ExpError(f"RoI label volume holds negative label {int(a.min())} -- labels must be >= 0")
    return a
