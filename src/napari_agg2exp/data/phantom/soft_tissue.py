"""Painters of the soft tissue: the body wall (fat, muscle, mediastinal fat, abdomen, liver) and
the autochthonous back muscles."""

from __future__ import annotations

import numpy as np

from napari_agg2exp.data.phantom.canvas import _Canvas
from napari_agg2exp.data.phantom.tissues import _HU, _L


class _SoftTissueMixin(_Canvas):
    """Body wall and back muscles."""

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
