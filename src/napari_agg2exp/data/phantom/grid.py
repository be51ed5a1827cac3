"""The phantom's grid: its size and affine, the nominal design frame, and sampling helpers.

Geometry follows NIfTI RAS+: the affine is ``diag(spacing)`` with an origin that centres the volume
at 0 mm, so array axis 0 increases towards the patient's **right**, axis 1 towards **anterior** and
axis 2 towards **superior**. Left-sided structures (``*_left``) therefore have *smaller* axis-0
indices (negative world x) than their right counterparts.

The anatomy is designed on a nominal field of view of 288 x 240 x 288 mm (the default grid,
96 x 80 x 96 voxels of 3 mm) and scaled to the actual field of view (:class:`_Grid` maps voxels to
that nominal frame).
"""

from __future__ import annotations

import numpy as np

from napari_agg2exp.errors import Agg2ExpError

__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", "PHANTOM_SIZES"]

DEFAULT_SHAPE: tuple[int, int, int] = (96, 80, 96)
DEFAULT_SPACING: float = 3.0
#: Named grids ``name -> (shape, spacing in mm)``: the default demo grid and a clinical-size CT
#: (512 x 512 x 300 at 0.8 x 0.8 x 1.5 mm, the size the sliding windows and resampling meet in practice).
PHANTOM_SIZES: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "default": (DEFAULT_SHAPE, (DEFAULT_SPACING,) * 3),
    "full": ((512, 512, 300), (0.8, 0.8, 1.5)),
}
#: Field of view (mm) the anatomy is designed on; other grids are scaled to it.
_NOMINAL_FOV = np.array([288.0, 240.0, 288.0])
_MIN_DIM = 24


def _normalise_grid(shape, spacing) -> tuple[tuple[int, int, int], np.ndarray]:
    try:
        shp = tuple(int(s) for s in shape)
    except TypeError as e:
        raise Agg2ExpError(f"phantom shape must be three integers, got {shape!r}") from e
    if len(shp) != 3 or min(shp) < _MIN_DIM:
        raise Agg2ExpError(
            f"phantom shape must be three integers >= {_MIN_DIM}, got {shape!r}"
            " -- e.g. (96, 80, 96)"
        )
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise Agg2ExpError(f"phantom spacing must be positive (mm), got {spacing!r}")
    return shp, sp


def _phantom_affine(shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing
    return aff


def _catmull_rom(ctrl: np.ndarray, step: float) -> np.ndarray:
    """Densely sample a Catmull-Rom spline through control points (N, D), about ``step`` apart."""
    ctrl = np.asarray(ctrl, dtype=float)
    ext = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    out = [ctrl[:1]]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0, 1, n + 1)[1:, None]
        pts = 0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                     + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        out.append(pts)
    return np.vstack(out)


class _Grid:
    """Voxel coordinates in the nominal design frame, and the body-fixed ("primed") frame.

    Nominal frame: mm on the 288 x 240 x 288 design field of view, ``xl`` positive towards the
    patient's left (= minus world x), ``y`` anterior, ``z`` superior. Primed frame: the nominal
    frame shifted by the body offset ``(ox, oy, oz)`` and rotated by ``angle`` about z.
    """

    def __init__(self, shape: tuple[int, int, int], ox: float, oy: float, oz: float, angle: float):
        self.shape = shape
        self.vs = _NOMINAL_FOV / np.asarray(shape, dtype=float)  # nominal mm per voxel
        self.vmax = float(self.vs.max())
        nx, ny, nz = shape
        self.ctr = (np.asarray(shape, dtype=float) - 1) / 2
        self.xl = (-(np.arange(nx) - self.ctr[0]) * self.vs[0]).astype(np.float32)
        self.y = ((np.arange(ny) - self.ctr[1]) * self.vs[1]).astype(np.float32)
        self.z = ((np.arange(nz) - self.ctr[2]) * self.vs[2]).astype(np.float32)
        self.ox, self.oy, self.oz = ox, oy, oz
        self.c, self.s = float(np.cos(angle)), float(np.sin(angle))
        dx = self.xl[:, None] - np.float32(ox)
        dy = self.y[None, :] - np.float32(oy)
        self.X = (self.c * dx + self.s * dy).astype(np.float32)  # (nx, ny)
        self.Y = (-self.s * dx + self.c * dy).astype(np.float32)
        self.Z = (self.z - np.float32(oz)).astype(np.float32)  # (nz,)
        self.X3 = self.X[:, :, None]
        self.Y3 = self.Y[:, :, None]
        self.Z3 = self.Z[None, None, :]

    def to_nominal(self, pts: np.ndarray) -> np.ndarray:
        """Primed points (N, 3) -> nominal (xl, y, z)."""
        p = np.asarray(pts, dtype=float)
        xl = self.ox + self.c * p[:, 0] - self.s * p[:, 1]
        y = self.oy + self.s * p[:, 0] + self.c * p[:, 1]
        return np.stack([xl, y, p[:, 2] + self.oz], axis=1)

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        """Array slice along ``axis`` covering nominal coordinates [lo, hi]."""
        v, c, n = self.vs[axis], self.ctr[axis], self.shape[axis]
        if axis == 0:  # xl = -(i - c) v
            a, b = c - hi / v, c - lo / v
        else:
            a, b = c + lo / v, c + hi / v
        i0 = max(int(np.floor(a)), 0)
        i1 = min(int(np.ceil(b)) + 1, n)
        return slice(i0, max(i0, i1))

    def tubes(self, pts: np.ndarray, radii, margin: float = 0.0, out=None, keep=None):
        """Rasterise a tube (polyline with per-point radius) given in primed coordinates.

        Args:
            pts: (N, 3) centre-line points, primed frame.
            radii: scalar or (N,) radii (nominal mm).
            margin: extra distance for the ``keep`` mask.
            out: bool array updated in place with the tube (created when None).
            keep: optional bool array updated with the tube grown by ``margin``.

        Returns:
            ``out``.
        """
        pts = np.asarray(pts, dtype=float)
        r = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),))
        w = self.to_nominal(pts)
        if out is None:
            out = np.zeros(self.shape, dtype=bool)
        coords = (self.xl, self.y, self.z)
        for a, b, ra, rb in zip(w[:-1], w[1:], r[:-1], r[1:]):
            reach = max(ra, rb) + margin
            lo, hi = np.minimum(a, b) - reach, np.maximum(a, b) + reach
            sl = tuple(self.index_range(ax, lo[ax], hi[ax]) for ax in range(3))
            if any(s.stop <= s.start for s in sl):
                continue
            q = [coords[ax][sl[ax]].astype(float) - a[ax] for ax in range(3)]
            qx, qy, qz = q[0][:, None, None], q[1][None, :, None], q[2][None, None, :]
            ab = b - a
            l2 = float(ab @ ab)
            t = (qx * ab[0] + qy * ab[1] + qz * ab[2]) / l2 if l2 > 0 else np.zeros(1)
            t = np.clip(t, 0.0, 1.0)
            d2 = (qx - t * ab[0]) ** 2 + (qy - t * ab[1]) ** 2 + (qz - t * ab[2]) ** 2
            sd = np.sqrt(d2) - (ra + t * (rb - ra))
            out[sl] |= sd <= 0
            if keep is not None:
                keep[sl] |= sd <= margin
        return out


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))
