"""Sliding window, preprocessing round trips and model building."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_agg2exp.models.inference import SlidingWindow, sliding_window_logits
from napari_agg2exp.models.prepared import segment
from napari_agg2exp.models.loading import ARCHITECTURES, SegmentationModel, build_network, load_model
from napari_agg2exp.data.preprocessing import PreprocessingSpec, preprocess, to_input_grid
from napari_agg2exp.data.volume import Volume

from conftest import tiny_spec


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("shape,window,overlap", [((20, 17, 16), (16, 16, 16), 0.25), ((33, 24, 18), (16, 12, 10), 0.5)])
def test_sliding_window_equals_monai(shape, window, overlap, blend):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = torch.randn((1,) + shape)
    plan = SlidingWindow.plan(shape, window, overlap, blend)
    ours = sliding_window_logits(net, x, plan, sw_batch_size=3)
    ref = sliding_window_inference(x[None], window, 2, net, overlap=overlap, mode=blend)[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_single_window_equals_plain_forward():
    spec = tiny_spec()
    net = build_network(spec).eval()
    x = torch.randn(1, 16, 16, 16)
    plan = SlidingWindow.plan((16, 16, 16), (16, 16, 16), 0.25, "constant")
    assert len(plan) == 1
    with torch.no_grad():
        ref = net(x[None])[0]
    torch.testing.assert_close(sliding_window_logits(net, x, plan), ref)


def _volume(affine, shape=(14, 11, 9), seed=0):
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(0, 400, shape).astype(np.float32), affine)


def _reorient(vol: Volume, perm, flips):
    """A same-physical-content volume with permuted / flipped array axes."""
    arr = np.transpose(vol.array, perm)
    aff = vol.affine.copy()
    aff[:, :3] = aff[:, list(perm)]
    shape = arr.shape
    for ax in flips:
        arr = np.flip(arr, ax)
        # voxel i -> shape-1-i: new affine column negated, origin moved to the old last voxel
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (shape[ax] - 1)
        aff[:3, ax] = -aff[:3, ax]
    return Volume(np.ascontiguousarray(arr), aff)


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (0, 1)), ((2, 0, 1), ()), ((1, 2, 0), (2,)), ((0, 1, 2), (0, 1, 2))])
@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 1.5)])
def test_preprocess_round_trip_any_orientation(perm, flips, spacing):
    base = _volume(np.diag([1.0, 1.3, 2.5, 1.0]))
    vol = _reorient(base, perm, flips)
    spec = PreprocessingSpec(spacing=spacing)
    pre_b = preprocess(base, spec, (16, 16, 16))
    pre_v = preprocess(vol, spec, (16, 16, 16))
    # the model sees the same array whatever the input's axis order
    np.testing.assert_allclose(pre_b.array, pre_v.array, atol=1e-5)
    np.testing.assert_allclose(pre_b.affine, pre_v.affine, atol=1e-6)
    back = to_input_grid(pre_v.array, pre_v)
    assert back.shape == vol.shape
    if spacing is None:  # no resampling: exact inverse of the intensity-scaled input
        scaled = np.clip((vol.array + 1024) / 2048, 0, 1)
        np.testing.assert_allclose(back, scaled, atol=1e-6)


def test_preprocess_resampling_geometry():
    vol = _volume(np.diag([0.75, 0.75, 3.0, 1.0]), shape=(40, 30, 10))
    pre = preprocess(vol, PreprocessingSpec(spacing=(1.5, 1.5, 1.5)), (8, 8, 8))
    assert pre.resampled_shape == (20, 15, 20)
    # the world position of the centre of the field of view is unchanged
    c_in = vol.affine @ np.r_[(np.array(vol.shape) - 1) / 2, 1]
    c_out = pre.affine @ np.r_[np.array([b for b, _ in pre.pad]) + (np.array(pre.resampled_shape) - 1) / 2, 1]
    np.testing.assert_allclose(c_in, c_out, atol=1e-6)


def test_prediction_of_reoriented_scan_equals_reoriented_prediction(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    base = _volume(np.diag([1.0, 1.0, 1.0, 1.0]), shape=(20, 17, 18))
    moved = _reorient(base, (2, 0, 1), (0, 2))
    p_base = segment(model, base, overlap=0.25).prediction
    p_moved = segment(model, moved, overlap=0.25).prediction
    expected = _reorient(p_base, (2, 0, 1), (0, 2))
    np.testing.assert_array_equal(p_moved.array, expected.array)
    np.testing.assert_allclose(p_moved.affine, moved.affine)


@pytest.mark.parametrize(
    "arch,arguments,window",
    [
        ("UNet", {"channels": [4, 8], "strides": [2], "num_res_units": 0}, 16),
        ("BasicUNet", {"features": [4, 4, 8, 8, 16, 4]}, 32),
        ("DynUNet", {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "filters": [4, 8, 16]}, 16),
        ("UNETR", {"feature_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}, 32),
        ("SwinUNETR", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}, 64),
        ("SwinUNETRv2", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}, 64),
    ],
)
def test_each_architecture_builds_from_spec(arch, arguments, window, tmp_path):
    from napari_agg2exp.models.loading import save_model

    assert arch in ARCHITECTURES
    spec = tiny_spec(arch=arch, arguments=arguments, window=(window,) * 3)
    net = build_network(spec).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, window, window, window))
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.shape == (1, 3, window, window, window)
    loaded = load_model(save_model(net, spec, tmp_path / arch), device="cpu")
    assert isinstance(loaded, SegmentationModel) and loaded.class_names == ["background", "a", "b"]
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[k].cpu(), v)


def test_device_auto_and_fallback():
    from napari_agg2exp.models.loading import available_devices, resolve_device

    assert available_devices()[-1] == "cpu"
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="falling back to CPU"):
            assert resolve_device("cuda").type == "cpu"


def test_torchscript_with_label_names(tmp_path):
    from conftest import write_labels_json

    net = build_network(tiny_spec()).eval()
    ts = torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16))
    path = tmp_path / "m.ts"
    ts.save(str(path))
    names = write_labels_json(tmp_path / "labels.json", ["background", "a", "b"])
    m = load_model(path, label_names=names, device="cpu", window_size=(16, 16, 16), preprocessing=PreprocessingSpec(spacing=None))
    res = segment(m, _volume(np.eye(4), shape=(18, 16, 16)))
    assert res.prediction.shape == (18, 16, 16)
