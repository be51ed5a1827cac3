"""Painter of the pathologies: lung nodules and a pleural effusion, from their own random stream."""

from __future__ import annotations

import numpy as np

from napari_agg2exp.data.labels import PATHOLOGY_LABELS
from napari_agg2exp.data.phantom.canvas import _Canvas
from napari_agg2exp.data.phantom.grid import _u
from napari_agg2exp.data.phantom.tissues import _L

_LUNG_IDS = tuple(_L[n] for n in (
    "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
))
_NODULE = PATHOLOGY_LABELS.index("nodule")
_EFFUSION = PATHOLOGY_LABELS.index("effusion")


class _PathologyMixin(_Canvas):
    """Nodules and effusions inside the painted lungs."""

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
