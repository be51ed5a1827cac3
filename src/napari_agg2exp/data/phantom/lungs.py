"""Painter of the lungs: the five lobes and their fissures, outside the other organs' keep-out."""

from __future__ import annotations

import numpy as np

from napari_agg2exp.data.phantom.canvas import _Canvas
from napari_agg2exp.data.phantom.tissues import _HU, _L


class _LungsMixin(_Canvas):
    """Lung lobes and fissures."""

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
