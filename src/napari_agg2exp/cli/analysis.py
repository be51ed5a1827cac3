"""``agg2exp`` analysis commands: ``aggregate``, ``global``, ``outliers``, ``report``.

Thin callers of :mod:`napari_agg2exp.importance`; every user error raises
:class:`~napari_agg2exp.errors.Agg2ExpError` (printed on one line, exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
from fractions import Fraction
from pathlib import Path

import networkx as nx

from napari_agg2exp.cli.arguments import prepare_out_dir
from napari_agg2exp.cli.progress import TerminalProgress
from napari_agg2exp.data.labels import read_label_names
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import OutputLock, check_writable, staged_output
from napari_agg2exp.importance.global_importance import (
    KeepRule,
    graph_summary,
    keep_rule,
    read_groups,
)
from napari_agg2exp.importance.local import look_up_part, parse_joins
from napari_agg2exp.importance.outliers import outlier_analysis
from napari_agg2exp.importance.tables import (
    join_members,
    read_quality_table,
    with_join_members,
    write_table,
)
from napari_agg2exp.report.cohort_outputs import write_global_analysis, write_outlier_analysis
from napari_agg2exp.report.html import write_cohort_report
from napari_agg2exp.workflows.case_folder import load_case
from napari_agg2exp.workflows.case_importance import case_local_importance, read_local_importance
from napari_agg2exp.workflows.reports import write_case_report

__all__ = ["register"]


def _check_out_file(path: str, overwrite: bool) -> Path:
    p = Path(path)
    if p.is_dir():
        raise Agg2ExpError(f"--out {p} is a folder -- give a file name such as {p / 'local_importance.csv'}")
    if p.exists() and not overwrite:
        raise Agg2ExpError(f"output file {p} exists -- choose another --out or pass --overwrite")
    name = p.name.lower()
    if not name.endswith((".csv", ".parquet", ".pq")):
        raise Agg2ExpError(f"--out {p}: use a .csv file (or .parquet with pyarrow installed)")
    check_writable(p.parent)
    return p


def _parts(text: str) -> list[str]:
    return [look_up_part(p) for p in text.split(",") if p.strip()]


def _cmd_aggregate(args: argparse.Namespace) -> int:
    out = _check_out_file(args.out, args.overwrite)
    parts = _parts(args.parts)
    if args.roi_names and not (args.rois or args.ground_truth):
        raise Agg2ExpError("--roi-names names the labels of --rois (or --ground-truth) -- pass one of those too")
    case = load_case(args.attributions, load_image=False)
    rois = roi_names = None
    ground_truth = False
    skip = None
    if args.rois:
        rois = load_volume(args.rois, what="RoI label volume")
        roi_names = read_label_names(args.roi_names) if args.roi_names else None
        skip = () if args.keep_zero else None
    elif args.ground_truth is True:
        ground_truth = True
        if args.roi_names:
            ground_truth = False
            rois = case.load_ground_truth()
            roi_names = read_label_names(args.roi_names)
            skip = ()
    elif args.ground_truth:
        rois = load_volume(args.ground_truth, what="ground truth")
        roi_names = read_label_names(args.roi_names) if args.roi_names else list(case.class_names)
        skip = ()
    df = case_local_importance(case, rois, roi_names, ground_truth=ground_truth, joins=args.join, parts=parts,
                               skip_labels=skip, progress=TerminalProgress("aggregate"))
    joins = parse_joins(args.join) if args.join else {}
    df = with_join_members(df, joins)  # the graph needs to know which RoIs a joined RoI contains
    write_table(df, out)
    print(f"wrote {len(df)} rows ({df['target'].nunique()} targets x {df['roi'].nunique()} RoIs x {len(parts)} "
          f"parts) to {out}")
    if joins:
        print("joined RoIs recorded in column members: "
              + ", ".join(f"{name} ({len(members)} RoIs)" for name, members in joins.items()))
    return 0


def _number(option: str, text: str | None, *, integer: bool = False) -> float | int | None:
    """Parse a keep-rule option's text (``1/3``, ``0.25``, ``5``); None when not given."""
    if text is None:
        return None
    try:
        if integer:
            return int(text)
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        example = "5" if integer else "1/3 or 0.25"
        raise Agg2ExpError(f"{option} expects {'an integer' if integer else 'a number'} such as {example}, got "
                           f"{text!r}") from None


def _keep_rule(args: argparse.Namespace) -> KeepRule:
    return keep_rule(_number("--keep-fraction", args.keep_fraction), _number("--top-k", args.top_k, integer=True),
                     _number("--keep-mass", args.keep_mass))


def _cmd_global(args: argparse.Namespace) -> int:
    part = look_up_part(args.part)
    rule = _keep_rule(args)  # validated before anything is written
    groups = read_groups(args.groups) if args.groups else None
    prepare_out_dir(args.out, args.overwrite)  # before the tables are read
    local = read_local_importance(args.tables)
    joins = join_members(local)
    out = Path(args.out)
    with staged_output(out, args.overwrite) as tmp:
        written = write_global_analysis(local, tmp, part=part, joins=joins, groups=groups,
                                        progress=TerminalProgress("figures"), **rule.kwargs())
        summary = graph_summary(nx.read_graphml(written["graphml"]))
    n_dist = sum(1 for k in written if k.startswith("distributions/"))
    print(f"{local['case'].nunique()} cases, {local['target'].nunique()} targets, {local['roi'].nunique()} RoIs")
    if joins:
        print("joined RoIs (recorded in the tables): " + ", ".join(f"{j} = {'+'.join(m)}" for j, m in joins.items()))
    print(f"graph ({part} mass): {summary}")
    print(f"wrote {out}/global_importance.csv, graph.graphml, graph.png, heatmap.png and {n_dist} figures in "
          f"{out}/distributions/")
    return 0


def _cmd_outliers(args: argparse.Namespace) -> int:
    part = look_up_part(args.part)
    train = read_local_importance(args.train)
    test = read_local_importance(args.test)
    quality = read_quality_table(args.quality)
    prepare_out_dir(args.out, args.overwrite)  # before the forests are fitted
    result = outlier_analysis(train, test, quality, seed=args.seed, part=part)
    out = Path(args.out)
    with staged_output(out, args.overwrite) as tmp:
        write_outlier_analysis(result, tmp, quality)
    for target, why in result.skipped.items():
        print(f"skipped {target}: {why}")
    print(result.spearman.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    n_out = int(result.scores["outlier"].sum())
    print(f"{n_out} of {len(result.scores)} (case, target) pairs flagged; wrote {out}/scores.csv, spearman.csv, "
          "spearman.png")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if bool(args.case_dir) == bool(args.cohort):
        raise Agg2ExpError("give either a CASE_DIR or --cohort DIR (one of them)")
    if args.out and Path(args.out).is_dir():
        raise Agg2ExpError(f"--out {args.out} is a folder -- give an .html file name")
    folder = Path(args.cohort or args.case_dir)
    check_writable(Path(args.out).parent if args.out else folder, "--out" if args.out else "report folder")
    # writing into the folder: hold its lock, so no run replaces the folder under the report
    with contextlib.nullcontext() if args.out else OutputLock(folder):
        if args.cohort:
            path = write_cohort_report(args.cohort, args.out, top=args.top)
        else:
            path = write_case_report(args.case_dir, args.out, zero_background=args.zero_background, top=args.top,
                                     progress=TerminalProgress("report"))
    print(f"report written to {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``aggregate``, ``global``, ``outliers`` and ``report`` sub-commands."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "aggregate", formatter_class=fmt, help="local RoI importance of one explained case",
        description="Local RoI importance (mass, mean; parts abs/pos/neg) of an explained case folder, for the "
                    "predicted RoIs (default), the ground truth or a custom label volume, plus joined RoIs.\n\n"
                    "example:\n  agg2exp aggregate --attributions out/case01 --rois pathology.nii.gz "
                    "--roi-names pathology.json --out case01_pathology.csv",
    )
    p.add_argument("--attributions", required=True, metavar="CASE_DIR", help="output folder of `agg2exp explain`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--rois", metavar="LABELS.nii.gz",
                     help="custom RoI label volume (resampled to the case grid by nearest neighbour if its shape "
                          "differs); label 0 is the unlabelled rest and is not reported unless --keep-zero")
    src.add_argument("--ground-truth", nargs="?", const=True, default=None, metavar="LABELS.nii.gz",
                     help="use ground-truth labels as RoIs (default file: the one named in attribution_info.json)")
    p.add_argument("--roi-names", metavar="JSON", help='names of the RoI labels: {"0": "none", "1": "nodule", ...}')
    p.add_argument("--join", action="append", default=[], metavar="NAME=a,b,...",
                   help="joined RoI, the union of the named RoIs (repeatable), e.g. lung=lung_upper_lobe_left,...")
    p.add_argument("--parts", default="abs,pos,neg", help="comma-separated parts among abs,pos,neg (default all)")
    p.add_argument("--keep-zero", action="store_true", help="also report label 0 of a custom --rois volume")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="table to write (.csv, or .parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_aggregate)

    p = subparsers.add_parser(
        "global", formatter_class=fmt, help="global RoI importance, graph and figures of a cohort",
        description="Global RoI importance over cases (mean, median, std, quartiles, n of mass), the RoI -> class "
                    "importance graph (GraphML and figure), a heatmap and per-target box plots.\n\n"
                    "writes DIR/global_importance.csv, graph.graphml, graph.png, heatmap.png, "
                    "distributions/<target>.png",
    )
    p.add_argument("tables", nargs="+", metavar="LOCAL.csv",
                   help="local importance tables (one or more), case folders, or cohort folders (with cases/)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--part", default="abs", help="part used for the graph and figures (default abs)")
    keep = p.add_argument_group(
        "edges kept (one of)",
        "Candidate edges: every RoI -> class pair except background/none, self-edges and a joined\n"
        "RoI (aggregate --join, recorded in the tables) into a RoI it contains.")
    keep.add_argument("--keep-fraction", metavar="F",
                      help="keep the heaviest F of all candidate edges, ranked over the whole graph (default 1/3; "
                           "a number or a fraction such as 1/4)")
    keep.add_argument("--top-k", metavar="K",
                      help="instead: per class, keep its K heaviest candidate edges")
    keep.add_argument("--keep-mass", metavar="F",
                      help="instead: per class, keep the heaviest candidate edges while their cumulative share "
                           "among the class's candidates <= F (0..1); the heaviest is always kept")
    p.add_argument("--groups", metavar="JSON", help='RoI -> semantic group overrides, e.g. {"nodule": "pathology"}')
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=_cmd_global)

    p = subparsers.add_parser(
        "outliers", formatter_class=fmt, help="IsolationForest outlier scan and Spearman correlation with Dice",
        description="Per target, fit IsolationForest (100 trees) on the training cohort's abs mass vectors, score "
                    "the test cohort (higher = more normal) and correlate the score with Dice (Spearman).\n\n"
                    "writes DIR/scores.csv (case,target,score,outlier), DIR/spearman.csv (target,rho,p,n), "
                    "DIR/spearman.png",
    )
    p.add_argument("--train", required=True, nargs="+", metavar="LOCAL.csv", help="local tables of the training cohort")
    p.add_argument("--test", required=True, nargs="+", metavar="LOCAL.csv", help="local tables of the scanned cohort")
    p.add_argument("--quality", required=True, metavar="QUALITY.csv", help="case,class,dice,iou of the test cases")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random_state of the forests (default 0)")
    p.add_argument("--part", default="abs", help="part forming the features (default abs, as in the paper)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=_cmd_outliers)

    p = subparsers.add_parser(
        "report", formatter_class=fmt, help="self-contained HTML report of a case or a cohort",
        description="One HTML file with embedded figures.\n\n"
                    "  agg2exp report CASE_DIR           per-class figures and local importance\n"
                    "  agg2exp report --cohort DIR       heatmap, graph, distributions, outliers (DIR = --out of "
                    "`agg2exp global`, optional DIR/outliers/)",
    )
    p.add_argument("case_dir", nargs="?", metavar="CASE_DIR", help="output folder of `agg2exp explain`")
    p.add_argument("--cohort", metavar="DIR", help="output folder of `agg2exp global`")
    p.add_argument("--out", metavar="FILE.html", help="file to write (default: report.html in the folder)")
    p.add_argument("--zero-background", action="store_true",
                   help="show attributions only where the prediction is not background (e.g. KernelSHAP)")
    p.add_argument("--top", type=int, default=5, help="RoIs listed per class (default 5)")
    p.set_defaults(func=_cmd_report)
