"""Benchmark: compute time vs total time of a streamed ``explain`` (issue 12 item 5).

Segments a scan with the bundled model, then runs VG on every predicted class through
:func:`napari_agg2exp.workflows.case.run_case` writing a case folder (maps streamed: written and aggregated
as soon as their class pass is done), and prints the seconds of the segmentation, the gradients, the
writing + aggregation, and the ratio total / compute (target: at most 2).

Usage::

    agg2exp phantom --shape 384 320 192 --spacing 0.75 0.75 1.5 --out /tmp/ph
    python benchmarks/bench_stream_write.py /tmp/ph/case_0000/image.nii.gz                 # maps on the model grid
    python benchmarks/bench_stream_write.py /tmp/ph/case_0000/image.nii.gz --maps-on input # resampled to the scan
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.models.loading import load_model
from napari_agg2exp.models.prepared import prepare_case
from napari_agg2exp.workflows.case import run_case
from napari_agg2exp.workflows.case_folder import CaseFolder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--maps-on", default="model", choices=["model", "input"])
    ap.add_argument("--method", default="vg")
    args = ap.parse_args()
    vol = load_volume(args.image)
    model = load_model(device="cpu")
    t1 = time.perf_counter()
    prepared = prepare_case(model, vol)
    t_seg = time.perf_counter() - t1
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.perf_counter()
        res = run_case(model, vol, prepared=prepared, explainer=Explainer(args.method), out=CaseFolder(Path(tmp)),
                       maps_on=args.maps_on, progress=TerminalProgress(f"explain {args.method}"))
        t_explain = time.perf_counter() - t2
        size = sum(p.stat().st_size for p in (Path(tmp) / "attributions").iterdir())
    e = res.explanation
    compute, total = t_seg + e.seconds, t_seg + t_explain
    print(f"input {vol.shape}, model grid {prepared.labels.shape}, {len(e.targets)} classes, maps on the "
          f"{args.maps_on} grid ({size / 1e6:.0f} MB), load average {os.getloadavg()[0]:.1f}")
    print(f"segment {t_seg:.1f}s, gradients {e.seconds:.1f}s, write + aggregate {t_explain - e.seconds:.1f}s; "
          f"compute {compute:.1f}s, total {total:.1f}s, ratio {total / compute:.2f}")


if __name__ == "__main__":
    main()
