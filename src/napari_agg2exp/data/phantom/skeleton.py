"""Painters of the skeleton: vertebral column, sternum, ribs and costal cartilages.

Each painter returns paint operations ``(mask, HU, label)`` and extends the lung keep-out.
"""

from __future__ import annotations

import numpy as np

from napari_agg2exp.data.phantom.canvas import _Canvas
from napari_agg2exp.data.phantom.grid import _NOMINAL_FOV
from napari_agg2exp.data.phantom.tissues import _HU, _L


class _SkeletonMixin(_Canvas):
    """Bones and cartilage of the thorax."""

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
