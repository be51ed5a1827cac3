"""Painters of the mediastinum and neck: heart, aorta, pulmonary veins, trachea and bronchi,
oesophagus, thyroid.

Each painter returns paint operations ``(mask, HU, label)`` and extends the lung keep-out.
"""

from __future__ import annotations

import numpy as np

from napari_agg2exp.data.phantom.canvas import _Canvas
from napari_agg2exp.data.phantom.grid import _catmull_rom
from napari_agg2exp.data.phantom.tissues import _HU, _L


class _MediastinumMixin(_Canvas):
    """Organs between the lungs, and the thyroid above them."""

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

    def mediastinum_keepout(self) -> None:
        g = self.g
        w = self.r_tr + self.t_tw + 10.0
        y0 = self.y_tr_low - 4.0
        y1 = self.B - self.d_st - 0.5 * self.th_st
        cy, sy = 0.5 * (y0 + y1), 0.5 * (y1 - y0)
        e = (((g.X - self.tx) / w) ** 2 + ((g.Y - cy) / sy) ** 2) < 1
        self.keep |= e[:, :, None] & (g.Z3 > self.z_car - 10.0)
