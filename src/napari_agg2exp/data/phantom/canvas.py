"""The drawing state of one phantom, shared by the organ painters.

:class:`_Canvas` holds the random streams, the body outline and wall layers, the image and label
arrays being painted, the lung keep-out mask, every anatomical parameter (:meth:`_Canvas.plan`)
and the positions derived from them (:meth:`_Canvas.layout`).

Random streams: one :class:`numpy.random.SeedSequence` per seed, split into anatomy, pathology and
intensity streams, so the labels of a seed are identical with pathologies on or off, and the image
differs only around the pathologies.
"""

from __future__ import annotations

import numpy as np

from napari_agg2exp.data.phantom.grid import _NOMINAL_FOV, _Grid, _u
from napari_agg2exp.data.phantom.tissues import _HU


class _Canvas:
    """Drawing state of one phantom. All sizes in nominal mm (see :class:`_Grid`)."""

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

    # -- applying organ paint operations (mask, HU, label) ------------------------------------
    def apply(self, ops: list) -> None:
        for mask, hu, label in ops:
            if isinstance(mask, tuple):
                self.img[mask] = hu
                if label is not None:
                    self.lab[mask] = label
            else:
                self.paint(mask, hu, label)

    # -- anatomical parameters ----------------------------------------------------------------
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
