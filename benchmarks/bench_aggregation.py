"""Benchmark: local RoI importance, one pass per target vs one masked pass per RoI.

Computes the local importance (SPEC §4: mass and mean, parts abs/pos/neg) of 17 target maps over
the 17 thorax RoIs of a synthetic thorax-like label volume, with
:func:`napari_agg2exp.importance.local.local_importance` (runs + weighted bincount) and with
:func:`napari_agg2exp.importance.local.naive_local_importance` (one masked sum per target × part × RoI),
side by side in one run, checks that both agree and prints the timings and the speedup.

Usage::

    python benchmarks/bench_aggregation.py            # 256^3, 17 targets x 17 RoIs x 3 parts
    python benchmarks/bench_aggregation.py --size 96  # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_agg2exp.importance.local import local_importance, naive_local_importance
from napari_agg2exp.data.labels import THORAX_LABELS


def thorax_phantom(size: int) -> np.ndarray:
    """A (size,)*3 uint8 label volume with the 17 thorax labels as simple shapes (ids as THORAX_LABELS)."""
    s = size
    x, y, z = (np.arange(s, dtype=np.float32)[:, None, None] / s,
               np.arange(s, dtype=np.float32)[None, :, None] / s,
               np.arange(s, dtype=np.float32)[None, None, :] / s)
    lab = np.zeros((s, s, s), np.uint8)

    def ell(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1

    ring = np.sqrt(((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2)
    ribs = (np.abs(ring - 1) < 0.04) & (np.sin(z * 60) > 0.3) & (y > 0.3)
    cart = (np.abs(ring - 1) < 0.04) & (np.sin(z * 60) > 0.3) & (y <= 0.3)
    shapes = [
        (ell(0.33, 0.5, 0.65, 0.13, 0.2, 0.22), 2),   # upper left lobe
        (ell(0.33, 0.55, 0.35, 0.14, 0.2, 0.18), 3),  # lower left lobe
        (ell(0.67, 0.5, 0.7, 0.13, 0.2, 0.18), 4),    # upper right lobe
        (ell(0.67, 0.45, 0.5, 0.12, 0.15, 0.08), 5),  # middle right lobe
        (ell(0.67, 0.55, 0.32, 0.14, 0.2, 0.17), 6),  # lower right lobe
        (ell(0.5, 0.35, 0.45, 0.12, 0.12, 0.13), 8),  # heart
        (ell(0.55, 0.5, 0.5, 0.03, 0.03, 0.45), 1),   # aorta
        (ell(0.5, 0.42, 0.8, 0.02, 0.02, 0.2), 7),    # trachea
        (ell(0.45, 0.45, 0.45, 0.05, 0.02, 0.05), 9),  # pulmonary vein
        (ell(0.5, 0.38, 0.95, 0.06, 0.03, 0.04), 10),  # thyroid
        (ribs, 11),
        (cart, 16),
        (ell(0.5, 0.72, 0.5, 0.05, 0.05, 0.5) & (np.sin(z * 40) > -0.6), 12),  # vertebrae
        (ell(0.42, 0.8, 0.5, 0.05, 0.04, 0.5), 13),
        (ell(0.58, 0.8, 0.5, 0.05, 0.04, 0.5), 14),
        (ell(0.5, 0.17, 0.5, 0.03, 0.02, 0.35), 15),  # sternum
    ]
    for mask, k in shapes:
        lab[np.broadcast_to(mask, lab.shape)] = k
    return lab


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic volume (default 256)")
    parser.add_argument("--targets", type=int, default=17, help="number of target maps (default 17)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    labels = thorax_phantom(args.size)
    maps = {}
    for k in range(args.targets):
        name = THORAX_LABELS[k % len(THORAX_LABELS)] if k < len(THORAX_LABELS) else f"target_{k}"
        a = rng.standard_normal(labels.shape, dtype=np.float32)
        a *= (labels == (k % 17)).astype(np.float32) * 4 + 1  # more attribution inside the target's RoI
        maps[name] = a
    prep = time.perf_counter() - t0
    n_rois = len(np.unique(labels))
    print(f"volume {args.size}^3 = {labels.size:,} voxels, {args.targets} targets, {n_rois} RoIs, 3 parts "
          f"(mass and mean); data generated in {prep:.1f}s")

    t0 = time.perf_counter()
    fast = local_importance(maps, labels, THORAX_LABELS)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = naive_local_importance(maps, labels, THORAX_LABELS)
    t_naive = time.perf_counter() - t0

    diff = np.nanmax(np.abs(fast[["mass", "mean"]].to_numpy() - naive[["mass", "mean"]].to_numpy()))
    same_nan = np.array_equal(fast[["mass", "mean"]].isna().to_numpy(), naive[["mass", "mean"]].isna().to_numpy())
    rows = len(fast)
    print()
    print(f"{'algorithm':<42} {'time (s)':>9} {'per target (ms)':>16} {'speedup':>8}")
    print(f"{'naive: masked sum per target x part x RoI':<42} {t_naive:9.2f} {1000 * t_naive / args.targets:16.1f} "
          f"{1.0:7.1f}x")
    print(f"{'local_importance: runs + bincount':<42} {t_fast:9.2f} {1000 * t_fast / args.targets:16.1f} "
          f"{t_naive / t_fast:7.1f}x")
    print()
    print(f"{rows} rows each; max |difference| {diff:.2e}; missing values identical: {same_nan}")


if __name__ == "__main__":
    main()
