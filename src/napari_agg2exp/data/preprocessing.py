"""Model preprocessing and its exact inverse (SPEC §9).

Forward: orient to RAS, resample to the model's spacing, clip and scale intensities, pad to at
least the window. Inverse: crop the padding, resample back to the oriented input's exact shape and
undo the orientation, so every output (prediction, logits, attribution maps) lands on the input's
own grid with the input's affine.

Intensity scaling and padding use MONAI transforms (``ScaleIntensityRange``, ``SpatialPad``). The
geometry (orientation, resampling) is done here with nibabel's orientation tools and
``torch.nn.functional.interpolate`` instead of MONAI's ``Orientation``/``Spacing``: for the
axis-aligned grids CT and MR scans use, that gives an exact, trace-free inverse onto the input's own
shape and affine (a flip/permutation is undone bit-exactly), which MONAI's metadata-based inversion
does not guarantee for arbitrary shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRange, SpatialPad

from napari_agg2exp.data.volume import Volume, check_allocation, replace_nonfinite
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["PreprocessingSpec", "Preprocessed", "preprocess", "preprocess_labels", "to_input_grid", "resample_array"]


@dataclass
class PreprocessingSpec:
    """How a model wants its input (SPEC §9 defaults for CT).

    Args:
        orientation: axis codes to orient to (``"RAS"``), or ``None`` to keep the array axes.
        spacing: target voxel size in mm, or ``None`` to keep the input's.
        a_min, a_max: intensity window (HU for CT); values are clipped to it when ``clip``.
        b_min, b_max: output range of the window.
        clip: clip intensities to ``[a_min, a_max]``.
        pad_to_window: pad every axis to at least the model's window.
    """

    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    a_min: float = -1024.0
    a_max: float = 1024.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    pad_to_window: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "model.json") -> "PreprocessingSpec":
        """A spec from its JSON form; every wrong type or value is one :class:`Agg2ExpError` naming the key."""
        if d is not None and not isinstance(d, dict):
            raise Agg2ExpError(f"{source}: \"preprocessing\" must be an object {{\"spacing\": [...], ...}}, "
                               f"got {type(d).__name__}")
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise Agg2ExpError(f"{source}: unknown preprocessing keys {sorted(unknown)}; known: "
                               f"{sorted(cls.__dataclass_fields__)}")
        if d.get("orientation") is not None:
            d["orientation"] = _orientation_codes(d["orientation"], source)
        if d.get("spacing") is not None:
            sp = d["spacing"]
            sp = [sp] * 3 if _is_number(sp) else sp
            if not isinstance(sp, (list, tuple)) or len(sp) != 3 or not all(_is_number(v) for v in sp) \
                    or not all(0 < float(v) < float("inf") for v in sp):
                raise Agg2ExpError(f"{source}: preprocessing spacing must be 3 positive numbers (mm), got {d['spacing']!r}")
            d["spacing"] = tuple(float(v) for v in sp)
        for key in ("a_min", "a_max", "b_min", "b_max"):
            if key in d:
                v = d[key]
                if not _is_number(v) or not np.isfinite(float(v)):
                    raise Agg2ExpError(f"{source}: preprocessing {key} must be a finite number, got {v!r}")
                d[key] = float(v)
        for key in ("clip", "pad_to_window"):
            if key in d and not isinstance(d[key], bool):
                raise Agg2ExpError(f"{source}: preprocessing {key} must be true or false, got {d[key]!r}")
        spec = cls(**d)
        if spec.a_max <= spec.a_min:
            raise Agg2ExpError(f"{source}: preprocessing a_max ({spec.a_max:g}) must be above a_min ({spec.a_min:g})")
        return spec

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["spacing"] is not None:
            d["spacing"] = list(d["spacing"])
        return d


@dataclass
class Preprocessed:
    """A preprocessed volume and everything needed to map results back to the input grid.

    Attributes:
        array: (X, Y, Z) float32 model input (oriented, resampled, scaled, padded).
        affine: affine of ``array``'s grid (the padding included).
        input_shape, input_affine: the input's grid.
        ornt: nibabel orientation transform from the input axes to the model axes.
        oriented_shape: shape after orientation (before resampling).
        resampled_shape: shape after resampling (before padding).
        pad: per-axis ``(before, after)`` padding.
    """

    array: np.ndarray
    affine: np.ndarray
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    ornt: np.ndarray
    oriented_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    pad: tuple[tuple[int, int], ...] = field(default=((0, 0), (0, 0), (0, 0)))
    #: set by other preprocessors (bundles, nnU-Net): ``inverse(array, mode)`` maps (..., model grid) to the
    #: input grid; ``forward_labels(labels)`` maps an input-grid label array to the model grid
    inverse: Callable[[np.ndarray, str], np.ndarray] | None = None
    forward_labels: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def crop(self) -> tuple[slice, slice, slice]:
        return tuple(slice(b, b + n) for (b, _), n in zip(self.pad, self.resampled_shape))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _orientation_codes(codes: Any, source: str) -> str:
    """Three axis codes, one of L/R, one of P/A, one of I/S (e.g. ``"RAS"``, ``"LPS"``)."""
    ok = isinstance(codes, str) and len(codes) == 3 and all(c in "LRPAIS" for c in codes.upper())
    if ok:
        axes = {{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}[c] for c in codes.upper()}
        ok = axes == {0, 1, 2}
    if not ok:
        raise Agg2ExpError(f"{source}: preprocessing orientation {codes!r} is not 3 axis codes -- use one of L/R, "
                           "P/A and I/S each, e.g. \"RAS\" or \"LPS\" (or null to keep the array axes)")
    return codes.upper()


def resample_array(array: np.ndarray, shape: tuple[int, ...], mode: str = "trilinear") -> np.ndarray:
    """Resample the last three axes of ``array`` to ``shape`` (voxel-edge aligned grids).

    ``array`` may have leading channel axes. ``mode`` is ``"trilinear"`` or ``"nearest"``.
    """
    if tuple(array.shape[-3:]) == tuple(shape):
        return array
    lead = array.shape[:-3]
    t = torch.as_tensor(np.ascontiguousarray(array))
    dtype = t.dtype
    t = t.reshape((1, -1) + tuple(array.shape[-3:]))
    if mode == "nearest":
        out = F.interpolate(t.float(), size=tuple(shape), mode="nearest-exact").to(dtype)
    else:
        out = F.interpolate(t.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    return out.reshape(lead + tuple(shape)).numpy()


def _orient(volume: Volume, codes: str | None):
    if codes is None:
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        return volume.array, volume.affine.copy(), ornt
    src = nio.io_orientation(volume.affine)
    tfm = nio.ornt_transform(src, nio.axcodes2ornt(tuple(codes)))
    arr = nio.apply_orientation(volume.array, tfm)
    aff = volume.affine @ nio.inv_ornt_aff(tfm, volume.array.shape)
    return np.ascontiguousarray(arr), aff, tfm


def preprocess(volume: Volume, spec: Any, window_size: tuple[int, int, int] | None = None,
               nonfinite: str = "fill") -> Preprocessed:
    """Map an input volume to the model's grid and intensity range.

    Args:
        volume: the input scan (any axis-aligned orientation, any spacing).
        spec: the model's preprocessing: a :class:`PreprocessingSpec`, or a model format's own
            preprocessor (an object with ``apply(volume, window_size) -> Preprocessed``).
        window_size: the sliding window; every axis is padded to at least this size.
        nonfinite: NaN/Inf voxels: ``"fill"`` (the scan's minimum, with a warning) or ``"refuse"``
            (see :func:`~napari_agg2exp.data.volume.replace_nonfinite`).

    Returns:
        The model input and the mapping back to ``volume``'s grid.

    Raises:
        Agg2ExpError: NaN/Inf voxels refused, or a model grid too large for the memory available.
    """
    if volume.array.ndim != 3:
        raise Agg2ExpError(f"expected a 3D volume, got shape {volume.array.shape}")
    volume = replace_nonfinite(volume, nonfinite)  # every model format: a model never sees NaN/Inf
    if not isinstance(spec, PreprocessingSpec):  # a model format's own preprocessor (bundle, nnU-Net)
        return spec.apply(volume, window_size)
    arr, aff, ornt = _orient(volume, spec.orientation)
    oriented_shape = tuple(int(s) for s in arr.shape)
    arr = arr.astype(np.float32, copy=False)
    sp_in = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    new_shape = oriented_shape
    if spec.spacing is not None:
        new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(oriented_shape, sp_in, spec.spacing))
    grid = tuple(max(n, w) for n, w in zip(new_shape, window_size or new_shape)) if spec.pad_to_window else new_shape
    # the resampled input, its padded copy and the model's logits (2 classes at least) on the model grid
    check_allocation(float(np.prod(grid, dtype=float)) * 4 * 4,
                     f"the model grid {grid} (voxels of {tuple(round(float(v), 3) for v in sp_in)} mm"
                     + (f" resampled to {tuple(spec.spacing)} mm" if spec.spacing is not None else "")
                     + (f", padded to the window {tuple(window_size)}" if window_size is not None else "") + ")",
                     "check the scan's voxel size in its header (is it in mm?), crop the scan or use a smaller "
                     "--window-size")
    if new_shape != oriented_shape:
        arr = resample_array(arr, new_shape)
        scale = np.array(oriented_shape, float) / np.array(new_shape, float)
        # voxel-edge aligned: out index j maps to in index (j + 0.5) * scale - 0.5
        m = np.eye(4)
        m[:3, :3] = np.diag(scale)
        m[:3, 3] = 0.5 * scale - 0.5
        aff = aff @ m
    resampled_shape = tuple(int(s) for s in arr.shape)
    arr = ScaleIntensityRange(spec.a_min, spec.a_max, spec.b_min, spec.b_max, clip=spec.clip)(arr)
    arr = np.asarray(arr, dtype=np.float32)
    pad = ((0, 0),) * 3
    if spec.pad_to_window and window_size is not None:
        target = tuple(max(n, w) for n, w in zip(resampled_shape, window_size))
        if target != resampled_shape:
            padded = SpatialPad(spatial_size=target, mode="constant", value=float(spec.b_min) if spec.clip else 0.0)(arr[None])
            padded = np.asarray(padded)[0]
            pad = tuple(((t - n) // 2, t - n - (t - n) // 2) for t, n in zip(target, resampled_shape))
            arr = padded
            shift = np.eye(4)
            shift[:3, 3] = [-b for b, _ in pad]
            aff = aff @ shift
    return Preprocessed(
        array=np.ascontiguousarray(arr, dtype=np.float32),
        affine=aff,
        input_shape=tuple(int(s) for s in volume.array.shape),
        input_affine=volume.affine.copy(),
        ornt=ornt,
        oriented_shape=oriented_shape,
        resampled_shape=resampled_shape,
        pad=pad,
    )


def preprocess_labels(labels: Volume | np.ndarray, pre: Preprocessed) -> np.ndarray:
    """Map a label volume on the input grid onto the model grid of ``pre`` (nearest neighbour, padded with 0)."""
    arr = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    if tuple(arr.shape) != tuple(pre.input_shape):
        raise Agg2ExpError(f"label volume shape {arr.shape} differs from the image's {pre.input_shape} -- they must share a grid")
    if pre.forward_labels is not None:
        return np.asarray(pre.forward_labels(arr)).astype(np.int16)
    arr = np.ascontiguousarray(nio.apply_orientation(arr, pre.ornt))
    arr = resample_array(arr.astype(np.int16), pre.resampled_shape, mode="nearest")
    return np.pad(arr, pre.pad, constant_values=0).astype(np.int16)


def to_input_grid(array: np.ndarray, pre: Preprocessed, mode: str = "trilinear") -> np.ndarray:
    """Map an array on the model grid (last three axes) back to the input's grid.

    Args:
        array: (..., X', Y', Z') on ``pre.array``'s grid (channels allowed in front).
        pre: the mapping returned by :func:`preprocess`.
        mode: ``"trilinear"`` for continuous maps (logits, attributions), ``"nearest"`` for labels.

    Returns:
        (..., X, Y, Z) on the input grid (``pre.input_shape``, ``pre.input_affine``).
    """
    if tuple(array.shape[-3:]) != tuple(pre.array.shape):
        raise ValueError(f"array shape {array.shape} is not on the model grid {pre.array.shape}")
    if pre.inverse is not None:
        return np.ascontiguousarray(pre.inverse(array, mode))
    lead = (slice(None),) * (array.ndim - 3)
    out = array[lead + pre.crop]
    out = resample_array(out, pre.oriented_shape, mode=mode)
    inv = _invert_ornt(pre.ornt)  # pre.ornt maps input axes -> model axes
    if array.ndim > 3:
        flat = out.reshape((-1,) + out.shape[-3:])
        res = np.stack([nio.apply_orientation(c, inv) for c in flat])
        res = res.reshape(out.shape[:-3] + res.shape[-3:])
    else:
        res = nio.apply_orientation(out, inv)
    res = np.ascontiguousarray(res)
    assert tuple(res.shape[-3:]) == tuple(pre.input_shape), (res.shape, pre.input_shape)
    return res


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (input axis i -> output axis ornt[i,0], flip ornt[i,1])."""
    ornt = np.asarray(ornt, dtype=float)
    inv = np.zeros_like(ornt)
    for i, (ax, flip) in enumerate(ornt):
        inv[int(ax)] = [i, flip]
    return inv
