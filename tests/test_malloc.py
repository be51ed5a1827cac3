"""Allocator settings (glibc): freed large blocks are reused instead of page-faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_agg2exp.malloc_tuning import MALLOC_ENV, malloc_tuning_enabled

pytestmark = pytest.mark.skipif(not malloc_tuning_enabled(), reason="glibc on Linux only")

# allocate, fill and free a 64 MB torch tensor: 10 times to settle, then print the minor page faults of 9 more
PROBE = """
import resource, sys
import torch
from napari_agg2exp.malloc_tuning import tune_malloc
print(tune_malloc())
for _ in range(10):  # the heap settles (the first ones fault in either case)
    torch.ones(16 << 20)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    a = torch.ones(16 << 20)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_freed_tensors_are_reused_not_refaulted():
    pages = 9 * (64 << 20) // 4096  # what 9 fresh 64 MB arrays fault in with 4 KiB pages
    applied, faults = _probe()
    assert applied
    assert faults < 0.05 * pages, faults
    applied_off, faults_off = _probe(AGG2EXP_MALLOC_TUNING="0")
    assert not applied_off
    assert faults_off > 0.5 * pages, faults_off  # glibc's default: mmap + munmap each time


def test_dask_workers_get_the_settings():
    from distributed import Client

    from napari_agg2exp.workflows.dask_cluster import local_cluster

    with local_cluster(1, 1) as cluster, Client(cluster) as client:
        seen = next(iter(client.run(lambda: {k: os.environ.get(k) for k in MALLOC_ENV}).values()))
    assert seen == MALLOC_ENV


def test_loading_a_model_leaves_the_allocator_alone():
    """Only the CLI process and Dask workers tune malloc; a library user (napari) keeps glibc's defaults."""
    code = ("import napari_agg2exp.malloc_tuning as m\n"
            "from napari_agg2exp import viewer\n"
            "from napari_agg2exp.models import load_model\n"
            "load_model(device='cpu')\n"
            "print(m._done)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
