"""Cohorts on Dask distributed: one task per case, crash-safe and resumable.

Layout of a cohort folder ``DIR/``::

    cohort.json              fingerprint of the run (a rerun must match): method, parameters, targets,
                             window, keep_maps, class names and the SHA-256 of every model file
    cases/<case>/            one committed case folder (:mod:`~napari_agg2exp.workflows.case_folder`):
                             prediction, labels.json, local_importance.csv, quality.csv (with labels),
                             attribution_info.json, case.json [, attributions/ with keep_maps]
    local_importance.csv     all committed cases (rebuilt from cases/, never holds a case twice)
    quality.csv              idem, for cases with labels
    failed.csv               case,error of cases that failed (retry with retry_failed=True)

Each case runs :func:`~napari_agg2exp.workflows.case.run_case` into ``cases/.<case>.partial.*`` and
is renamed into place: a case folder exists only when complete. A rerun skips committed cases; it is
refused (one line naming what differs) when the model's files (spec, weights, labels...) or any
output-shaping option changed. One run at a time holds the folder
(:class:`~napari_agg2exp.files.OutputLock`); staging folders of killed runs are removed on the next.
Workers return small tables, never maps; each worker holds one case at a time. The folder must be on
a file system that every worker sees (local disk for a LocalCluster, a shared one on a cluster).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.errors import Agg2ExpError, Cancelled
from napari_agg2exp.files import (
    OutputLock,
    atomic_write_text,
    check_writable,
    file_digest,
    make_staging_dir,
    remove_stale_staging,
)
from napari_agg2exp.models.loading import SegmentationModel, bundled_model_path, load_model
from napari_agg2exp.progress import CancelFlag, ProgressCallback, is_cancelled, report
from napari_agg2exp.workflows.case import run_case
from napari_agg2exp.workflows.case_folder import CaseFolder, is_case_folder
from napari_agg2exp.workflows.dask_cluster import connect, worker_device
from napari_agg2exp.workflows.manifest import read_manifest

__all__ = ["CohortConfig", "CohortSummary", "check_cohort_out", "run_cohort", "process_case", "combine_tables", "committed_cases"]


@dataclass
class CohortConfig:
    """What every case of a cohort is run with (recorded in ``cohort.json``).

    Attributes:
        method: attribution method; ``parameters`` its parameters (:class:`Explainer` names).
        targets: classes to explain (``None`` = every predicted class).
        window: sliding-window settings (``window_size``, ``overlap``, ``blend``).
        model, label_names, trust_checkpoint, device: how workers load the model (``None`` = bundled).
        keep_maps: keep each case's attribution maps.
    """

    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    targets: str | list[str] | None = None
    window: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    label_names: str | None = None
    trust_checkpoint: bool = False
    device: str = "auto"
    keep_maps: bool = False

    def explainer(self) -> Explainer:
        return Explainer(self.method, **self.parameters)

    def load_model(self, device: str | None = None) -> SegmentationModel:
        """The model, as the workers load it (on ``device``, default the configured one)."""
        return load_model(self.model, label_names=self.label_names, device=device or self.device,
                          trust_checkpoint=self.trust_checkpoint)

    def fingerprint(self, model: SegmentationModel | None = None) -> dict[str, Any]:
        """What a rerun must not change: everything that shapes the outputs.

        The model enters by content: the SHA-256 of every file it was read from
        (:attr:`SegmentationModel.files`: spec, configs, plans, weights, labels) -- or of its parameters
        where a format lists no files -- and its class names; not by its path. ``model`` is the loaded
        model (loaded here on the CPU if not given).
        """
        model = model if model is not None else self.load_model("cpu")
        if model.files:
            content = [[Path(f).name, file_digest(f)] for f in model.files]
        else:
            content = [["parameters", _network_digest(model.network)]]
        targets = self.targets if self.targets is None or isinstance(self.targets, str) else ",".join(self.targets)
        return {"method": self.method, "parameters": dict(sorted(self.explainer().recorded_parameters().items())),
                "targets": targets, "window": dict(sorted(self.window.items())), "keep_maps": bool(self.keep_maps),
                "model": content, "class_names": list(model.class_names)}


def _network_digest(network: Any) -> str:
    """SHA-256 over a network's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def committed_cases(out_dir: str | os.PathLike) -> set[str]:
    """Names of the complete case folders under ``out_dir/cases`` (any layout version)."""
    d = Path(out_dir) / "cases"
    if not d.is_dir():
        return set()
    return {p.name for p in d.iterdir() if not p.name.startswith(".") and is_case_folder(p)}


# ---------------------------------------------------------------- worker side

_MODEL_CACHE: dict[tuple, Any] = {}


def _model(cfg: CohortConfig):
    key = (cfg.model, cfg.label_names, cfg.device, cfg.trust_checkpoint)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(cfg.model, label_names=cfg.label_names, device=worker_device(cfg.device),
                                       trust_checkpoint=cfg.trust_checkpoint)
    return _MODEL_CACHE[key]


def _error_line(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, Agg2ExpError):
        return msg
    tb = traceback.format_exc(limit=3).strip().splitlines()
    return f"{type(e).__name__}: {msg}" + (f" [{tb[-3].strip()}]" if len(tb) > 3 else "")


def process_case(row: dict[str, str], out_dir: str, cfg: CohortConfig, threads: int | None = None) -> dict[str, Any]:
    """Run one case and commit ``cases/<case>/`` atomically. Never raises: errors are returned.

    Returns:
        ``{"case", "status": "ok"|"exists"|"failed", "error", "local": csv text, "quality": csv text, "seconds"}``
    """
    t0 = time.perf_counter()
    case = row["case"]
    cases_dir = Path(out_dir) / "cases"
    final = cases_dir / case
    if is_case_folder(final):
        return {"case": case, "status": "exists", "error": "", "seconds": 0.0}
    tmp = make_staging_dir(cases_dir, case)
    try:
        if threads:
            torch.set_num_threads(int(threads))
        model = _model(cfg)
        res = run_case(model, row["image"], case=case, ground_truth=row.get("labels"), explainer=cfg.explainer(),
                       targets=cfg.targets, rois=row.get("rois"), out=CaseFolder(tmp, final=final),
                       keep_maps=cfg.keep_maps, record={"worker_seconds": round(time.perf_counter() - t0, 3)},
                       **cfg.window)
        try:
            os.replace(tmp, final)
        except OSError:
            if is_case_folder(final):  # committed meanwhile by another run: keep that one
                return {"case": case, "status": "exists", "error": "", "seconds": time.perf_counter() - t0}
            raise
        quality = res.quality.to_csv(index=False) if res.quality is not None else ""
        return {"case": case, "status": "ok", "error": "", "local": res.local_importance.to_csv(index=False),
                "quality": quality, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - a failing case is recorded, never stops the others
        return {"case": case, "status": "failed", "error": _error_line(e), "seconds": time.perf_counter() - t0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- driver side


def _write_failed(path: Path, failed: dict[str, str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "error"])
    w.writerows(sorted(failed.items()))
    atomic_write_text(path, buf.getvalue())


def _read_failed(out: Path) -> dict[str, str]:
    p = out / "failed.csv"
    if not p.exists():
        return {}
    with p.open(newline="") as f:
        return {r["case"]: r["error"] for r in csv.DictReader(f)}


def combine_tables(out_dir: str | os.PathLike, cases: list[str] | None = None) -> dict[str, Path]:
    """Rebuild ``local_importance.csv`` and ``quality.csv`` from the committed case folders."""
    out = Path(out_dir)
    committed = committed_cases(out)
    names = sorted(committed) if cases is None else [c for c in cases if c in committed]
    written = {}
    for table in ("local_importance", "quality"):
        frames = [pd.read_csv(out / "cases" / c / f"{table}.csv", dtype={"case": str})
                  for c in names if (out / "cases" / c / f"{table}.csv").exists()]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            written[table] = atomic_write_text(out / f"{table}.csv", df.to_csv(index=False))
    return written


#: How a fingerprint key is named in the refusal.
_WHAT = {"model": "model files (spec, weights, labels)", "class_names": "class names", "keep_maps": "--keep-maps",
         "targets": "classes", "window": "window settings"}


def _check_config(out: Path, cfg: CohortConfig, model: SegmentationModel | None = None) -> None:
    """Refuse a resume whose fingerprint differs from the recorded one; record it on a first run."""
    p = out / "cohort.json"
    fp = json.loads(json.dumps(cfg.fingerprint(model)))
    if p.exists():
        try:
            old = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}
        recorded = old.get("fingerprint") or {}
        if recorded != fp:
            diff = [_WHAT.get(k, k) for k in fp if fp[k] != recorded.get(k)]
            raise Agg2ExpError(
                f"{out} holds a cohort run with other settings ({', '.join(diff) or 'unknown'} differ; see {p}) -- "
                "use another --out, or rerun with the recorded model, method, parameters and options"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        model_path = str(Path(cfg.model).resolve()) if cfg.model else str(bundled_model_path())
        atomic_write_text(p, json.dumps({"fingerprint": fp, "model": model_path, "label_names": cfg.label_names,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


def check_cohort_out(out_dir: str | os.PathLike) -> Path:
    """Refuse (one line, before any work) a cohort --out that is a file or cannot be written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Agg2ExpError(f"cohort --out {out} is a file -- give a folder (new, or a cohort folder to resume)")
    check_writable(out)
    return out


@dataclass
class CohortSummary:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    tables: dict[str, Path]


def run_cohort(
    manifest: str | os.PathLike | list[dict[str, str]],
    out_dir: str | os.PathLike,
    cfg: CohortConfig,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    retry_failed: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    log: Callable[[str], Any] = print,
    model: SegmentationModel | None = None,
) -> CohortSummary:
    """Run every pending case of a manifest as one Dask task each.

    Args:
        manifest: CSV path or rows (``case``, ``image``, optional ``labels``, ``rois``).
        out_dir: the cohort folder (see module docstring).
        cfg: method, parameters and model.
        workers: LocalCluster workers (default: #GPUs if any, else 1); ignored with ``scheduler``.
        threads_per_worker: torch threads of each worker; a worker always holds one case at a time.
        scheduler: address of a running Dask scheduler (``tcp://host:8786``) instead of a LocalCluster.
        retry_failed: also redo the cases listed in ``failed.csv``.
        progress, cancel: progress callback (one step per case) and cancel flag.
        log: where status lines go.
        model: the configured model, already loaded (for the fingerprint; loaded on the CPU if not given).

    Raises:
        Agg2ExpError: bad worker counts, an --out that is a file or cannot be written, a folder in use by
            another run, a resume with other settings (see :meth:`CohortConfig.fingerprint`).
    """
    for name, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise Agg2ExpError(f"{name} must be a whole number >= 1, got {value}")
    rows = read_manifest(manifest) if not isinstance(manifest, list) else manifest
    out = check_cohort_out(out_dir)
    with OutputLock(out):
        _check_config(out, cfg, model)
        remove_stale_staging(out)  # left by a killed run: we hold the folder, no live run writes them
        remove_stale_staging(out / "cases")
        return _run_pending(rows, out, cfg, workers, threads_per_worker, scheduler, retry_failed, progress, cancel, log)


def _run_pending(rows: list[dict[str, str]], out: Path, cfg: CohortConfig, workers: int | None,
                 threads_per_worker: int, scheduler: str | None, retry_failed: bool,
                 progress: ProgressCallback | None, cancel: CancelFlag | None,
                 log: Callable[[str], Any]) -> CohortSummary:
    done_before = committed_cases(out)
    failed = {c: e for c, e in _read_failed(out).items() if c not in done_before}
    todo = [r for r in rows if r["case"] not in done_before and (retry_failed or r["case"] not in failed)]
    skipped = [r["case"] for r in rows if r["case"] in done_before]
    log(f"{len(rows)} cases: {len(skipped)} already committed, {len(todo)} to run"
        + (f", {len(failed)} failed before (use --retry-failed)" if failed and not retry_failed else ""))
    t0 = time.perf_counter()
    done: list[str] = []
    if todo:
        cluster, client = connect(scheduler, workers, threads_per_worker)
        from distributed import as_completed  # installed: connect checked it

        try:
            stamp = f"{os.getpid()}-{time.time_ns()}"
            futures = [client.submit(process_case, r, str(out), cfg, threads_per_worker,
                                     key=f"agg2exp-{r['case']}-{stamp}", pure=False) for r in todo]
            report(progress, 0, len(todo), "cases")
            for i, fut in enumerate(as_completed(futures), start=1):
                if is_cancelled(cancel):
                    client.cancel(futures)
                    raise Cancelled("cohort cancelled")
                res = fut.result()
                if res["status"] in ("ok", "exists"):
                    done.append(res["case"])
                    failed.pop(res["case"], None)
                else:
                    failed[res["case"]] = res["error"]
                    log(f"case {res['case']} failed: {res['error']}")
                _write_failed(out / "failed.csv", failed)
                report(progress, i, len(todo), f"{res['case']} {res['status']}")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    if not failed and (out / "failed.csv").exists():
        (out / "failed.csv").unlink()
    tables = combine_tables(out, [r["case"] for r in rows])
    return CohortSummary(done, skipped, failed, time.perf_counter() - t0, tables)
