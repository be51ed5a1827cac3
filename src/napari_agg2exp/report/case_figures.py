"""Paper-style attribution figures for one case (SPEC §8, appendix Figs. 1-5).

For a class: in each of the three array axes, the slice with the largest predicted area of the
class; the CT in grey; the attribution in a diverging blue-white-red map with symmetric limits at the
95th percentile of ``|a|`` (over the whole volume), voxels with ``|a|`` below 1% of ``max |a|``
transparent; the class prediction outlined in yellow. Pixels are drawn with the voxel spacing's
aspect ratio. Figures are :class:`matplotlib.figure.Figure` objects (no pyplot, no GUI backend).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import matplotlib as mpl
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

if TYPE_CHECKING:
    from napari_agg2exp.workflows.case_folder import CaseData

__all__ = ["best_slices", "case_figures", "class_figure", "display_limits", "plane_names"]

_PLANE_OF_CODE = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def best_slices(mask: np.ndarray, weights: np.ndarray | None = None) -> tuple[int, int, int]:
    """Per array axis, the index of the slice with the largest area of ``mask`` (or of ``weights``).

    An empty mask gives the middle slices.
    """
    if weights is None:
        weights = mask
    w = np.asarray(weights, dtype=float)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        profile = w.sum(axis=other)
        out.append(int(np.argmax(profile)) if profile.max() > 0 else w.shape[axis] // 2)
    return tuple(out)


def display_limits(attribution: np.ndarray, percentile: float = 95.0, transparent_below: float = 0.01
                   ) -> tuple[float, float]:
    """(symmetric colour limit, transparency threshold) of an attribution map.

    The limit is the ``percentile`` of ``|a|`` (``max |a|`` if that is 0; 1 for an all-zero map);
    values with ``|a|`` below ``transparent_below * max |a|`` are not drawn.
    """
    mag = np.abs(np.asarray(attribution, dtype=np.float32)).ravel()
    top = float(mag.max()) if mag.size else 0.0
    vlim = float(np.percentile(mag, percentile)) if mag.size else 0.0
    if vlim <= 0:
        vlim = top if top > 0 else 1.0
    return vlim, transparent_below * top


def plane_names(affine: np.ndarray | None) -> tuple[str, str, str]:
    """Anatomical plane shown by a slice across each array axis (from the affine's orientation)."""
    if affine is None:
        return ("axis 0", "axis 1", "axis 2")

    try:
        codes = nib.orientations.aff2axcodes(np.asarray(affine, float))
    except (ValueError, np.linalg.LinAlgError):  # degenerate affine
        return ("axis 0", "axis 1", "axis 2")
    return tuple(_PLANE_OF_CODE.get(c, f"axis {i}") if c else f"axis {i}" for i, c in enumerate(codes))


def _take(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice oriented for ``imshow(origin='lower')``: rows = the later axis, columns = the earlier."""
    return np.take(vol, index, axis=axis).T


def class_figure(
    image: Volume | np.ndarray,
    attribution: np.ndarray,
    prediction: np.ndarray,
    class_id: int | None,
    *,
    class_name: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    zero_background: bool = False,
    percentile: float = 95.0,
    transparent_below: float = 0.01,
    title: str | None = None,
    cmap: str = "bwr",
) -> Figure:
    """Three-plane figure of one class's attribution map over the CT.

    Args:
        image: (X, Y, Z) CT (a :class:`~napari_agg2exp.data.volume.Volume` gives spacing and plane names).
        attribution: (X, Y, Z) attribution map of the class.
        prediction: (X, Y, Z) predicted labels.
        class_id: label id of the class (outlined in yellow, slices chosen by its area); ``None``
            chooses the slices by attribution magnitude and draws no outline.
        class_name: name shown in the title.
        spacing: voxel sizes (default: from ``image``'s affine, else isotropic).
        zero_background: set the attribution to 0 where the prediction is background (label 0),
            e.g. for KernelSHAP maps.
        percentile: colour limits at this percentile of ``|a|``.
        transparent_below: values with ``|a|`` below this fraction of ``max |a|`` are transparent.
        title: figure title (default: the class name).
        cmap: diverging colour map.

    Returns:
        A matplotlib Figure with three panels and a colour bar.

    Raises:
        Agg2ExpError: the three volumes do not share one 3D shape.
    """
    affine = image.affine if isinstance(image, Volume) else None
    img = np.asarray(getattr(image, "array", image), dtype=np.float32)
    a = np.asarray(attribution, dtype=np.float32)
    pred = np.asarray(prediction)
    if not (img.ndim == 3 and img.shape == a.shape == pred.shape):
        raise Agg2ExpError(f"image {img.shape}, attribution {a.shape} and prediction {pred.shape} must share one 3D "
                           "shape -- they must be on the same grid")
    if spacing is None:
        spacing = image.spacing if isinstance(image, Volume) else (1.0, 1.0, 1.0)
    if zero_background:
        a = np.where(pred > 0, a, 0).astype(np.float32)
    vlim, thresh = display_limits(a, percentile, transparent_below)
    mask = pred == class_id if class_id is not None else None
    if mask is not None and mask.any():
        slices = best_slices(mask)
    else:
        slices = best_slices(np.abs(a) > thresh, np.abs(a))
    sub = img[::2, ::2, ::2] if img.size > 2_000_000 else img
    lo, hi = (float(v) for v in np.percentile(sub, [1, 99]))
    if hi <= lo:
        hi = lo + 1
    colours = mpl.colormaps[cmap].with_extremes(bad=(0, 0, 0, 0))
    planes = plane_names(affine)

    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 3)
    im = None
    for axis, ax in enumerate(axes):
        k = slices[axis]
        h_axis, v_axis = (x for x in range(3) if x != axis)
        ax.imshow(_take(img, axis, k), cmap="gray", vmin=lo, vmax=hi, origin="lower",
                  aspect=spacing[v_axis] / spacing[h_axis], interpolation="nearest")
        sl = _take(a, axis, k)
        im = ax.imshow(np.ma.masked_where(np.abs(sl) < thresh, sl), cmap=colours, vmin=-vlim, vmax=vlim,
                       origin="lower", aspect=spacing[v_axis] / spacing[h_axis], interpolation="nearest")
        if mask is not None:
            m = _take(mask, axis, k)
            if m.any() and not m.all():
                ax.contour(m.astype(np.float32), levels=[0.5], colors="yellow", linewidths=1.0)
        ax.set_title(f"{planes[axis]} (axis {axis} = {k})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label=f"attribution (limits: {percentile:g}th percentile of |a|)")
    name = class_name if class_name is not None else (f"class {class_id}" if class_id is not None else "")
    note = (" (prediction outlined)" if mask is not None and mask.any()
            else " (not predicted)" if mask is not None else "")
    fig.suptitle((title or name) + note)
    return fig


def case_figures(case: CaseData, targets: Iterable[str] | None = None, *,
                 zero_background: bool = False) -> dict:
    """:func:`class_figure` for every (or the given) target of a loaded case.

    Args:
        case: a :class:`~napari_agg2exp.workflows.case_folder.CaseData` loaded with its image.
        targets: targets to draw (default: every attribution map).
        zero_background: as in :func:`class_figure`.

    Returns:
        target -> Figure, in class order.
    """
    if case.image is None:
        raise Agg2ExpError(f"case {case.case_dir} was loaded without its image -- load it with load_image=True")
    ids = {n: i for i, n in enumerate(case.class_names)}
    method = case.info.get("method", "")
    out = {}
    for target in targets if targets is not None else list(case.attributions):
        out[target] = class_figure(
            case.image, case.map_on_image_grid(target), case.prediction.array, ids.get(target), class_name=target,
            zero_background=zero_background,
            title=f"{case.name}: {target}" + (f" ({method})" if method else ""),
        )
    return out
