"""Cohort throughput on Dask (issue 7): cases per minute with 1 vs 2 LocalCluster workers, side by side.

Run: ``.venv/bin/python benchmarks/bench_cohort.py [--cases 8] [--method vg] [--model DIR]``
Each configuration runs the same phantom cohort into a fresh folder (cluster start-up included).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from napari_agg2exp.workflows.cohort import CohortConfig, run_cohort
    from napari_agg2exp.data.phantom.cohort import write_phantom_cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--method", default="vg")
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_phantom_cohort(tmp / "data", args.cases, seed=3000)
        manifest = tmp / "manifest.csv"
        with manifest.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "image", "labels"])
            for i in range(args.cases):
                w.writerow([f"c{i:03d}", tmp / f"data/case_{i:04d}/image.nii.gz", tmp / f"data/case_{i:04d}/labels.nii.gz"])
        rows = []
        for workers, threads in ((1, 1), (2, 1), (1, 2)):
            cfg = CohortConfig(method=args.method, model=args.model, device="cpu")
            t0 = time.perf_counter()
            s = run_cohort(manifest, tmp / f"out_{workers}x{threads}", cfg, workers=workers, threads_per_worker=threads,
                           log=lambda m: None)
            dt = time.perf_counter() - t0
            assert not s.failed, s.failed
            rows.append((workers, threads, dt, args.cases / dt * 60))
    print(f"{args.cases} phantom cases, method {args.method}, CPU")
    print("| workers | threads/worker | seconds | cases/min | vs 1 worker |")
    print("|---|---|---|---|---|")
    for w, t, dt, rate in rows:
        print(f"| {w} | {t} | {dt:.1f} | {rate:.2f} | {rate / rows[0][3]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
