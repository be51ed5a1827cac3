"""CLI: ``cohort`` -- explain a manifest of scans on Dask, resumable, then (optionally) analyse."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from napari_agg2exp.attribution.methods import METHODS
from napari_agg2exp.cli.arguments import add_method_args, add_model_args, add_window_args, window_from_args
from napari_agg2exp.cli.explain import explainer_from_args
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import OutputLock, make_staging_dir, move_entries
from napari_agg2exp.importance.outliers import outlier_analysis
from napari_agg2exp.importance.tables import read_local_table, read_local_tables, read_quality_table
from napari_agg2exp.models.inference import check_window_options
from napari_agg2exp.models.loading import check_model_window
from napari_agg2exp.report.cohort_outputs import write_global_analysis, write_outlier_analysis
from napari_agg2exp.report.html import write_cohort_report
from napari_agg2exp.workflows.cohort import CohortConfig, CohortSummary, check_cohort_out, run_cohort
from napari_agg2exp.workflows.dask_cluster import check_scheduler
from napari_agg2exp.workflows.manifest import read_manifest

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cohort", help="explain many scans on Dask (local cluster or --scheduler); resumable")
    p.add_argument("manifest", help="CSV with columns case,image and optional labels,rois")
    p.add_argument("--method", required=True, help="attribution method: " + ", ".join(METHODS))
    p.add_argument("--classes", default="all", help="comma-separated class names or 'all'")
    add_method_args(p)
    p.add_argument("--out", required=True, help="cohort folder (rerun the same command to resume)")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: #GPUs, else 1)")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="torch threads per worker (each worker runs one case at a time)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--keep-maps", action="store_true", help="keep each case's attribution maps (cases/<case>/attributions/)")
    p.add_argument("--retry-failed", action="store_true", help="also redo the cases listed in failed.csv")
    p.add_argument("--analyse", action="store_true", help="global importance, graph, outliers (--train) and cohort report")
    p.add_argument("--train", nargs="+", default=None, help="local-importance tables of a training cohort (outliers)")
    add_model_args(p)
    add_window_args(p, batch=False)
    p.set_defaults(func=cmd_cohort)


def cmd_cohort(args: argparse.Namespace) -> int:
    explainer = explainer_from_args(args.method, args)  # unknown method or bad parameters: one line, before any work
    check_cohort_out(args.out)  # a file, or not writable: one line, before any work
    rows = read_manifest(args.manifest)
    ws = window_from_args(args)
    check_window_options(ws or 96, args.overlap, args.blend)
    window = {"window_size": list(ws) if ws else None, "overlap": args.overlap, "blend": args.blend}
    cfg = CohortConfig(method=explainer.name, parameters=dict(explainer.parameters),
                       targets=None if args.classes == "all" else args.classes, window=window, model=args.model,
                       label_names=args.label_names, trust_checkpoint=args.trust_checkpoint, device=args.device,
                       keep_maps=args.keep_maps)
    check_scheduler(args.scheduler)  # seconds, not Dask's 30 s, and before anything is written
    model = cfg.load_model("cpu")  # a bad model fails once here, before the cluster starts and cohort.json
    check_model_window(model, ws)
    with OutputLock(args.out):  # one run at a time, through the analysis
        s = run_cohort(rows, args.out, cfg, workers=args.workers, threads_per_worker=args.threads_per_worker,
                       scheduler=args.scheduler, retry_failed=args.retry_failed, progress=TerminalProgress("cohort"),
                       model=model)
        _report(args, rows, s)
    return 1 if s.failed else 0


def _report(args: argparse.Namespace, rows: list, s: CohortSummary) -> None:
    n_ok = len(s.done) + len(s.skipped)
    rate = len(s.done) / (s.seconds / 60) if s.done and s.seconds > 0 else 0.0
    print(f"{n_ok}/{len(rows)} cases committed ({len(s.done)} now, {len(s.skipped)} before) in {s.seconds:.1f}s"
          + (f", {rate:.2f} cases/min" if rate else ""))
    if s.failed:
        print(f"{len(s.failed)} case(s) failed, see {Path(args.out) / 'failed.csv'} (rerun with --retry-failed)")
    if args.analyse:
        _analyse(args, s)


def _analyse(args: argparse.Namespace, s: CohortSummary) -> None:
    out = Path(args.out)
    if "local_importance" not in s.tables:
        raise Agg2ExpError("no committed case to analyse")
    local = read_local_table(out / "local_importance.csv")
    if args.train and not (out / "quality.csv").exists():
        raise Agg2ExpError("outliers need Dice per case: give a labels column in the manifest")
    tmp = make_staging_dir(out, "analysis")  # a killed run leaves it hidden; the next run removes it
    try:
        write_global_analysis(local, tmp)
        if args.train:
            quality = read_quality_table(out / "quality.csv")
            res = outlier_analysis(read_local_tables(args.train), local, quality, seed=args.seed)
            write_outlier_analysis(res, tmp / "outliers", quality=quality)
        move_entries(tmp, out)  # each file or folder of the analysis complete or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = write_cohort_report(out)
    print(f"cohort analysis in {out}: global_importance.csv, graph.graphml, heatmap.png; report {report}")
