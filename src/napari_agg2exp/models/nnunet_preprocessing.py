"""nnU-Net v2's preprocessing and its inverse, as its ``DefaultPreprocessor`` and predictor do them.

Forward (``DefaultPreprocessor.run_case_npy``): read the scan the way the plans' reader does
(``SimpleITKIO`` / ``NibabelIO``: voxel axes reversed; ``NibabelIOWithReorient``: RAS first), apply
``transpose_forward``, crop to the (hole-filled) nonzero bounding box, normalise (``CTNormalization``:
clip to the foreground 0.5/99.5 percentiles, z-score with the foreground mean/std; also
``ZScoreNormalization``, ``NoNormalization``, ``RescaleTo01Normalization``), resample to the
configuration's spacing (``resample_data_or_seg_to_shape``: cubic in-plane, ``order_z`` along the
low-resolution axis when the spacing is anisotropic by more than 3x), pad to the patch with 0.

Inverse (``convert_predicted_logits_to_segmentation_with_correct_shape``): cut the padding, resample
to the cropped shape (continuous maps with the plans' probability resampling, linear; label maps by
nearest neighbour), put the crop back into a zero volume, undo the transposes.

The resampling mirrors ``nnunetv2.preprocessing.resampling.default_resampling`` with scipy
(``skimage.transform.resize(mode="edge", anti_aliasing=False)`` is ``scipy.ndimage.zoom(grid_mode=True,
mode="nearest")`` clipped to the input range); ``tests/test_nnunet.py`` checks it against nnU-Net's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel.orientations as nio
import numpy as np
from scipy import ndimage

from napari_agg2exp.data.preprocessing import Preprocessed
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["NORMALIZATIONS", "READERS", "NnUNetPreprocessing", "nnunet_resample"]

#: nnU-Net's ``ANISO_THRESHOLD``: spacing ratio above which the low-resolution axis is resampled separately
ANISO_THRESHOLD = 3.0
#: image readers whose axis convention is reproduced here
READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")
NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing")


def _lowres_axis(spacing: np.ndarray) -> np.ndarray:
    return np.where(max(spacing) / np.asarray(spacing) == 1)[0]


def _separate_z(force: bool | None, current: np.ndarray, new: np.ndarray,
                threshold: float = ANISO_THRESHOLD) -> tuple[bool, int | None]:
    """nnU-Net's ``determine_do_sep_z_and_axis``."""
    current, new = np.asarray(current, float), np.asarray(new, float)
    if force is not None:
        do, axis = bool(force), (_lowres_axis(current) if force else None)
    elif max(current) / min(current) > threshold:
        do, axis = True, _lowres_axis(current)
    elif max(new) / min(new) > threshold:
        do, axis = True, _lowres_axis(new)
    else:
        do, axis = False, None
    if axis is not None:
        if len(axis) in (2, 3):
            return False, None
        axis = int(axis[0])
    return do, axis


def _resize(image: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode="edge", anti_aliasing=False)`` (float64)."""
    image = np.asarray(image, dtype=np.float64)
    zoom = [n / o for n, o in zip(shape, image.shape)]
    out = ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _resample_axis(data: np.ndarray, n_new: int, axis: int, order: int) -> np.ndarray:
    """Resample one axis with ``map_coordinates(order, mode="nearest")`` at ``scale*(i+0.5)-0.5``."""
    n_old = data.shape[axis]
    coords = float(n_old) / n_new * (np.arange(n_new) + 0.5) - 0.5
    if order == 0:  # the source index scipy picks for each coordinate, applied along the axis
        idx = ndimage.map_coordinates(np.arange(n_old, dtype=np.float64), [coords], order=0, mode="nearest")
        return np.take(data, idx.astype(np.int64), axis=axis)
    if order == 1:
        c = np.clip(coords, 0, n_old - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n_old - 1)
        w = (c - lo).reshape([-1 if a == axis else 1 for a in range(data.ndim)])
        return np.take(data, lo, axis=axis) * (1 - w) + np.take(data, hi, axis=axis) * w
    raise Agg2ExpError(f"nnU-Net resampling with order_z={order} is not supported -- only 0 and 1 (nnU-Net's defaults)")


def nnunet_resample(data: np.ndarray, new_shape: tuple[int, ...], current_spacing: Any, new_spacing: Any, *,
                    order: int = 3, order_z: int = 0, force_separate_z: bool | None = None,
                    is_seg: bool = False, threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg_to_shape`` for (C, X, Y, Z) data (``is_seg`` must be False).

    Returns:
        (C, *new_shape) in ``data``'s dtype.
    """
    if is_seg:
        raise Agg2ExpError("nnU-Net segmentation resampling is not used here -- label maps are resampled nearest")
    data = np.asarray(data)
    shape, new_shape = np.array(data.shape[1:]), np.array([int(v) for v in new_shape])
    if np.all(shape == new_shape):
        return data
    do_sep, axis = _separate_z(force_separate_z, current_spacing, new_spacing, threshold)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        x = data[c].astype(np.float64, copy=False)
        if do_sep:
            plane = [a for a in range(3) if a != axis]
            tmp_shape = new_shape.copy()
            tmp_shape[axis] = shape[axis]
            tmp = np.zeros(tmp_shape)
            for s in range(shape[axis]):
                sl = tuple(s if a == axis else slice(None) for a in range(3))
                tmp[sl] = _resize(x[sl], tuple(new_shape[plane]), order)
            out[c] = _resample_axis(tmp, int(new_shape[axis]), axis, order_z) if shape[axis] != new_shape[axis] else tmp
        else:
            out[c] = _resize(x, tuple(new_shape), order)
    return out


def _bbox_nonzero(arr: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """nnU-Net's ``crop_to_nonzero``: the hole-filled nonzero mask and its bounding box."""
    mask = ndimage.binary_fill_holes(arr != 0)
    if not mask.any():  # an all-zero scan: nothing to crop to, keep it whole
        return np.ones_like(mask), tuple(slice(0, n) for n in arr.shape)
    box = []
    for ax in range(arr.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(arr.ndim) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return mask[tuple(box)], tuple(box)


@dataclass
class NnUNetPreprocessing:
    """What an nnU-Net v2 result folder's plans say about its input (one channel, 3D).

    Attributes:
        spacing: the configuration's target spacing (transposed axes, as in the plans).
        transpose_forward: the plans' axis transpose (applied after the reader's axis reversal).
        reader: the plans' ``image_reader_writer``.
        normalization: the configuration's normalisation scheme of the channel.
        intensity: the channel's ``foreground_intensity_properties_per_channel`` entry.
        use_mask_for_norm: z-score inside the nonzero mask only.
        data_resampling, probability_resampling: the ``resampling_fn_*_kwargs`` (order, order_z, force_separate_z).
        canonical: reorient to RAS before the reader's axis reversal (``NibabelIOWithReorient``; TotalSegmentator
            reorients with ``nib.as_closest_canonical`` before calling nnU-Net).
    """

    spacing: tuple[float, float, float]
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    reader: str = "SimpleITKIO"
    normalization: str = "CTNormalization"
    intensity: dict[str, float] = field(default_factory=dict)
    use_mask_for_norm: bool = False
    data_resampling: dict[str, Any] = field(default_factory=lambda: {"order": 3, "order_z": 0, "force_separate_z": None})
    probability_resampling: dict[str, Any] = field(
        default_factory=lambda: {"order": 1, "order_z": 0, "force_separate_z": None})
    canonical: bool = False
    #: the predictor resamples the logits to the input grid, then takes the argmax (``prepare_case``)
    prediction_from = "logits"

    def to_dict(self) -> dict[str, Any]:
        return {"format": "nnunetv2", "spacing": list(self.spacing), "transpose_forward": list(self.transpose_forward),
                "reader": self.reader, "normalization": self.normalization, "intensity": dict(self.intensity),
                "use_mask_for_norm": self.use_mask_for_norm, "data_resampling": dict(self.data_resampling),
                "probability_resampling": dict(self.probability_resampling), "canonical": self.canonical}

    # -- geometry -----------------------------------------------------------------------------------
    def _axes(self, volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(array, M, ornt, reorient)``: the scan in nnU-Net's axes (before cropping), the 4x4 map from those
        voxel indices to the input's, the nibabel orientation transform input axes -> model axes, and the
        transform input -> RAS when ``canonical`` (else None)."""
        arr, m0, tfm = volume.array, np.eye(4), None
        if self.canonical:
            tfm = nio.ornt_transform(nio.io_orientation(volume.affine), nio.axcodes2ornt(("R", "A", "S")))
            m0 = nio.inv_ornt_aff(tfm, arr.shape)
            arr = nio.apply_orientation(arr, tfm)
        perm = [2 - int(t) for t in self.transpose_forward]  # reader reverses the axes, then transpose_forward
        arr = np.transpose(arr, perm)
        m1 = np.zeros((4, 4))
        m1[3, 3] = 1
        for a, p in enumerate(perm):
            m1[p, a] = 1
        m = m0 @ m1
        ornt = np.zeros((3, 2))  # input axis i -> model axis a (flipped if the map's entry is negative)
        for i in range(3):
            a = int(np.flatnonzero(np.abs(m[i, :3]) > 0.5)[0])
            ornt[i] = [a, 1 if m[i, a] > 0 else -1]
        return arr, m, ornt, tfm

    def _normalize(self, arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
        img = arr.astype(np.float32, copy=True)
        if self.normalization == "CTNormalization":
            p = self.intensity
            np.clip(img, p["percentile_00_5"], p["percentile_99_5"], out=img)
            img -= p["mean"]
            img /= max(p["std"], 1e-8)
        elif self.normalization == "ZScoreNormalization":
            if self.use_mask_for_norm:
                mean, std = img[mask].mean(), img[mask].std()
                img[mask] = (img[mask] - mean) / max(std, 1e-8)
            else:
                mean, std = img.mean(), img.std()
                img -= mean
                img /= max(std, 1e-8)
        elif self.normalization == "RescaleTo01Normalization":
            img -= img.min()
            img /= np.clip(img.max(), a_min=1e-8, a_max=None)
        return img

    def apply(self, volume: Volume, window_size: tuple[int, int, int] | None = None) -> Preprocessed:
        """Preprocess ``volume`` as nnU-Net does; the result maps back with nnU-Net's inverse."""
        arr, m_axes, ornt, reorient = self._axes(volume)
        spacing_in = np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0))
        spacing_t = np.abs(m_axes[:3, :3].T) @ spacing_in  # the input spacing along the model axes
        oriented_shape = tuple(int(s) for s in arr.shape)
        mask, box = _bbox_nonzero(arr)
        arr = arr[box]
        cropped_shape = tuple(int(s) for s in arr.shape)
        target = np.asarray(self.spacing, float)
        new_shape = tuple(int(round(float(s / t * n))) for s, t, n in zip(spacing_t, target, cropped_shape))  # noqa: RUF046
        arr = self._normalize(arr, mask)
        arr = nnunet_resample(arr[None], new_shape, spacing_t, target, **self.data_resampling)[0]
        ws = tuple(window_size) if window_size is not None else new_shape
        padded = tuple(max(n, w) for n, w in zip(new_shape, ws))
        pad = tuple(((p - n) // 2, p - n - (p - n) // 2) for p, n in zip(padded, new_shape))
        arr = np.pad(arr, pad, constant_values=0)
        # model voxel k -> resampled j = k - pad -> cropped (j + 0.5) * scale - 0.5 -> uncropped + box start
        scale = np.array(cropped_shape, float) / np.array(new_shape, float)
        m = np.eye(4)
        m[:3, :3] = np.diag(scale)
        m[:3, 3] = 0.5 * scale - 0.5 + np.array([b.start for b in box]) - scale * np.array([b for b, _ in pad])
        affine = volume.affine @ m_axes @ m
        geometry = _Geometry(self, reorient, oriented_shape, box, cropped_shape, spacing_t,
                             tuple(int(s) for s in volume.array.shape), pad, new_shape)
        return Preprocessed(
            array=np.ascontiguousarray(arr, dtype=np.float32), affine=affine,
            input_shape=tuple(int(s) for s in volume.array.shape), input_affine=volume.affine.copy(),
            ornt=ornt, oriented_shape=oriented_shape, resampled_shape=new_shape, pad=pad,
            inverse=geometry.inverse, forward_labels=geometry.forward_labels,
        )


@dataclass
class _Geometry:
    """The grid mapping of one preprocessed scan (what ``Preprocessed.inverse`` / ``forward_labels`` use)."""

    spec: NnUNetPreprocessing
    reorient: np.ndarray | None  # nibabel transform input -> RAS (``canonical``), else None
    oriented_shape: tuple[int, int, int]
    box: tuple[slice, ...]
    cropped_shape: tuple[int, int, int]
    spacing: np.ndarray
    input_shape: tuple[int, int, int]
    pad: tuple[tuple[int, int], ...]
    resampled_shape: tuple[int, int, int]

    def _to_input_axes(self, arr: np.ndarray) -> np.ndarray:
        """(..., nnU-Net axes) -> (..., input axes): undo the transposes (and the reorientation)."""
        lead = arr.ndim - 3
        perm = [2 - int(t) for t in self.spec.transpose_forward]
        inv = np.argsort(perm)
        arr = np.transpose(arr, list(range(lead)) + [lead + int(i) for i in inv])
        if self.reorient is not None:  # undo the RAS reorientation
            back = _invert_ornt(self.reorient)
            flat = arr.reshape((-1,) + arr.shape[lead:])
            arr = np.stack([nio.apply_orientation(c, back) for c in flat]).reshape(arr.shape[:lead] + self.input_shape)
        return arr

    def inverse(self, array: np.ndarray, mode: str = "trilinear") -> np.ndarray:
        """(..., model grid) -> (..., input grid): nnU-Net's export (labels: nearest; maps: its probability resampling)."""
        lead = array.shape[:-3]
        crop = tuple(slice(b, b + n) for (b, _), n in zip(self.pad, self.resampled_shape))
        x = np.asarray(array)[(Ellipsis,) + crop]
        flat = x.reshape((-1,) + x.shape[-3:])
        if mode == "nearest":
            idx = [_nearest_index(n_new=c, n_old=r) for c, r in zip(self.cropped_shape, self.resampled_shape)]
            res = flat[np.ix_(np.arange(flat.shape[0]), *idx)]
        else:
            res = nnunet_resample(flat.astype(np.float32, copy=False), self.cropped_shape, self.spec.spacing,
                                  self.spacing, **self.spec.probability_resampling)
        full = np.zeros((flat.shape[0],) + self.oriented_shape, dtype=res.dtype)
        full[(slice(None),) + self.box] = res
        out = self._to_input_axes(full)
        return out.reshape(lead + self.input_shape)

    def forward_labels(self, labels: np.ndarray) -> np.ndarray:
        """An input-grid label map on the model grid (nearest neighbour, 0 in the padding)."""
        arr = np.asarray(labels)
        if self.reorient is not None:
            arr = nio.apply_orientation(arr, self.reorient)
        arr = np.transpose(arr, [2 - int(t) for t in self.spec.transpose_forward])[self.box]
        idx = [_nearest_index(n_new=r, n_old=c) for r, c in zip(self.resampled_shape, self.cropped_shape)]
        arr = arr[np.ix_(*idx)]
        return np.pad(arr, self.pad, constant_values=0)


def _nearest_index(n_new: int, n_old: int) -> np.ndarray:
    """Nearest source index of each target voxel on voxel-edge aligned grids (``(i + 0.5) * old/new - 0.5``)."""
    c = (np.arange(n_new) + 0.5) * (n_old / n_new) - 0.5
    return np.clip(np.floor(c + 0.5), 0, n_old - 1).astype(np.int64)


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (input axis i -> output axis ornt[i, 0], flip ornt[i, 1])."""
    inv = np.zeros_like(np.asarray(ornt, dtype=float))
    for i, (ax, flip) in enumerate(np.asarray(ornt, dtype=float)):
        inv[int(ax)] = [i, flip]
    return inv
