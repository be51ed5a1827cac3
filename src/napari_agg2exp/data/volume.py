"""One volume type (array + affine + spacing) and NIfTI I/O.

Every output of the tool is written on the grid of the input it came from: same shape, same affine.
Writes are atomic (:func:`napari_agg2exp.files.atomic_write`), so a failure never leaves half a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write

__all__ = ["Volume", "load_volume", "save_volume", "spacing_from_affine"]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the array axes, from the columns of the affine."""
    aff = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))


@dataclass
class Volume:
    """A 3D array on a physical grid.

    Args:
        array: (X, Y, Z) data.
        affine: (4, 4) voxel-to-world (RAS+ mm, NIfTI convention) matrix.
        name: optional display name (file stem).
        source: the file it was read from (empty for volumes made in memory).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise Agg2ExpError(f"affine must be 4x4, got shape {self.affine.shape}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_from_affine(self.affine)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def like(self, array: np.ndarray, name: str | None = None) -> "Volume":
        """A new volume with ``array`` on this volume's grid."""
        if tuple(array.shape[-3:]) != self.shape[-3:]:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        return Volume(array, self.affine.copy(), self.name if name is None else name)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_volume(path: str | os.PathLike, *, what: str = "image") -> Volume:
    """Read a 3D ``.nii`` / ``.nii.gz`` file.

    Raises:
        Agg2ExpError: the file is missing, not NIfTI, truncated/corrupt, or not 3D.
    """
    p = Path(path)
    if not p.exists():
        raise Agg2ExpError(f"{what} file not found: {p} -- check the path")
    if p.is_dir():
        raise Agg2ExpError(f"{what} path {p} is a folder -- give a .nii or .nii.gz file")
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise Agg2ExpError(f"{what} file {p} is not NIfTI -- give a .nii or .nii.gz file")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for broken files
        raise Agg2ExpError(
            f"cannot read {what} file {p} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt'})"
            " -- the file is corrupt or truncated; re-export it as NIfTI"
        ) from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise Agg2ExpError(
            f"{what} file {p} has {data.ndim}D data of shape {tuple(data.shape)} -- a single 3D volume is needed"
            + (" (take one time point / channel first)" if data.ndim > 3 else "")
        )
    if min(data.shape) < 2:
        raise Agg2ExpError(f"{what} file {p} has shape {tuple(data.shape)} -- a 3D volume (not a 2D slice) is needed")
    affine = img.affine if img.affine is not None else np.eye(4)
    return Volume(np.asarray(data), np.asarray(affine, dtype=float), _stem(p), str(p))


def save_volume(volume: Volume | np.ndarray, path: str | os.PathLike, affine: np.ndarray | None = None,
                dtype: np.dtype | str | None = None) -> Path:
    """Write a volume as NIfTI atomically (temporary file in the same folder, then rename)."""
    if isinstance(volume, Volume):
        array, aff = volume.array, volume.affine if affine is None else affine
    else:
        array, aff = volume, np.eye(4) if affine is None else affine
    if dtype is not None:
        array = np.asarray(array).astype(dtype)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(aff, dtype=float))
    img.set_qform(np.asarray(aff, dtype=float), code=1)
    img.set_sform(np.asarray(aff, dtype=float), code=1)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
