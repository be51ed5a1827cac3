"""One volume type (array + affine + spacing) and NIfTI I/O.

Every output of the tool is written on the grid of the input it came from: same shape, same affine.
Writes are atomic (:func:`napari_agg2exp.files.atomic_write`), so a failure never leaves half a file.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write

__all__ = [
    "NONFINITE_POLICIES",
    "Volume",
    "available_memory",
    "check_affine",
    "check_allocation",
    "load_volume",
    "replace_nonfinite",
    "save_volume",
    "spacing_from_affine",
]

#: What to do with NaN/Inf voxels of a scan: ``fill`` (default: the scan's smallest finite value, with a
#: warning giving their count and fraction) or ``refuse``.
NONFINITE_POLICIES = ("fill", "refuse")


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable`` on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        return 1 << 62


def check_allocation(n_bytes: float, what: str, fix: str) -> None:
    """Refuse an allocation of ``n_bytes`` that cannot fit in the memory available now.

    Raises:
        Agg2ExpError: naming the size, the memory available and ``fix``.
    """
    avail = available_memory()
    if n_bytes > avail:
        raise Agg2ExpError(f"{what} needs {n_bytes / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB of memory is "
                           f"available -- {fix}")


def check_affine(affine: np.ndarray, what: str = "volume") -> np.ndarray:
    """A finite, invertible (4, 4) affine as float, else :class:`Agg2ExpError`."""
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4):
        raise Agg2ExpError(f"{what}: affine must be 4x4, got shape {aff.shape}")
    if not np.isfinite(aff).all():
        raise Agg2ExpError(f"{what} has an affine with NaN/Inf entries -- fix the header's sform/qform "
                           "(e.g. save it again with a valid affine)")
    lin = aff[:3, :3]
    scale = max(float(np.abs(lin).max()), 1e-300)
    if abs(np.linalg.det(lin / scale)) < 1e-9:
        raise Agg2ExpError(f"{what} has a singular affine (a zero voxel size or parallel axes) -- it cannot be "
                           "placed in space; fix the header's sform/qform (e.g. save it again with the scan's affine)")
    return aff


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
        self.affine = check_affine(self.affine, self.name or "volume")

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


def replace_nonfinite(volume: Volume, policy: str = "fill", what: str = "image") -> Volume:
    """``volume`` with its NaN/Inf voxels replaced by its smallest finite value (``policy="fill"``, with a
    warning giving their count and fraction), or refused (``policy="refuse"``).

    A model never sees NaN: one NaN voxel turns every logit of the windows it falls in into NaN, which
    silently erases the foreground. The scan's minimum is the value of air/background in CT and MR.

    Returns:
        ``volume`` itself when every voxel is finite, else a new volume on the same grid.

    Raises:
        Agg2ExpError: ``policy="refuse"`` and some voxel is not finite, or no voxel is finite.
    """
    if policy not in NONFINITE_POLICIES:
        raise Agg2ExpError(f"unknown policy for NaN/Inf voxels {policy!r} -- use one of {', '.join(NONFINITE_POLICIES)}")
    a = volume.array
    if a.dtype.kind not in "fc":
        return volume
    bad = ~np.isfinite(a)
    n = int(bad.sum())
    if n == 0:
        return volume
    label = f"{what} {volume.source or volume.name}".strip()
    frac = n / a.size
    if n == a.size:
        raise Agg2ExpError(f"{label} holds no finite voxel (all {n} are NaN/Inf) -- re-export the scan")
    if policy == "refuse":
        raise Agg2ExpError(f"{label} holds {n} NaN/Inf voxels ({frac:.2%}) -- replace them (e.g. by the background "
                           "value) before running, or use the fill policy")
    fill = a[~bad].min()
    warnings.warn(f"{label} holds {n} NaN/Inf voxels ({frac:.2%}); they were replaced by the scan's minimum "
                  f"{float(fill):g}", UserWarning, stacklevel=2)
    out = np.where(bad, fill, a).astype(a.dtype, copy=False)
    return Volume(out, volume.affine.copy(), volume.name, volume.source)


def load_volume(path: str | os.PathLike, *, what: str = "image") -> Volume:
    """Read a 3D ``.nii`` / ``.nii.gz`` file of numbers.

    NaN/Inf voxels are kept here (a label file with them is refused by the label check; a scan's are
    filled when it is preprocessed, see :func:`replace_nonfinite`).

    Raises:
        Agg2ExpError: the file is missing, not NIfTI, truncated/corrupt, not 3D, RGB / not numeric, has a
            singular affine, or is too large for the memory available.
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
        shape = tuple(int(s) for s in img.shape)
        dtype = img.get_data_dtype()
    except (OSError, ValueError, EOFError, ImageFileError) as e:  # HeaderDataError is a ValueError
        raise Agg2ExpError(
            f"cannot read {what} file {p} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt'})"
            " -- the file is corrupt or truncated; re-export it as NIfTI"
        ) from e
    if dtype.names is not None or dtype.kind not in "biuf":
        kind = "RGB" if dtype.names is not None else f"{dtype}"
        raise Agg2ExpError(f"{what} file {p} holds {kind} voxels -- a single-channel (grey-value) volume is needed; "
                           "convert it to greyscale first")
    if len(shape) == 4 and shape[3] == 3:
        raise Agg2ExpError(f"{what} file {p} has 4D data of shape {shape}, an RGB/vector volume -- a single-channel volume is "
                           "needed; convert it to greyscale or take one channel first")
    # the reading below allocates the whole (scaled) array: refuse what cannot fit before trying
    scaled = getattr(img.dataobj, "slope", 1) != 1 or getattr(img.dataobj, "inter", 0) != 0
    itemsize = 8 if scaled else np.dtype(dtype).itemsize  # scaled data is read as float64
    check_allocation(float(np.prod(shape, dtype=float)) * itemsize, f"reading {what} file {p} of shape {shape}",
                     "crop or downsample the volume first")
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, ValueError, EOFError, MemoryError, zlib.error) as e:  # truncated/corrupt data
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
    affine = check_affine(img.affine if img.affine is not None else np.eye(4), f"{what} file {p}")
    return Volume(np.asarray(data), affine, _stem(p), str(p))


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
