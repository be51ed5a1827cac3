"""The whole phantom: all organ painters, run in anatomical order, then the intensity model
(per-case texture, contrast, offset, optional smoothing, noise)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from napari_agg2exp.data.phantom.grid import _u
from napari_agg2exp.data.phantom.lungs import _LungsMixin
from napari_agg2exp.data.phantom.mediastinum import _MediastinumMixin
from napari_agg2exp.data.phantom.pathology import _PathologyMixin
from napari_agg2exp.data.phantom.skeleton import _SkeletonMixin
from napari_agg2exp.data.phantom.soft_tissue import _SoftTissueMixin


class _Builder(_SoftTissueMixin, _SkeletonMixin, _MediastinumMixin, _LungsMixin, _PathologyMixin):
    """Paints one phantom. All sizes in nominal mm (see :class:`_Grid`)."""

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
            img = gaussian_filter(img, smooth, mode="nearest")
        img = img * np.float32(contrast) + np.float32(offset) + np.float32(sigma) * noise
        img = np.round(np.clip(img, -1024.0, 3071.0)).astype(np.float32)
        return img, self.lab, path
