"""Synthetic thorax CT phantoms with the 17 labels of SPEC §9.

The phantoms serve the demo, the tests and the training of the bundled model, so the anatomy is
plausible but above all *learnable*: every structure is a few voxels thick, has a distinct intensity
or a clear positional context, and is present in every case.

Geometry follows NIfTI RAS+: the affine is ``diag(spacing)`` with an origin that centres the volume
at 0 mm, so array axis 0 increases towards the patient's **right**, axis 1 towards **anterior** and
axis 2 towards **superior**. Left-sided structures (``*_left``) therefore have *smaller* axis-0
indices (negative world x) than their right counterparts.

The anatomy is designed on a nominal field of view of 288 x 240 x 288 mm (the default grid,
96 x 80 x 96 voxels of 3 mm) and scaled to the actual field of view, so the body always fills about
85 % of the image width. Thin structures keep a minimum thickness in voxels (ribs, veins, fissures,
thyroid), so small grids (e.g. ``shape=(48, 40, 48), spacing=6.0``) still contain every label.

Random streams: one :class:`numpy.random.SeedSequence` per seed, split into anatomy, pathology and
intensity streams, so the labels of a seed are identical with pathologies on or off, and the image
differs only around the pathologies.

Example:
    >>> case = make_phantom(3)
    >>> image, labels, pathology = case.volumes()
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.data.labels import PATHOLOGY_LABELS, THORAX_LABELS, label_names_json
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report
from napari_agg2exp.data.volume import Volume, atomic_write_text, default_permissions, save_volume

__all__ = [
    "PhantomCase",
    "make_phantom",
    "write_phantom_cohort",
    "case_seed",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
]

DEFAULT_SHAPE: tuple[int, int, int] = (96, 80, 96)
DEFAULT_SPACING: float = 3.0
#: Field of view (mm) the anatomy is designed on; other grids are scaled to it.
_NOMINAL_FOV = np.array([288.0, 240.0, 288.0])
_MIN_DIM = 24

_L = {name: i for i, name in enumerate(THORAX_LABELS)}
_LUNG_IDS = tuple(_L[n] for n in (
    "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
))
_NODULE = PATHOLOGY_LABELS.index("nodule")
_EFFUSION = PATHOLOGY_LABELS.index("effusion")


@dataclass
class PhantomCase:
    """One synthetic thorax CT.

    Attributes:
        image: float32 HU values (rounded to whole HU), shape ``shape``.
        labels: uint8 label ids, index into :data:`~napari_agg2exp.data.labels.THORAX_LABELS`.
        pathology: uint8 custom RoI volume, ids index into
            :data:`~napari_agg2exp.data.labels.PATHOLOGY_LABELS` (0 none, 1 nodule, 2 effusion).
            Pathology voxels always lie inside lung labels; ``labels`` does not depend on them.
        affine: 4x4 voxel-to-world matrix (RAS+ mm), ``diag(spacing)`` with the volume centred at 0.
        seed: the seed that reproduces this case with :func:`make_phantom`.
    """

    image: np.ndarray
    labels: np.ndarray
    pathology: np.ndarray
    affine: np.ndarray
    seed: int

    def volumes(self) -> tuple[Volume, Volume, Volume]:
        """The image, labels and pathology as :class:`~napari_agg2exp.data.volume.Volume` objects.

        Returns:
            ``(image, labels, pathology)`` sharing one affine (copied per volume).
        """
        return (
            Volume(self.image, self.affine.copy(), "image"),
            Volume(self.labels, self.affine.copy(), "labels"),
            Volume(self.pathology, self.affine.copy(), "pathology"),
        )


# ----------------------------------------------------------------------------------------------
# Grid and geometry helpers
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


#: Base intensities (HU) before the per-case contrast, offset, smoothing and noise.
_HU = {
    "air": -1000.0, "fat": -100.0, "med_fat": -90.0, "muscle": 40.0, "lung": -850.0,
    "fissure": -700.0, "liver": 60.0, "abdomen": 35.0, "oesophagus": 25.0, "autochthon": 50.0,
    "disc": 80.0, "bone_cortex": 400.0, "bone_trab": 250.0, "cord": 25.0, "rib": 600.0,
    "cartilage": 120.0, "sternum": 400.0, "sternum_inner": 300.0, "myocardium": 40.0,
    "blood_pool": 70.0, "aorta": 200.0, "vein": 180.0, "trachea_wall": 30.0, "thyroid": 90.0,
    "nodule": 30.0, "effusion": 15.0,
}


class _Builder:
    """Paints one phantom. All sizes in nominal mm (see :class:`_Grid`)."""

    def __init__(self, shape: tuple[int, int, int], seed: int):
        ss = np.random.SeedSequence([int(seed), 0x7A4])
        s_anat, s_path, s_int = ss.spawn(3)
        self.rng = np.random.default_rng(s_anat)
        self.rng_path = np.random.default_rng(s_path)
        self.rng_int = np.random.default_rng(s_int)
        rng = self.rng
        vs_max = float((_NOMINAL_FOV / np.asarray(shape, dtype=float)).max())
        self.vmax = v = vs_max
        # body: elliptic cylinder, offset and small rotation about z
        self.A = _u(rng, 0.80, 0.90) * _NOMINAL_FOV[0] / 2
        self.B = _u(rng, 0.84, 0.90) * _NOMINAL_FOV[1] / 2
        off = min(2.5 * v, 8.0)
        g = _Grid(shape, _u(rng, -off, off), _u(rng, -min(off, 5.0), min(off, 5.0)),
                  _u(rng, -off, off), np.deg2rad(_u(rng, -6.0, 6.0)))
        self.g = g
        self.img = np.full(shape, _HU["air"], dtype=np.float32)
        self.lab = np.zeros(shape, dtype=np.uint8)
        self.keep = np.zeros(shape, dtype=bool)  # lung keep-out (organs + margin)
        self.m = max(3.0, 1.0 * v)  # keep-out margin
        # body surface depth along rays from the body axis (2D)
        r = np.sqrt(g.X**2 + g.Y**2)
        rs = np.maximum(r, 1e-3)
        rho = 1.0 / np.sqrt((g.X / rs / self.A) ** 2 + (g.Y / rs / self.B) ** 2)
        self.D = (rho - r).astype(np.float32)
        self.PHI = np.arctan2(g.X, -g.Y).astype(np.float32)  # 0 posterior, + left, +-pi anterior
        # wall layers
        self.t_fat = max(_u(rng, 8.0, 14.0), 1.5 * v)
        self.t_mus = max(_u(rng, 8.0, 12.0), 1.5 * v)
        self.r_rd = max(4.5, 1.5 * v)  # rib radius in depth
        self.r_rz = max(6.0, 1.5 * v)  # rib radius along z
        self.d_rib = self.t_fat + self.t_mus + self.r_rd
        self.d_in = self.d_rib + self.r_rd + max(3.0, 0.6 * v)

    # -- painting helpers ---------------------------------------------------------------------
    def paint(self, mask: np.ndarray, hu, label: int | None = None) -> None:
        if isinstance(hu, np.ndarray):
            self.img[mask] = hu[mask] if hu.shape == mask.shape else hu
        else:
            np.putmask(self.img, mask, np.float32(hu))
        if label is not None:
            np.putmask(self.lab, mask, np.uint8(label))

    def zband(self, lo: float, hi: float) -> np.ndarray:
        return ((self.g.Z >= lo) & (self.g.Z <= hi))[None, None, :]

    def depth_point(self, x: float, y: float) -> float:
        r = max(float(np.hypot(x, y)), 1e-3)
        rho = 1.0 / np.sqrt((x / r / self.A) ** 2 + (y / r / self.B) ** 2)
        return float(rho - r)

    # -- anatomy ------------------------------------------------------------------------------
    def plan(self) -> None:
        """Draw every anatomical parameter (fixed order: determinism)."""
        rng, v, A, B = self.rng, self.vmax, self.A, self.B
        # spine
        self.ax_vb = _u(rng, 18.0, 22.0)
        self.ay_vb = _u(rng, 13.0, 15.5)
        self.y_vb = -B + _u(rng, 0.54, 0.58) * B
        self.r_c = max(7.0, 1.5 * v)
        self.t_arch = max(4.5, 1.0 * v)
        self.y_c = self.y_vb - self.ay_vb - self.r_c - 1.0
        self.tp_len = _u(rng, 20.0, 26.0)
        self.P = _u(rng, 25.0, 28.0)
        self.disc = max(5.0, 1.05 * v)
        self.z_phase = _u(rng, 0.0, self.P)
        # autochthon
        y_post = -B + self.t_fat + 1.0
        y_front = self.y_c + _u(rng, 0.0, 3.0)
        self.au_cy = 0.5 * (y_post + y_front)
        self.au_sy = 0.5 * (y_front - y_post) + 3.0
        self.au_sx = _u(rng, 17.0, 21.0)
        self.au_cx = max(4.0, 0.6 * v) + self.au_sx + _u(rng, 1.0, 4.0)
        self.au_shell = max(3.0, 1.0 * v)
        # lungs / diaphragm
        self.cxl = 0.52 * A
        self.wxl = 0.48 * A
        self.zd_R = _u(rng, -72.0, -62.0)
        self.zd_L = self.zd_R - _u(rng, 6.0, 14.0)
        self.hd = _u(rng, 28.0, 38.0)
        self.hp = _u(rng, 12.0, 22.0)
        self.z_ap = _u(rng, 88.0, 98.0)
        self.h_ap = _u(rng, 50.0, 65.0)
        self.x_med = max(_u(rng, 6.0, 10.0), 0.6 * v)
        self.fis_L = (_u(rng, -25.0, -8.0), _u(rng, 0.9, 1.25), _u(rng, -0.15, 0.15))
        self.fis_R = (_u(rng, -25.0, -8.0), _u(rng, 0.9, 1.25), _u(rng, -0.15, 0.15))
        self.fis_H = (_u(rng, -2.0, 12.0), _u(rng, -0.08, 0.08), _u(rng, -0.08, 0.08))
        # sternum
        self.th_st = max(_u(rng, 10.0, 13.0), 2.0 * v)
        self.d_st = self.t_fat + 0.5 * self.t_mus + 0.5 * self.th_st
        self.st_top = self.z_ap - _u(rng, 5.0, 15.0)
        self.st_bot = self.st_top - _u(rng, 150.0, 170.0)
        self.w_st_top = max(_u(rng, 20.0, 25.0), 1.5 * v)
        self.w_st_bot = max(_u(rng, 12.0, 15.0), 1.5 * v)
        # heart
        self.h_a1 = _u(rng, 47.0, 53.0)
        self.h_a2 = _u(rng, 34.0, 38.0)
        self.h_c = _u(rng, 42.0, 48.0)
        self.h_rot = np.deg2rad(_u(rng, 24.0, 36.0))
        self.hx = _u(rng, 10.0, 18.0)
        self.h_shell = max(4.0, 1.0 * v)
        ext_y = float(np.hypot(self.h_a1 * np.sin(self.h_rot), self.h_a2 * np.cos(self.h_rot)))
        self.h_ext_y = ext_y
        self.hy = (B - self.d_st - 0.5 * self.th_st) - self.h_shell - _u(rng, 2.0, 6.0) - ext_y
        # oesophagus / trachea / carina
        self.r_oe = max(_u(rng, 6.0, 8.0), 1.5 * v)
        self.x_oe = _u(rng, 1.0, 6.0)
        self.y_oe = self.y_vb + self.ay_vb + self.r_oe + _u(rng, 1.5, 3.5)
        self.r_tr = max(_u(rng, 9.0, 11.0), 1.5 * v)
        self.t_tw = max(2.5, 1.0 * v)
        self.tx = _u(rng, -3.0, 3.0)
        self.y_tr_low = self.y_oe + self.r_oe + self.r_tr + self.t_tw + _u(rng, 0.5, 2.5)
        self.y_tr_top = self.y_tr_low + _u(rng, 6.0, 14.0)
        self.bron = (_u(rng, 26.0, 32.0), _u(rng, -2.0, 4.0), _u(rng, 13.0, 17.0),
                     _u(rng, 36.0, 42.0), _u(rng, 0.0, 6.0), _u(rng, 18.0, 23.0))
        self.r_b = max(_u(rng, 6.5, 7.5), 1.5 * v)
        self.car_gap = _u(rng, 10.0, 22.0)
        # aorta
        self.r_ao = max(_u(rng, 11.0, 13.0), 1.5 * v)
        self.ao_gap = _u(rng, 2.0, 5.0)
        self.arch_dz = _u(rng, 32.0, 40.0)
        self.ao_jit = rng.uniform(-3.0, 3.0, size=(8, 3))
        # pulmonary veins
        self.r_v = max(_u(rng, 5.5, 6.5), 1.5 * v)
        self.pv = rng.uniform(0.0, 1.0, size=(4, 6))
        # ribs
        self.n_ribs = int(rng.integers(8, 11))
        self.rib_drop = rng.uniform(1.15, 1.4, size=self.n_ribs)
        self.phi1 = rng.uniform(0.68, 0.74, size=self.n_ribs) * np.pi
        self.rib_top = self.z_ap - _u(rng, 0.0, 10.0)
        # thyroid
        self.thy = (max(_u(rng, 6.5, 8.5), 1.3 * v), max(_u(rng, 8.5, 11.0), 1.3 * v),
                    max(_u(rng, 16.0, 21.0), 2.0 * v), _u(rng, 6.0, 9.0), _u(rng, 0.0, 4.0),
                    _u(rng, 26.0, 34.0))
        # abdomen
        self.liver_hu = _u(rng, 55.0, 65.0)


    # -- derived layout -----------------------------------------------------------------------
    def z_dia(self, side: int, X=None, Y=None):
        """Diaphragm height under the lung of ``side`` (+1 left, -1 right); 2D map by default."""
        X = self.g.X if X is None else X
        Y = self.g.Y if Y is None else Y
        zd = self.zd_L if side > 0 else self.zd_R
        return zd - self.hd * ((X - side * self.cxl) / self.wxl) ** 2 \
            - self.hp * np.clip(-Y / self.B, 0.0, 1.0)

    def layout(self) -> None:
        """Positions that depend on several organs (heart height, carina, aorta path)."""
        self.hz = float(self.z_dia(+1, self.hx, self.hy)) + 0.85 * self.h_c
        self.z_car = self.hz + self.h_c + self.car_gap
        self.z_arch = self.z_car + self.arch_dz
        self.x_desc = 0.75 * self.ax_vb + 0.5 * self.r_ao + self.ao_gap
        self.y_desc = self.y_vb + 0.9 * self.ay_vb + 0.55 * self.r_ao
        min_d = self.r_ao + self.r_oe + 2.0
        if np.hypot(self.x_desc - self.x_oe, self.y_desc - self.y_oe) < min_d:
            self.x_oe = self.x_desc - min_d
        self.top = float(_NOMINAL_FOV[2] / 2)

    def y_trachea(self, z):
        """Trachea centre y at height ``z`` (a little more anterior in the neck)."""
        t = np.clip((np.asarray(z, dtype=float) - self.z_car) / (self.top - self.z_car), 0.0, 1.0)
        return self.y_tr_low + t * (self.y_tr_top - self.y_tr_low)

    def smooth_field(self, rng: np.random.Generator, cells=(8, 7, 8)) -> np.ndarray:
        """A smooth random field (unit variance at the nodes), linearly interpolated."""
        coarse = rng.standard_normal(cells).astype(np.float32)
        out = coarse
        for ax, (n_in, n_out) in enumerate(zip(cells, self.g.shape)):
            pos = np.linspace(0, n_in - 1, n_out)
            i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
            w = (pos - i0).astype(np.float32)
            W = np.zeros((n_out, n_in), dtype=np.float32)
            W[np.arange(n_out), i0] = 1 - w
            W[np.arange(n_out), i0 + 1] += w
            out = np.moveaxis(np.tensordot(W, np.moveaxis(out, ax, 0), axes=(1, 0)), 0, ax)
        return np.ascontiguousarray(out, dtype=np.float32)

    # -- organs: each returns paint operations (mask, HU, label) and extends the lung keep-out --
    def spine(self) -> list:
        g, v = self.g, self.vmax
        ks = np.arange(-20, 21)
        zk = self.z_phase + ks * self.P
        zk = zk[np.abs(zk) < _NOMINAL_FOV[2]]
        Z = g.Z
        dz_body = np.min(np.abs(Z[:, None] - zk[None, :]), axis=1)
        half = 0.5 * (self.P - self.disc)
        in_body_z = (dz_body <= half)[None, None, :]
        tc = max(2.5, 0.6 * v)
        q = (g.X / self.ax_vb) ** 2 + ((g.Y - self.y_vb) / self.ay_vb) ** 2
        q_in = (g.X / (self.ax_vb - tc)) ** 2 + ((g.Y - self.y_vb) / (self.ay_vb - tc)) ** 2
        col = (q < 1)[:, :, None]
        ops = [
            (col & ~in_body_z, _HU["disc"], 0),
            (col & in_body_z, _HU["bone_cortex"], _L["vertebrae"]),
            ((q_in < 1)[:, :, None] & (dz_body <= half - tc)[None, None, :], _HU["bone_trab"],
             None),
        ]
        # posterior elements per level: arch, pedicles, spinous and transverse processes
        dz_post = np.min(np.abs(Z[:, None] - (zk[None, :] - 0.1 * self.P)), axis=1)
        in_post_z = (dz_post <= max(0.3 * self.P, 0.6 * v))[None, None, :]
        rc = np.sqrt(g.X**2 + (g.Y - self.y_c) ** 2)
        ra = self.r_c + self.t_arch
        arch = (rc >= self.r_c) & (rc < ra) & (g.Y < self.y_c + 0.5 * self.r_c)
        pedicle = (np.abs(g.X) < ra) & (np.abs(g.X) > self.r_c - 1.0) & (g.Y >= self.y_c) & \
            (g.Y < self.y_vb)
        spin = (np.abs(g.X) < max(3.5, 0.6 * v)) & (g.Y <= self.y_c - self.r_c) & \
            (g.Y > -self.B + self.t_fat + 5.0)
        tp = (np.abs(g.Y - self.y_c) < max(4.0, 0.6 * v)) & (np.abs(g.X) >= self.r_c) & \
            (np.abs(g.X) < ra + self.tp_len)
        ops.append((((arch | pedicle | spin | tp)[:, :, None]) & in_post_z, _HU["bone_cortex"],
                    _L["vertebrae"]))
        ops.append(((rc < self.r_c)[:, :, None] & np.ones((1, 1, g.shape[2]), bool), _HU["cord"],
                    0))
        self.tp_tip = (ra + self.tp_len, self.y_c)
        self.z_levels = zk
        m = self.m
        ko = ((g.X / (self.ax_vb + m)) ** 2 + ((g.Y - self.y_vb) / (self.ay_vb + m)) ** 2 < 1) | (
            (np.abs(g.X) < ra + m) & (g.Y < self.y_vb))
        self.keep |= ko[:, :, None]
        return ops

    def autochthon(self) -> list:
        g, ops = self.g, []
        ones = np.ones((1, 1, g.shape[2]), bool)
        smin = min(self.au_sx, self.au_sy)
        inside = self.D > self.t_fat
        for side, name in ((+1, "autochthon_left"), (-1, "autochthon_right")):
            r = np.sqrt(((g.X - side * self.au_cx) / self.au_sx) ** 2
                        + ((g.Y - self.au_cy) / self.au_sy) ** 2)
            ops.append((((r < 1.0 + self.au_shell / smin) & inside)[:, :, None] & ones,
                        _HU["fat"], 0))
            ops.append((((r < 1.0) & inside)[:, :, None] & ones, _HU["autochthon"], _L[name]))
            self.keep |= ((r < 1.0 + (self.au_shell + self.m) / smin) & inside)[:, :, None]
        return ops

    def oesophagus(self) -> list:
        pts = np.array([[self.x_oe, self.y_oe, self.top + 20],
                        [self.x_oe, self.y_oe, -self.top - 20]])
        mask = self.g.tubes(pts, self.r_oe, self.m, keep=self.keep)
        return [(mask, _HU["oesophagus"], 0)]

    def trachea(self) -> list:
        g = self.g
        zs = np.linspace(self.top + 20, self.z_car, 8)
        line = np.stack([np.full_like(zs, self.tx), self.y_trachea(zs), zs], axis=1)
        b = self.bron
        car = line[-1]
        right = np.array([car, [self.tx - b[0], self.y_tr_low + b[1], self.z_car - b[2]]])
        left = np.array([car, [self.tx + b[3], self.y_tr_low + b[4], self.z_car - b[5]]])
        self.bronchus_end = {-1: right[1], +1: left[1]}
        outer = np.zeros(g.shape, bool)
        lumen = np.zeros(g.shape, bool)
        g.tubes(line, self.r_tr + self.t_tw, self.m, out=outer, keep=self.keep)
        g.tubes(line, self.r_tr, out=lumen)
        for br in (right, left):
            g.tubes(br, self.r_b + self.t_tw, self.m, out=outer, keep=self.keep)
            g.tubes(br, self.r_b, out=lumen)
        return [(outer, _HU["trachea_wall"], _L["trachea"]), (lumen, _HU["air"], _L["trachea"])]

    def heart(self) -> tuple[list, list]:
        g = self.g
        c, s = np.cos(self.h_rot), np.sin(self.h_rot)
        dx, dy = g.X - self.hx, g.Y - self.hy
        q2 = ((c * dx + s * dy) / self.h_a1) ** 2 + ((-s * dx + c * dy) / self.h_a2) ** 2
        q = q2[:, :, None] + ((g.Z3 - self.hz) / self.h_c) ** 2
        a_min = min(self.h_a2, self.h_c)
        shell = q < (1.0 + self.h_shell / a_min) ** 2
        self.keep |= q < (1.0 + (self.h_shell + self.m) / a_min) ** 2
        return ([(shell, _HU["fat"], 0)],
                [(q < 1.0, _HU["myocardium"], _L["heart"]), (q < 0.45, _HU["blood_pool"], None)])

    def aorta(self) -> list:
        hx, hy, hz, hc = self.hx, self.hy, self.hz, self.h_c
        c0 = self.r_ao + self.r_tr + self.t_tw + 4.0
        za = self.z_arch
        ytr = float(self.y_trachea(za))
        tx = self.tx
        j = self.ao_jit
        ctrl = np.array([
            [hx - 0.28 * self.h_a1, hy - 0.1 * self.h_a2, hz + 0.1 * hc],
            [hx - 0.40 * self.h_a1 + j[0, 0], hy - 0.15 * self.h_a2 + j[0, 1], hz + hc + 4.0],
            [tx - 0.3 * c0 + j[1, 0], ytr + 1.0 * c0 + abs(j[1, 1]), za - 16.0],
            [tx + 0.45 * c0 + j[2, 0], ytr + 0.95 * c0 + abs(j[2, 1]), za + j[2, 2]],
            [tx + 1.05 * c0 + abs(j[3, 0]), ytr + 0.15 * c0 + j[3, 1], za - 5.0],
            [self.x_desc, self.y_desc, za - 0.8 * c0],
            [self.x_desc, self.y_desc, za - 1.6 * c0 - 10.0],
        ])
        pts = _catmull_rom(ctrl, step=max(4.0, self.vmax))
        tail = np.array([[self.x_desc, self.y_desc, -self.top - 20.0]])
        pts = np.vstack([pts, tail])
        radii = np.full(len(pts), self.r_ao)
        radii[-2:] = max(0.9 * self.r_ao, 1.5 * self.vmax)
        mask = self.g.tubes(pts, radii, self.m, keep=self.keep)
        return [(mask, _HU["aorta"], _L["aorta"])]

    def veins(self) -> list:
        g, hc = self.g, self.h_c
        la = np.array([self.hx - 0.15 * self.h_a1, self.hy - 0.72 * self.h_ext_y,
                       self.hz + 0.3 * hc])
        mask = np.zeros(g.shape, bool)
        y_min_left = self.y_desc + self.r_ao + self.r_v + 3.0
        i = 0
        for side in (+1, -1):
            be = self.bronchus_end[side]
            z_cap = be[2] - (self.r_b + self.t_tw + self.r_v + 5.0)
            for sup in (True, False):
                u = self.pv[i]
                i += 1
                dz = (0.2 + 0.1 * u[0]) * hc if sup else (-0.05 - 0.1 * u[0]) * hc
                z0 = self.hz + (0.3 * hc) + dz * 0.5
                ctrl = np.array([
                    [la[0] + side * 10.0, la[1], z0],
                    [side * (38.0 + 10.0 * u[1]), la[1] - 2.0 - 6.0 * u[2], z0 + 0.6 * dz],
                    [side * (70.0 + 14.0 * u[3]), la[1] - 4.0 - 10.0 * u[4],
                     z0 + 1.2 * dz + 6.0 * (u[5] - 0.5)],
                ])
                ctrl[1:, 2] = np.minimum(ctrl[1:, 2], z_cap)
                if side > 0:
                    ctrl[:, 1] = np.maximum(ctrl[:, 1], y_min_left)
                pts = _catmull_rom(ctrl, step=max(4.0, self.vmax))
                g.tubes(pts, self.r_v, out=mask)
        return [(mask, _HU["vein"], _L["pulmonary_vein"])]

    def thyroid(self) -> list:
        g = self.g
        sx, sy, sz, gap, dy, dz = self.thy
        zc = self.top - dz
        ytr = float(self.y_trachea(zc))
        off = self.r_tr + self.t_tw + gap + sx
        mask = np.zeros(g.shape, bool)
        for side in (+1, -1):
            q = ((g.X3 - (self.tx + side * off)) / sx) ** 2 + ((g.Y3 - ytr - dy) / sy) ** 2 + \
                ((g.Z3 - zc) / sz) ** 2
            mask |= q < 1
        y0 = ytr + self.r_tr + self.t_tw + 0.5
        isth = ((np.abs(g.X - self.tx) < off) & (g.Y > y0) & (g.Y < y0 + max(5.0, self.vmax)))
        mask |= isth[:, :, None] & self.zband(zc - 0.7 * sz, zc - 0.1 * sz)
        return [(mask, _HU["thyroid"], _L["thyroid_gland"])]

    def sternum(self) -> list:
        g, v = self.g, self.vmax
        t = np.clip((g.Z - self.st_bot) / (self.st_top - self.st_bot), 0.0, 1.0)
        w = (self.w_st_bot + t * (self.w_st_top - self.w_st_bot))[None, None, :]
        zin = self.zband(self.st_bot, self.st_top)
        dd = np.abs(self.D - self.d_st)[:, :, None]
        ant = (g.Y > 0)[:, :, None]
        tc = max(2.5, 0.6 * v)
        outer = (np.abs(g.X3) < w) & (dd < 0.5 * self.th_st) & ant & zin
        inner = outer & (np.abs(g.X3) < w - tc) & (dd < 0.5 * self.th_st - tc)
        return [(outer, _HU["sternum"], _L["sternum"]), (inner, _HU["sternum_inner"], None)]

    def ribs(self) -> list:
        """Ribs (posterior + lateral arcs) and costal cartilages (anterior arcs to the sternum).

        Each rib is a tube with an elliptic cross-section in the (depth, z) plane whose centre line
        is parametrised by the angle around the body axis, so it is rasterised column by column on
        the few (x, y) pixels of its ring.
        """
        g, P = self.g, self.P
        zk_all = np.sort(self.z_levels)[::-1]
        zk_all = zk_all[zk_all <= self.rib_top]
        n = min(self.n_ribs, len(zk_all))
        zks = zk_all[:n]
        x_t, y_t = self.tp_tip
        phi0 = float(np.arctan2(x_t, -y_t)) - 0.02 * np.pi
        dive = max(self.depth_point(x_t, y_t) - self.d_rib, 0.0)
        phid = phi0 + 0.14 * np.pi
        APHI = np.abs(self.PHI)
        zs = g.Z
        n_true = 7
        st_len = self.st_top - self.st_bot
        out_r, out_c = [], []
        for j, zk in enumerate(zks):
            phi1 = float(self.phi1[j])
            drop = float(self.rib_drop[j]) * P
            z1 = zk - drop
            if j < n_true:
                z_end = self.st_top - self.r_rz - j * (st_len - 2 * self.r_rz) / (n_true - 1)
                jj = 0
            else:
                jj = j - n_true + 1
                z_end = self.st_bot + self.r_rz - jj * 2.2 * self.r_rz
            z_for_w = np.clip((z_end - self.st_bot) / st_len, 0, 1)
            w_end = self.w_st_bot + z_for_w * (self.w_st_top - self.w_st_bot)
            phi_end = np.pi - float(np.arctan2(0.5 * w_end, self.B - self.d_st)) - 0.05 * np.pi * jj
            phi_end = max(phi_end, phi1 + 0.08 * np.pi)
            sel = (APHI >= phi0) & (APHI <= phi_end)
            ii, kk = np.nonzero(sel)
            a = APHI[ii, kk].astype(float)
            post = a <= phi1
            zc = np.where(post, zk - drop * (a - phi0) / (phi1 - phi0),
                          z1 + (z_end - z1) * (a - phi1) / (phi_end - phi1))
            dc = np.where(post, self.d_rib + dive * np.clip((phid - a) / (phid - phi0), 0, 1) ** 2,
                          self.d_rib + (self.d_st - self.d_rib) * (a - phi1) / (phi_end - phi1))
            dd = (self.D[ii, kk] - dc) / self.r_rd
            ring = np.abs(dd) < 1.0
            ii, kk, zc, post, dd = ii[ring], kk[ring], zc[ring], post[ring], dd[ring]
            hz = self.r_rz * np.sqrt(1.0 - dd**2)
            hit = np.abs(zs[None, :] - zc[:, None]) <= hz[:, None]
            p, k = np.nonzero(hit)
            idx = (ii[p], kk[p], k)
            is_rib = post[p]
            out_r.append(tuple(a_[is_rib] for a_ in idx))
            out_c.append(tuple(a_[~is_rib] for a_ in idx))
        def cat(parts: list, t: int) -> np.ndarray:
            return np.concatenate([q[t] for q in parts]) if parts else np.zeros(0, dtype=np.intp)

        rib_idx = tuple(cat(out_r, t) for t in range(3))
        cc_idx = tuple(cat(out_c, t) for t in range(3))
        return [(cc_idx, _HU["cartilage"], _L["costal_cartilages"]),
                (rib_idx, _HU["rib"], _L["ribs"])]

    def mediastinum_keepout(self) -> None:
        g = self.g
        w = self.r_tr + self.t_tw + 10.0
        y0 = self.y_tr_low - 4.0
        y1 = self.B - self.d_st - 0.5 * self.th_st
        cy, sy = 0.5 * (y0 + y1), 0.5 * (y1 - y0)
        e = (((g.X - self.tx) / w) ** 2 + ((g.Y - cy) / sy) ** 2) < 1
        self.keep |= e[:, :, None] & (g.Z3 > self.z_car - 10.0)

    # -- painting -----------------------------------------------------------------------------
    def apply(self, ops: list) -> None:
        for mask, hu, label in ops:
            if isinstance(mask, tuple):
                self.img[mask] = hu
                if label is not None:
                    self.lab[mask] = label
            else:
                self.paint(mask, hu, label)

    def body(self) -> None:
        g, D = self.g, self.D
        ones = np.ones((1, 1, g.shape[2]), dtype=bool)
        self.paint((D >= 0)[:, :, None] & ones, _HU["fat"])
        self.paint((D > self.t_fat)[:, :, None] & ones, _HU["muscle"])
        self.paint((D > self.d_in)[:, :, None] & ones, _HU["med_fat"])
        zA = np.where(g.X > 0, self.z_dia(+1), self.z_dia(-1))
        abd = (D > self.t_fat + self.t_mus)[:, :, None] & (g.Z3 < zA[:, :, None])
        self.paint(abd, _HU["abdomen"])
        self.paint(abd & (g.X3 < 8.0), self.liver_hu)

    def lungs(self, tex: np.ndarray) -> None:
        g = self.g
        cav = (self.D > self.d_in)[:, :, None]
        vs = g.vs
        for side in (+1, -1):
            zap = self.z_ap - self.h_ap * (((g.X - side * self.cxl) / self.wxl) ** 2
                                           + ((g.Y + 0.1 * self.B) / (0.85 * self.B)) ** 2)
            hull = cav & (side * g.X3 > self.x_med) & (g.Z3 > self.z_dia(side)[:, :, None]) & \
                (g.Z3 < zap[:, :, None]) & ~self.keep
            lat = side * g.X3 - self.cxl
            z0, slope, ex = self.fis_L if side > 0 else self.fis_R
            nv = np.array([ex, slope, 1.0])
            nn = float(np.linalg.norm(nv))
            t_o = 0.5 * float(np.max(np.abs(nv) / nn * vs))
            d_o = ((g.Z3 - z0) + slope * g.Y3 + ex * lat) / nn
            upper = d_o >= t_o
            fis = np.abs(d_o) < t_o
            self.paint(hull, _HU["lung"] + tex)
            if side > 0:
                np.putmask(self.lab, hull & upper, _L["lung_upper_lobe_left"])
                np.putmask(self.lab, hull & ~upper, _L["lung_lower_lobe_left"])
            else:
                zh, sy, sx = self.fis_H
                nh = np.array([sx, sy, 1.0])
                nhn = float(np.linalg.norm(nh))
                t_h = 0.5 * float(np.max(np.abs(nh) / nhn * vs))
                d_h = ((g.Z3 - zh) - sy * g.Y3 - sx * lat) / nhn
                up_h = d_h >= t_h
                np.putmask(self.lab, hull & upper & up_h, _L["lung_upper_lobe_right"])
                np.putmask(self.lab, hull & upper & ~up_h, _L["lung_middle_lobe_right"])
                np.putmask(self.lab, hull & ~upper, _L["lung_lower_lobe_right"])
                fis = fis | (upper & (np.abs(d_h) < t_h))
            self.paint(hull & fis, _HU["fissure"] + 0.5 * tex)

    def pathologies(self, enabled: bool) -> np.ndarray:
        """Nodules (1) and an effusion (2), drawn from their own random stream, inside lungs."""
        path = np.zeros(self.g.shape, dtype=np.uint8)
        if not enabled:
            return path
        g, rng, v = self.g, self.rng_path, self.vmax
        has_eff = bool(rng.random() < 0.4)
        eff_side = 1 if rng.random() < 0.5 else -1
        eff_depth = max(_u(rng, 15.0, 30.0), 2.0 * v)
        eff_top = _u(rng, 25.0, 60.0)
        eff_hu = _u(rng, 8.0, 22.0)
        n_nod = int(rng.integers(0, 4))
        lut = np.zeros(256, dtype=bool)
        lut[list(_LUNG_IDS)] = True
        lung = lut[self.lab]
        if has_eff:
            lut_s = np.zeros(256, dtype=bool)
            names = (("lung_upper_lobe_left", "lung_lower_lobe_left") if eff_side > 0 else
                     ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"))
            lut_s[[_L[nm] for nm in names]] = True
            side_lung = lut_s[self.lab]
            foot = side_lung.any(axis=2)
            if foot.any():
                # dependent (posterior) fluid layer, thickest at the base, tapering upwards
                y_min = float(g.Y[foot].min())
                zd = self.zd_L if eff_side > 0 else self.zd_R
                thick = eff_depth * np.sqrt(np.clip((zd + eff_top - g.Z) / eff_top, 0.0, 1.0))
                eff = side_lung & (g.Y3 < y_min + thick[None, None, :])
                path[eff] = _EFFUSION
                self.img[eff] = eff_hu
        cand = np.flatnonzero(lung & (path == 0))
        vs = g.vs
        for _ in range(n_nod):
            r = max(_u(rng, 2.0, 4.0) * 3.0, 1.5 * v)
            hu = _u(rng, 20.0, 45.0)
            if len(cand) == 0:
                break
            for _try in range(60):
                c = np.unravel_index(int(cand[rng.integers(len(cand))]), g.shape)
                rad = np.ceil(r / vs).astype(int)
                lo = [c[a] - rad[a] for a in range(3)]
                hi = [c[a] + rad[a] + 1 for a in range(3)]
                if min(lo) < 0 or any(hi[a] > g.shape[a] for a in range(3)):
                    continue
                sl = tuple(slice(lo[a], hi[a]) for a in range(3))
                di = [(np.arange(lo[a], hi[a]) - c[a]) * vs[a] for a in range(3)]
                ball = (di[0][:, None, None] ** 2 + di[1][None, :, None] ** 2
                        + di[2][None, None, :] ** 2) <= r * r
                if not (lung[sl][ball].all() and (path[sl][ball] == 0).all()):
                    continue
                path[sl][ball] = _NODULE
                self.img[sl][ball] = hu
                break
        return path

    def build(self, pathology: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.plan()
        self.layout()
        rng_i = self.rng_int
        tex = (_u(rng_i, 12.0, 30.0) * self.smooth_field(rng_i)).astype(np.float32)
        contrast = _u(rng_i, 0.9, 1.1)
        offset = _u(rng_i, -20.0, 20.0)
        sigma = _u(rng_i, 10.0, 25.0)
        smooth = float(rng_i.uniform(0.3, 0.45)) if rng_i.random() < 0.5 else 0.0
        noise = rng_i.standard_normal(self.g.shape, dtype=np.float32)
        # shapes first (they define the lungs' keep-out), then paint in anatomical order
        spine = self.spine()
        auto = self.autochthon()
        oes = self.oesophagus()
        trach = self.trachea()
        shell, heart = self.heart()
        aorta = self.aorta()
        veins = self.veins()
        thyroid = self.thyroid()
        ribs = self.ribs()
        sternum = self.sternum()
        self.mediastinum_keepout()
        self.body()
        self.lungs(tex)
        for ops in (oes, auto, spine, ribs, sternum, shell, veins, heart, aorta, trach, thyroid):
            self.apply(ops)
        path = self.pathologies(pathology)
        img = self.img
        if smooth > 0:
            from scipy.ndimage import gaussian_filter

            img = gaussian_filter(img, smooth, mode="nearest")
        img = img * np.float32(contrast) + np.float32(offset) + np.float32(sigma) * noise
        img = np.round(np.clip(img, -1024.0, 3071.0)).astype(np.float32)
        return img, self.lab, path


def make_phantom(seed: int = 0, *, shape: Sequence[int] = DEFAULT_SHAPE,
                 spacing: float | Sequence[float] = DEFAULT_SPACING,
                 pathology: bool = True) -> PhantomCase:
    """Generate one synthetic thorax CT with the 17 labels of SPEC §9.

    Args:
        seed: non-negative integer; the same seed gives bit-identical arrays.
        shape: grid size (X, Y, Z), each at least 24. The anatomy is scaled to the field of view
            ``shape * spacing``; all labels are present for grids of 48 x 40 x 48 and larger.
        spacing: voxel size in mm (one number or three).
        pathology: add lung nodules and (sometimes) a pleural effusion. They only change the image
            and the pathology volume; ``labels`` is the same either way.

    Returns:
        The case: image (float32 HU), labels (uint8), pathology (uint8), affine, seed.

    Raises:
        Agg2ExpError: a negative or non-integer seed, or a bad shape / spacing.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Agg2ExpError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shp, sp = _normalise_grid(shape, spacing)
    image, labels, path = _Builder(shp, int(seed)).build(bool(pathology))
    return PhantomCase(image=image, labels=labels, pathology=path,
                       affine=_phantom_affine(shp, sp), seed=int(seed))


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of the cohort generated with ``seed`` (deterministic)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


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
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
        default_permissions(tmp, directory=True)
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
