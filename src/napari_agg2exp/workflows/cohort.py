"""Cohorts on Dask distributed: one task per case, crash-safe and resumable (issue 7).

Layout of a cohort folder ``DIR/``::

    cohort.json              method, parameters and model of the run (a rerun must match)
    cases/<case>/            one committed case: prediction.nii.gz, local_importance.csv,
                             quality.csv (with labels), info.json [, maps.npz with keep_maps]
    local_importance.csv     all committed cases (rebuilt from cases/, never holds a case twice)
    quality.csv              idem, for cases with labels
    failed.csv               case,error of cases that failed (retry with retry_failed=True)

Each case is written into ``cases/.<case>.partial-*`` and renamed into place: a case folder exists
only when complete. A rerun skips committed cases. Workers aggregate on the spot and return small
tables, never maps; each worker holds one case at a time (one thread per worker by default).
The folder must be on a file system that every worker sees (local disk for a LocalCluster, a shared
file system on a cluster).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_agg2exp.errors import Agg2ExpError, Cancelled
from napari_agg2exp.progress import CancelFlag, ProgressCallback, is_cancelled, report

__all__ = ["CohortConfig", "read_manifest", "run_cohort", "process_case", "combine_tables", "committed_cases"]

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class CohortConfig:
    """What every case of a cohort is run with (recorded in ``cohort.json``)."""

    method: str
    parameters: dict[str, Any] = field(default_factory=dict)  # explain() keyword arguments
    model: str | None = None  # model path (None = bundled)
    label_names: str | None = None
    trust_checkpoint: bool = False
    device: str = "auto"
    keep_maps: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """The part of the configuration a rerun must not change."""
        from napari_agg2exp.models.loading import bundled_model_path

        model = str(Path(self.model).resolve()) if self.model else str(bundled_model_path())
        return {"method": self.method, "parameters": dict(sorted(self.parameters.items())), "model": model,
                "label_names": self.label_names}


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of ``case,image[,labels][,rois]``; relative paths are taken relative to the manifest."""
    p = Path(path)
    if not p.exists():
        raise Agg2ExpError(f"manifest not found: {p}")
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise Agg2ExpError(f"cannot read manifest {p} ({e}) -- it must be a CSV with columns case,image") from e
    if not rows:
        raise Agg2ExpError(f"manifest {p} has no cases -- it needs a header case,image and one row per case")
    missing = {"case", "image"} - set(rows[0])
    if missing:
        raise Agg2ExpError(f"manifest {p} lacks column(s) {sorted(missing)}; columns: case,image[,labels][,rois]")
    seen, out = set(), []
    for i, r in enumerate(rows, start=2):
        case = (r.get("case") or "").strip()
        if not _SAFE.match(case):
            raise Agg2ExpError(f"manifest {p} line {i}: case name {case!r} must be letters, digits, '_', '-', '.'")
        if case in seen:
            raise Agg2ExpError(f"manifest {p} line {i}: case {case!r} appears twice -- case names must be unique")
        seen.add(case)
        row = {"case": case}
        for col in ("image", "labels", "rois"):
            v = (r.get(col) or "").strip()
            if v:
                row[col] = str((p.parent / v).resolve()) if not os.path.isabs(v) else v
        if "image" not in row:
            raise Agg2ExpError(f"manifest {p} line {i}: case {case!r} has no image")
        out.append(row)
    return out


def committed_cases(out_dir: str | os.PathLike) -> set[str]:
    d = Path(out_dir) / "cases"
    if not d.is_dir():
        return set()
    return {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "info.json").exists()}


# ---------------------------------------------------------------- worker side

_MODEL_CACHE: dict[tuple, Any] = {}


def _worker_device(device: str) -> str:
    """One GPU per worker: worker i of a LocalCluster takes cuda:(i mod #GPUs)."""
    if device != "auto":
        return device
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        n = 0
    if n == 0:
        return "auto"
    try:
        from distributed import get_worker

        name = str(get_worker().name)
        idx = int(name) if name.isdigit() else abs(hash(name))
    except Exception:
        idx = 0
    return f"cuda:{idx % n}"


def _model(cfg: CohortConfig):
    from napari_agg2exp.models.loading import load_model

    key = (cfg.model, cfg.label_names, cfg.device, cfg.trust_checkpoint)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(cfg.model, label_names=cfg.label_names, device=_worker_device(cfg.device),
                                       trust_checkpoint=cfg.trust_checkpoint)
    return _MODEL_CACHE[key]


def process_case(row: dict[str, str], out_dir: str, cfg: CohortConfig, threads: int | None = None) -> dict[str, Any]:
    """Explain one case and commit ``cases/<case>/`` atomically. Never raises: errors are returned.

    Returns:
        ``{"case", "status": "ok"|"exists"|"failed", "error", "local": csv text, "quality": csv text, "seconds"}``
    """
    t0 = time.perf_counter()
    case = row["case"]
    cases_dir = Path(out_dir) / "cases"
    final = cases_dir / case
    if (final / "info.json").exists():
        return {"case": case, "status": "exists", "error": "", "seconds": 0.0}
    cases_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case}.partial-", dir=cases_dir))
    from napari_agg2exp.data.volume import default_permissions

    default_permissions(tmp, directory=True)
    try:
        import numpy as np

        from napari_agg2exp.workflows.case_folder import resample_labels
        from napari_agg2exp.importance.local import local_importance
        from napari_agg2exp.attribution import explain
        from napari_agg2exp.cli.explain import map_file_name
        from napari_agg2exp.evaluation.dice import quality_table
        from napari_agg2exp.data.volume import load_volume, save_volume

        if threads:
            import torch

            torch.set_num_threads(int(threads))
        model = _model(cfg)
        image = load_volume(row["image"], what=f"image of case {case}")
        gt = load_volume(row["labels"], what=f"labels of case {case}") if row.get("labels") else None
        if gt is not None and gt.shape != image.shape:
            raise Agg2ExpError(f"labels shape {gt.shape} differs from the image's {image.shape}")
        e = explain(model, image, cfg.method, **cfg.parameters)
        save_volume(e.prediction, tmp / "prediction.nii.gz", dtype="uint8")
        maps = {map_file_name(t): e.map_on_input(t) for t in e.targets}
        names = [map_file_name(n) for n in model.class_names]
        table = local_importance(maps, e.prediction.array, names, case=case)
        if row.get("rois"):
            rois = load_volume(row["rois"], what=f"RoIs of case {case}")
            arr = rois.array if rois.shape == image.shape else resample_labels(rois, image)
            custom = local_importance(maps, np.asarray(arr), {}, case=case, skip_labels=(0,))
            table = __import__("pandas").concat([table, custom], ignore_index=True)
        table.to_csv(tmp / "local_importance.csv", index=False)
        quality_csv = ""
        if gt is not None:
            q = quality_table(e.prediction.array, gt.array, model.class_names, case=case)
            quality_csv = q.to_csv(index=False)
            (tmp / "quality.csv").write_text(quality_csv)
        if cfg.keep_maps:
            np.savez_compressed(tmp / "maps.npz", affine=image.affine,
                                **{t: m.astype(np.float16) for t, m in maps.items()})
        info = {"case": case, "image": row["image"], **e.info(), "worker_seconds": round(time.perf_counter() - t0, 3)}
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")  # written last: marks completeness
        try:
            os.replace(tmp, final)
        except OSError:
            if (final / "info.json").exists():  # committed meanwhile by another run: keep that one
                return {"case": case, "status": "exists", "error": "", "seconds": time.perf_counter() - t0}
            raise
        return {"case": case, "status": "ok", "error": "", "local": table.to_csv(index=False), "quality": quality_csv,
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # a failing case is recorded, never stops the others
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, Agg2ExpError):
            msg = f"{type(e).__name__}: {msg}"
            tb = traceback.format_exc(limit=3)
            msg = f"{msg} [{tb.strip().splitlines()[-3].strip() if len(tb.splitlines()) > 3 else ''}]"
        return {"case": case, "status": "failed", "error": msg, "seconds": time.perf_counter() - t0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- driver side


def _atomic_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    from napari_agg2exp.data.volume import atomic_write_text
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_failed(out: Path) -> dict[str, str]:
    p = out / "failed.csv"
    if not p.exists():
        return {}
    with p.open(newline="") as f:
        return {r["case"]: r["error"] for r in csv.DictReader(f)}


def combine_tables(out_dir: str | os.PathLike, cases: list[str] | None = None) -> dict[str, Path]:
    """Rebuild ``local_importance.csv`` and ``quality.csv`` from the committed case folders."""
    import pandas as pd

    from napari_agg2exp.data.volume import atomic_write_text

    out = Path(out_dir)
    names = sorted(committed_cases(out)) if cases is None else [c for c in cases if c in committed_cases(out)]
    written = {}
    for table in ("local_importance", "quality"):
        frames = [pd.read_csv(out / "cases" / c / f"{table}.csv", dtype={"case": str})
                  for c in names if (out / "cases" / c / f"{table}.csv").exists()]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            written[table] = atomic_write_text(out / f"{table}.csv", df.to_csv(index=False))
    return written


def _check_config(out: Path, cfg: CohortConfig) -> None:
    from napari_agg2exp.data.volume import atomic_write_text

    p = out / "cohort.json"
    fp = cfg.fingerprint()
    if p.exists():
        try:
            old = json.loads(p.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("fingerprint") != json.loads(json.dumps(fp)):
            diff = [k for k in fp if json.loads(json.dumps(fp))[k] != (old.get("fingerprint") or {}).get(k)]
            raise Agg2ExpError(
                f"{out} holds a cohort run with other settings ({', '.join(diff) or 'unknown'} differ; see {p}) -- "
                "use another --out, or rerun with the recorded method and parameters"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps({"fingerprint": fp, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


@dataclass
class CohortSummary:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    tables: dict[str, Path]


def _local_cluster(n_workers: int, threads_per_worker: int):
    """A LocalCluster of single-threaded worker processes, one case at a time each.

    Dask spawns workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (give freed memory back at once); for
    sliding-window attribution that means page-faulting every window's tensors in again, so the
    workers get this package's allocator settings instead (:mod:`._malloc`; off with
    ``AGG2EXP_MALLOC_TUNING=0``).
    """
    import dask
    from distributed import LocalCluster

    from napari_agg2exp.malloc_tuning import MALLOC_ENV, malloc_tuning_enabled

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    if malloc_tuning_enabled():
        environ.update(MALLOC_ENV)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None, silence_logs=40,
                            env={"OMP_NUM_THREADS": str(threads_per_worker)})


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
    log=print,
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
    """
    from distributed import Client, as_completed

    rows = read_manifest(manifest) if not isinstance(manifest, list) else manifest
    out = Path(out_dir)
    _check_config(out, cfg)
    for stale in (out / "cases").glob(".*.partial-*") if (out / "cases").is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run (one run per folder at a time)
    done_before = committed_cases(out)
    failed = {c: e for c, e in _read_failed(out).items() if c not in done_before}
    todo = [r for r in rows if r["case"] not in done_before and (retry_failed or r["case"] not in failed)]
    skipped = [r["case"] for r in rows if r["case"] in done_before]
    log(f"{len(rows)} cases: {len(skipped)} already committed, {len(todo)} to run"
        + (f", {len(failed)} failed before (use --retry-failed)" if failed and not retry_failed else ""))
    t0 = time.perf_counter()
    done: list[str] = []
    if todo:
        if scheduler:
            cluster, client = None, Client(scheduler)
        else:
            try:
                import torch

                n_gpu = torch.cuda.device_count()
            except Exception:  # pragma: no cover
                n_gpu = 0
            n = workers or max(1, n_gpu)
            cluster = _local_cluster(n, threads_per_worker)
            client = Client(cluster)
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
                _atomic_csv(out / "failed.csv", ["case", "error"], sorted(failed.items()))
                report(progress, i, len(todo), f"{res['case']} {res['status']}")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    if not failed and (out / "failed.csv").exists():
        (out / "failed.csv").unlink()
    manifest_cases = [r["case"] for r in rows]
    tables = combine_tables(out, manifest_cases)
    return CohortSummary(done, skipped, failed, time.perf_counter() - t0, tables)
