from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed_everything():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


def tiny_spec(class_names=("background", "a", "b"), window=(16, 16, 16), spacing=None, arch="UNet", arguments=None):
    from napari_agg2exp.models.loading import ModelSpec
    from napari_agg2exp.data.preprocessing import PreprocessingSpec

    args = arguments if arguments is not None else {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    return ModelSpec(
        architecture=arch,
        class_names=list(class_names),
        arguments=args,
        preprocessing=PreprocessingSpec(spacing=spacing),
        window_size=tuple(window),
    )


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved tiny UNet model folder (3 classes, window 16, keeps the input spacing)."""
    import torch

    from napari_agg2exp.models.loading import build_network, save_model

    spec = tiny_spec()
    torch.manual_seed(1)
    net = build_network(spec)
    return save_model(net, spec, tmp_path / "tiny_model")


@pytest.fixture
def ct_file(tmp_path):
    """A small CT-like NIfTI (HU) with a non-trivial affine."""
    from napari_agg2exp.data.volume import Volume, save_volume

    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, (20, 18, 17)).astype(np.float32)
    arr[5:12, 4:10, 3:9] = 800
    aff = np.diag([1.2, 0.9, 2.0, 1.0])
    aff[:3, 3] = [-10, 5, 30]
    return save_volume(Volume(arr, aff), tmp_path / "ct.nii.gz")


def write_labels_json(path, names):
    path.write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    return path


class LinearSeg(torch.nn.Module):
    """``z_c(x) = w_c · x + b_c`` per voxel: f_c is linear in x, so gradients, IG, ablation and Shapley
    values are known in closed form."""

    def __init__(self, w=(0.5, -1.0, 2.0), b=(0.1, 0.0, -0.2)):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w).view(1, -1, 1, 1, 1))
        self.b = torch.nn.Parameter(torch.tensor(b).view(1, -1, 1, 1, 1))

    def forward(self, x):
        return x * self.w + self.b


def model_grid_case(net, x, window, overlap=0.25, blend="constant"):
    """A PreparedCase of a model-grid tensor ``x`` (identity preprocessing), for tests with bare networks."""
    import torch

    from napari_agg2exp.data.preprocessing import PreprocessingSpec
    from napari_agg2exp.data.volume import Volume
    from napari_agg2exp.models.loading import SegmentationModel
    from napari_agg2exp.models.prepared import prepare_case

    window = tuple(window)
    with torch.no_grad():
        n = net(x[None, None][..., : window[0], : window[1], : window[2]]).shape[1]
    spec = PreprocessingSpec(orientation=None, spacing=None, a_min=0, a_max=1, b_min=0, b_max=1, clip=False,
                             pad_to_window=False)
    model = SegmentationModel(net, [f"c{i}" for i in range(n)], spec, window, torch.device("cpu"), "test")
    return prepare_case(model, Volume(x.numpy()), overlap=overlap, blend=blend)


def attribution_fn(case, method, classes, **params):
    """``fn(inputs=None, network=None)`` -> (K, X, Y, Z) maps of ``method`` on ``case`` (clean masks fixed)."""
    from napari_agg2exp.attribution import Explainer

    explainer = Explainer(method, **params)

    def fn(inputs=None, progress=None, cancel=None, network=None):
        return explainer.attribute(case, classes, inputs=inputs, network=network, progress=progress, cancel=cancel)[0]

    return fn
