"""Finding the cases of a cohort in any layout the project writes or reads.

* a manifest CSV ``case,image[,labels][,rois]`` (:func:`~napari_agg2exp.workflows.manifest.read_manifest`),
  given as the file or as a folder holding ``manifest.csv`` / ``cases.csv``;
* a folder of case folders ``<case>/image.nii.gz`` (``agg2exp phantom`` writes ``case_XXXX/image.nii.gz``,
  with ``labels.nii.gz`` next to it);
* a flat folder of scans ``<case>.nii.gz`` (files named ``*labels*``, ``*pathology*``, ``*_seg*`` or
  ``*mask*`` are not scans).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.workflows.manifest import read_manifest

__all__ = ["MANIFEST_NAMES", "discover_cases"]

#: manifest file names looked for in a cohort folder
MANIFEST_NAMES = ("manifest.csv", "cases.csv")
_NIFTI = (".nii.gz", ".nii")
_NOT_SCANS = re.compile(r"(labels?|pathology|_seg|segmentation|mask|prediction)", re.IGNORECASE)


def _stem(p: Path) -> str:
    name = p.name
    for ext in _NIFTI:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _nifti(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{ext}" for ext in _NIFTI if (folder / f"{stem}{ext}").is_file()), None)


def discover_cases(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows ``{"case", "image"[, "labels"]}`` (absolute paths) of the cohort at ``path``.

    Raises:
        Agg2ExpError: the path does not exist, or holds no case in any known layout (the message lists them).
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return read_manifest(p)
        if p.name.endswith(_NIFTI):
            return [{"case": _stem(p), "image": str(p.resolve())}]
        raise Agg2ExpError(f"{p} is neither a manifest CSV nor a NIfTI scan -- give a cohort folder or a manifest")
    if not p.is_dir():
        raise Agg2ExpError(f"cohort folder not found: {p} -- give a folder of cases or a manifest CSV")
    for name in MANIFEST_NAMES:
        if (p / name).is_file():
            return read_manifest(p / name)
    rows = []
    for sub in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
        image = _nifti(sub, "image")
        if image is not None:
            row = {"case": sub.name, "image": str(image.resolve())}
            labels = _nifti(sub, "labels")
            if labels is not None:
                row["labels"] = str(labels.resolve())
            rows.append(row)
    if rows:
        return rows
    scans = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_NIFTI) and not _NOT_SCANS.search(f.name))
    if scans:
        return [{"case": _stem(f), "image": str(f.resolve())} for f in scans]
    raise Agg2ExpError(f"no cases in {p}: expected case folders <case>/image.nii.gz (as `agg2exp phantom` writes), "
                       f"scans <case>.nii.gz, or a {MANIFEST_NAMES[0]} with columns case,image")
