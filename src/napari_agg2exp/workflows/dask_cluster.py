"""Dask set-up for cohorts: a LocalCluster of single-case workers, one GPU per worker.

Dask and distributed are optional (the ``[cohort]`` extra): they are imported inside these functions,
so the rest of the package works without them.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import torch

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.malloc_tuning import MALLOC_ENV, malloc_tuning_enabled

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

__all__ = ["local_cluster", "worker_device", "connect", "check_scheduler"]

#: seconds to wait for a running scheduler to answer
CONNECT_TIMEOUT = 5.0


def check_scheduler(address: str | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse a scheduler address that is malformed or does not answer within ``timeout`` seconds.

    A plain TCP connection to ``host:port`` (``tcp://`` and ``tls://`` addresses), so a cohort fails in
    seconds and before anything is written, instead of after Dask's 30 s with a traceback.

    Raises:
        Agg2ExpError: naming the address and what to check.
    """
    if not address:
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return  # other transports (inproc, ucx, ws) are left to Dask
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise Agg2ExpError(f"scheduler address {address!r} is not host:port -- give e.g. --scheduler tcp://host:8786")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:  # refused, unreachable, unknown host, timed out
        raise Agg2ExpError(f"no Dask scheduler answers at {address} ({e.strerror or type(e).__name__}) -- start one "
                           "(`dask scheduler`) or check the address; leave out --scheduler for a local cluster") from e


def worker_device(device: str) -> str:
    """One GPU per worker: worker i of a LocalCluster takes cuda:(i mod #GPUs)."""
    if device != "auto":
        return device
    n = torch.cuda.device_count()
    if n == 0:
        return "auto"
    try:
        from distributed import get_worker

        name = str(get_worker().name)
        idx = int(name) if name.isdigit() else abs(hash(name))
    except Exception:
        idx = 0
    return f"cuda:{idx % n}"


def local_cluster(n_workers: int, threads_per_worker: int) -> LocalCluster:
    """A LocalCluster of single-threaded worker processes, one case at a time each.

    Dask spawns workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (give freed memory back at once); for
    sliding-window attribution that means page-faulting every window's tensors in again, so the
    workers get this package's allocator settings instead (:mod:`napari_agg2exp.malloc_tuning`; off with
    ``AGG2EXP_MALLOC_TUNING=0``).
    """
    import dask
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    if malloc_tuning_enabled():
        environ.update(MALLOC_ENV)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None, silence_logs=40,
                            env={"OMP_NUM_THREADS": str(threads_per_worker)})


def connect(scheduler: str | None, n_workers: int | None,
            threads_per_worker: int) -> tuple[LocalCluster | None, Client]:
    """``(cluster or None, client)``: a running scheduler's client, or a new LocalCluster's.

    Raises:
        Agg2ExpError: dask distributed is not installed.
    """
    try:
        from distributed import Client
    except ImportError as e:
        raise Agg2ExpError("cohorts run on Dask: install the extra with `pip install napari-agg2exp[cohort]`") from e
    if scheduler:
        check_scheduler(scheduler)
        try:
            return None, Client(scheduler, timeout=f"{CONNECT_TIMEOUT:g}s")
        except (OSError, TimeoutError) as e:  # it stopped answering since the check
            raise Agg2ExpError(f"cannot connect to the Dask scheduler at {scheduler} ({type(e).__name__}) -- check "
                               "that it runs; leave out --scheduler for a local cluster") from e
    cluster = local_cluster(n_workers or max(1, torch.cuda.device_count()), threads_per_worker)
    return cluster, Client(cluster)
