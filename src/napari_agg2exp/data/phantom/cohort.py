"""Writing a cohort of phantoms as NIfTI files (:func:`write_phantom_cohort`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_agg2exp.data.labels import PATHOLOGY_LABELS, THORAX_LABELS, label_names_json
from napari_agg2exp.data.phantom.cases import case_seed, make_phantom
from napari_agg2exp.data.phantom.grid import DEFAULT_SHAPE, DEFAULT_SPACING, _normalise_grid
from napari_agg2exp.data.volume import save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write_text, make_staging_dir
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = ["write_phantom_cohort"]

_CASE_RE = re.compile(r"^case_(\d+)$")


def _existing_cases(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and _CASE_RE.match(p.name))


def write_phantom_cohort(out_dir: str | os.PathLike, cases: int, seed: int = 0, *,
                         shape: Sequence[int] = DEFAULT_SHAPE,
                         spacing: float | Sequence[float] = DEFAULT_SPACING,
                         pathology: bool = True, overwrite: bool = False,
                         progress: ProgressCallback | None = None,
                         cancel: CancelFlag | None = None) -> list[Path]:
    """Write a cohort of phantoms as NIfTI files.

    Layout: ``out_dir/case_XXXX/{image,labels,pathology}.nii.gz`` (image int16 HU, labels and
    pathology uint8, all with the phantom's affine), ``out_dir/labels.json`` (id -> name, the
    format ``segment`` writes) and ``out_dir/phantoms.json`` (the generation parameters). Case
    ``i`` uses the seed :func:`case_seed` ``(seed, i)``. Each case folder is written to a temporary
    folder first and renamed into place, so a case is either complete or absent.

    Args:
        out_dir: output folder (created if missing).
        cases: number of cases (>= 1).
        seed: cohort seed (>= 0).
        shape: grid of every case, see :func:`make_phantom`.
        spacing: voxel size in mm, see :func:`make_phantom`.
        pathology: add nodules / effusions.
        overwrite: replace existing ``case_*`` folders (stale ones beyond ``cases`` are removed).
        progress: called as ``progress(done, total, message)`` after each case.
        cancel: checked before each case; raises :class:`~napari_agg2exp.errors.Cancelled`.

    Returns:
        The case folders, in order.

    Raises:
        Agg2ExpError: bad arguments, an output path that is a file, or a folder that already holds
            ``case_*`` folders without ``overwrite``.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise Agg2ExpError(f"number of phantom cases must be a positive integer, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Agg2ExpError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shp, sp = _normalise_grid(shape, spacing)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Agg2ExpError(f"output path {out} is a file -- give a folder for the phantom cohort")
    existing = _existing_cases(out)
    if existing and not overwrite:
        raise Agg2ExpError(
            f"output folder {out} already holds phantom cases ({existing[0].name}, ...) -- "
            "choose another folder or pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for p in existing:
        m = _CASE_RE.match(p.name)
        if m and int(m.group(1)) >= cases:
            shutil.rmtree(p)
    atomic_write_text(out / "labels.json", label_names_json(THORAX_LABELS))
    meta = {"seed": int(seed), "cases": int(cases), "shape": list(shp),
            "spacing": [float(s) for s in sp], "pathology": bool(pathology),
            "case_seeds": [case_seed(seed, i) for i in range(cases)],
            "pathology_labels": {str(i): n for i, n in enumerate(PATHOLOGY_LABELS)}}
    atomic_write_text(out / "phantoms.json", json.dumps(meta, indent=2) + "\n")
    written: list[Path] = []
    report(progress, 0, cases, "generating phantoms")
    for i in range(cases):
        check_cancel(cancel)
        case = make_phantom(case_seed(seed, i), shape=shp, spacing=sp, pathology=pathology)
        final = out / f"case_{i:04d}"
        tmp = make_staging_dir(out, final.name)
        try:
            save_volume(np.asarray(case.image, dtype=np.int16), tmp / "image.nii.gz", case.affine)
            save_volume(case.labels, tmp / "labels.nii.gz", case.affine)
            save_volume(case.pathology, tmp / "pathology.nii.gz", case.affine)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        written.append(final)
        report(progress, i + 1, cases, f"phantom {final.name} written")
    return written
