"""CLI: ``cohort`` -- explain a manifest of scans on Dask, resumable, then (optionally) analyse."""

from __future__ import annotations

from pathlib import Path

from napari_agg2exp.cli.main import TerminalProgress, window_from_args
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("cohort", help="explain many scans on Dask (local cluster or --scheduler); resumable")
    p.add_argument("manifest", help="CSV with columns case,image and optional labels,rois")
    p.add_argument("--method", required=True, help="vg, ig, sg, kernelshap-cubes or kernelshap-semantic")
    p.add_argument("--classes", default="all", help="comma-separated class names or 'all'")
    p.add_argument("--steps", type=int, default=None, help="IG steps")
    p.add_argument("--samples", type=int, default=None, help="SG samples / KernelSHAP coalitions")
    p.add_argument("--noise-level", type=float, default=0.1)
    p.add_argument("--baseline", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", required=True, help="cohort folder (rerun the same command to resume)")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: #GPUs, else 1)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per worker (each worker runs one case at a time)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--keep-maps", action="store_true", help="keep attribution maps (float16, compressed maps.npz)")
    p.add_argument("--retry-failed", action="store_true", help="also redo the cases listed in failed.csv")
    p.add_argument("--analyse", action="store_true", help="global importance, graph, outliers (--train) and cohort report")
    p.add_argument("--train", nargs="+", default=None, help="local-importance tables of a training cohort (outliers)")
    p.add_argument("--model", default=None, help="model folder or TorchScript (default: bundled)")
    p.add_argument("--label-names", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--trust-checkpoint", action="store_true")
    g = p.add_argument_group("sliding window")
    g.add_argument("--window-size", type=int, nargs="+", default=None)
    g.add_argument("--overlap", type=float, default=0.25)
    g.add_argument("--blend", default="constant")
    p.set_defaults(func=cmd_cohort)


def cmd_cohort(args) -> int:
    from napari_agg2exp.attribution.explainer import method_defaults
    from napari_agg2exp.workflows.cohort import CohortConfig, read_manifest, run_cohort
    from napari_agg2exp.models.inference import check_window_options

    method_defaults(args.method)
    rows = read_manifest(args.manifest)
    ws = window_from_args(args)
    check_window_options(ws or 96, args.overlap, args.blend)
    params = {"targets": None if args.classes == "all" else args.classes, "n_steps": args.steps,
              "n_samples": args.samples, "noise_level": args.noise_level, "baseline": args.baseline,
              "seed": args.seed, "window_size": list(ws) if ws else None, "overlap": args.overlap,
              "blend": args.blend, "internal_batch_size": args.batch_size}
    cfg = CohortConfig(method=args.method, parameters=params, model=args.model, label_names=args.label_names,
                       trust_checkpoint=args.trust_checkpoint, device=args.device, keep_maps=args.keep_maps)
    s = run_cohort(rows, args.out, cfg, workers=args.workers, threads_per_worker=args.threads_per_worker,
                   scheduler=args.scheduler, retry_failed=args.retry_failed, progress=TerminalProgress("cohort"))
    n_ok = len(s.done) + len(s.skipped)
    rate = len(s.done) / (s.seconds / 60) if s.done and s.seconds > 0 else 0.0
    print(f"{n_ok}/{len(rows)} cases committed ({len(s.done)} now, {len(s.skipped)} before) in {s.seconds:.1f}s"
          + (f", {rate:.2f} cases/min" if rate else ""))
    if s.failed:
        print(f"{len(s.failed)} case(s) failed, see {Path(args.out) / 'failed.csv'} (rerun with --retry-failed)")
    if args.analyse:
        _analyse(args, s)
    return 1 if s.failed else 0


def _analyse(args, s) -> None:
    from napari_agg2exp.importance.global_importance import write_global_analysis
    from napari_agg2exp.importance.outliers import outlier_analysis, write_outlier_analysis
    from napari_agg2exp.report.html import write_cohort_report
    from napari_agg2exp.importance.tables import read_local_table, read_local_tables, read_quality_table

    out = Path(args.out)
    if "local_importance" not in s.tables:
        raise Agg2ExpError("no committed case to analyse")
    local = read_local_table(out / "local_importance.csv")
    write_global_analysis(local, out)
    if args.train:
        if not (out / "quality.csv").exists():
            raise Agg2ExpError("outliers need Dice per case: give a labels column in the manifest")
        res = outlier_analysis(read_local_tables(args.train), local, read_quality_table(out / "quality.csv"), seed=args.seed)
        write_outlier_analysis(res, out / "outliers", quality=read_quality_table(out / "quality.csv"))
    report = write_cohort_report(out)
    print(f"cohort analysis in {out}: global_importance.csv, graph.graphml, heatmap.png; report {report}")
