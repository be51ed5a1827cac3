"""Streaming segmentation (:func:`sliding_window_segment`): the argmax and the clean scores ``f_c`` of
the stitched logits, equal to MONAI's ``sliding_window_inference`` (and to a brute-force stitch with
nnU-Net's own window positions and gaussian), with a rolling buffer one window deep instead of C full volumes."""

from __future__ import annotations

import itertools
import tempfile

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from napari_agg2exp.data.preprocessing import PreprocessingSpec, to_input_grid
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.models.inference import SlidingWindow, sliding_window_segment
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.models.prepared import prepare_case
from napari_agg2exp.progress import Cancelled

C = 7


class WindowNet(torch.nn.Module):
    """Random conv net whose logits depend on the whole window (a window-mean term), so stitching matters."""

    def __init__(self, c: int = C):
        super().__init__()
        self.a = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.b = torch.nn.Conv3d(6, c, 3, padding=1)
        self.g = torch.nn.Parameter(torch.randn(1, c, 1, 1, 1))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) * 3 + self.g * x.mean(dim=(2, 3, 4), keepdim=True)


def _reference_scores(logits: torch.Tensor) -> tuple[torch.Tensor, dict[int, float]]:
    z = logits.double()
    lab = z.argmax(0)
    return lab, {int(c): float(z[c][lab == c].sum()) for c in torch.unique(lab)}


def _nnunet_reference(net, x, window, step, blend):
    """Brute force in float64 over nnU-Net's own window positions and blend weight (``nnunetv2``)."""
    nn = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    steps = nn.compute_steps_for_sliding_window(x.shape[1:], window, step)
    if blend == "gaussian":  # as nnUNetPredictor calls it
        b = nn.compute_gaussian(tuple(window), sigma_scale=1. / 8, value_scaling_factor=10,
                                device=torch.device("cpu")).double()
    else:
        b = torch.ones(window, dtype=torch.float64)
    out = torch.zeros((C,) + tuple(x.shape[1:]), dtype=torch.float64)
    cnt = torch.zeros(x.shape[1:], dtype=torch.float64)
    with torch.no_grad():
        for start in itertools.product(*steps):
            sl = tuple(slice(s, s + w) for s, w in zip(start, window))
            out[(slice(None),) + sl] += net(x[(slice(None),) + sl][None])[0].double() * b
            cnt[sl] += b
    return out / cnt


def _check(ours, ref_logits, rel=1e-5):
    lab, scores = _reference_scores(ref_logits)
    top2 = ref_logits.double().topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4  # exact ties aside, the argmax must agree everywhere
    assert clear.float().mean() > 0.99
    ours_lab = ours.labels.long()
    assert torch.equal(ours_lab[clear], lab[clear])
    assert len(scores) >= 4  # a real multi-class prediction
    assert set(ours.scores) == set(scores)
    for c, f in scores.items():
        assert ours.scores[c] == pytest.approx(f, rel=rel, abs=1e-3), c
        assert ours.voxels[c] == int((ours_lab == c).sum())


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("sweep_axis", [None, 1, 2])
def test_streaming_equals_monai(blend, sweep_axis):
    torch.manual_seed(3)
    net = WindowNet().eval()
    shape, window, overlap = (34, 29, 41), (16, 12, 14), 0.4
    x = torch.randn((1,) + shape)
    plan = SlidingWindow.plan(shape, window, overlap, blend, placement="monai")
    assert len(plan) >= 27  # several windows along every axis
    ours = sliding_window_segment(net, x, plan, sw_batch_size=4, sweep_axis=sweep_axis)
    with torch.no_grad():
        ref = sliding_window_inference(x[None], window, 3, net, overlap=overlap, mode=blend)[0]
    _check(ours, ref)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_streaming_equals_nnunet_placement(blend):
    torch.manual_seed(4)
    net = WindowNet().eval()
    shape, window = (37, 30, 26), (14, 12, 10)
    x = torch.randn((1,) + shape)
    plan = SlidingWindow.plan(shape, window, 0.5, blend, placement="nnunet")
    ours = sliding_window_segment(net, x, plan, sw_batch_size=3, sweep_axis=2)
    _check(ours, _nnunet_reference(net, x, window, 0.5, blend))


def _record_allocations(monkeypatch):
    """Shapes of every tensor made with torch.zeros / torch.empty / torch.full while segmenting."""
    shapes = []
    for name in ("zeros", "empty", "full", "zeros_like", "empty_like"):
        real = getattr(torch, name)

        def rec(*args, _real=real, **kwargs):
            t = _real(*args, **kwargs)
            shapes.append(tuple(t.shape))
            return t

        monkeypatch.setattr(torch, name, rec)
    return shapes


def test_buffer_is_one_window_deep(monkeypatch):
    torch.manual_seed(5)
    net = WindowNet().eval()
    shape, window = (24, 20, 96), (16, 16, 16)  # long along z: the sweep goes along z
    x = torch.randn((1,) + shape)
    plan = SlidingWindow.plan(shape, window, 0.25, "constant")
    shapes = _record_allocations(monkeypatch)
    ours = sliding_window_segment(net, x, plan)
    monkeypatch.undo()
    assert ours.sweep_axis == 2 and ours.buffer_shape == (C, 24, 20, 16)
    # nothing it allocated holds more than C x one window depth of the volume -- a sixth of C full volumes
    biggest = max(int(np.prod(s)) for s in shapes)
    assert biggest == C * 24 * 20 * 16 <= C * np.prod(shape) / 6
    # and the result is still exact
    with torch.no_grad():
        ref = sliding_window_inference(x[None], window, 1, net, overlap=0.25, mode="constant")[0]
    _check(ours, ref)


def test_prepare_case_uses_streaming(monkeypatch):
    """prepare_case never builds C full logit volumes, and its labels/scores match MONAI's stitch."""
    from conftest import model_grid_case

    torch.manual_seed(6)
    net = WindowNet().eval()
    x = torch.randn(30, 22, 40)
    shapes = _record_allocations(monkeypatch)
    case = model_grid_case(net, x, (16, 16, 16), overlap=0.25, blend="gaussian")
    monkeypatch.undo()
    assert all(not (len(s) == 4 and s[0] == C and s[1:] == tuple(x.shape)) for s in shapes)
    with torch.no_grad():
        ref = sliding_window_inference(x[None, None], (16, 16, 16), 1, net, overlap=0.25, mode="gaussian")[0]
    lab, scores = _reference_scores(ref)
    top2 = ref.double().topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4
    assert np.array_equal(case.labels[clear.numpy()], lab[clear].numpy())
    assert set(case.scores) == set(scores)
    for c, f in scores.items():
        assert case.scores[c] == pytest.approx(f, rel=1e-5, abs=1e-3)


def test_slabs_handed_to_on_rows_tile_the_stitched_logits():
    torch.manual_seed(7)
    net = WindowNet().eval()
    shape, window = (30, 26, 21), (12, 10, 8)
    x = torch.randn((1,) + shape)
    plan = SlidingWindow.plan(shape, window, 0.25, "gaussian")
    with torch.no_grad():
        ref = sliding_window_inference(x[None], window, 2, net, overlap=0.25, mode="gaussian")[0]
    for axis in (0, 2):
        slabs = []

        def keep(a, lo, hi, z, slabs=slabs):
            slabs.append((a, lo, hi, z.clone()))

        sliding_window_segment(net, x, plan, sweep_axis=axis, on_rows=keep)
        assert all(a == axis for a, *_ in slabs) and len(slabs) > 2
        assert [lo for _, lo, _, _ in slabs] == [0] + [hi for _, _, hi, _ in slabs[:-1]] and slabs[-1][2] == shape[axis]
        torch.testing.assert_close(torch.cat([z for *_, z in slabs], dim=1 + axis), ref, rtol=1e-4, atol=1e-4)


class _Resampling(PreprocessingSpec):
    """A model-folder spec (orient, resample to 1 mm) whose prediction goes back as the bundle/nnU-Net formats do."""

    prediction_from = "probabilities"


@pytest.mark.parametrize("prediction_from", ["probabilities", "logits"])
def test_class_by_class_mapping_equals_the_argmax_in_memory(prediction_from, monkeypatch, tmp_path):
    """prepare_case's input-grid prediction, built one class at a time from spilled per-class maps, equals the
    argmax over all C resampled probability/logit volumes held at once; no C x grid array is ever made."""
    import napari_agg2exp.models.prepared as prepared_mod

    torch.manual_seed(8)
    net = WindowNet().eval()
    affine = np.diag([-1.3, -0.9, 1.7, 1.0])  # LPS-like, anisotropic: input voxels fall between model voxels
    image = Volume(np.random.default_rng(0).normal(size=(23, 31, 30)).astype(np.float32), affine, "scan")
    spec = _Resampling(orientation="RAS", spacing=(1.0, 1.0, 1.0), a_min=-3, a_max=3, b_min=-1, b_max=1, clip=True)
    monkeypatch.setattr(_Resampling, "prediction_from", prediction_from)
    model = SegmentationModel(net, [f"c{i}" for i in range(C)], spec, (16, 16, 16), torch.device("cpu"), "test")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the spill folder goes here
    shapes = _record_allocations(monkeypatch)
    mapped = []
    real = prepared_mod.to_input_grid
    monkeypatch.setattr(prepared_mod, "to_input_grid", lambda a, pre, mode: (mapped.append(a.shape), real(a, pre, mode))[1])
    messages = []
    case = prepare_case(model, image, overlap=0.25, blend="gaussian", progress=lambda d, t, m: messages.append(m))
    monkeypatch.undo()
    grid = case.pre.array.shape
    assert len(case.plan) >= 8 and mapped == [grid] * C  # one class at a time
    assert all(int(np.prod(s)) <= C * int(np.prod(grid)) / 3 for s in shapes), (max(shapes, key=np.prod), grid)
    assert "mapping back" in messages and not list(tmp_path.iterdir())  # spill folder removed
    # the straightforward computation: all C stitched maps at once, resampled, argmax
    with torch.no_grad():
        z = sliding_window_inference(case.inputs[None, None], (16, 16, 16), 1, net, overlap=0.25, mode="gaussian")[0]
    maps = torch.softmax(z, 0) if prediction_from == "probabilities" else z
    back = to_input_grid(maps.numpy(), case.pre)
    top2 = np.sort(back, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5
    assert clear.mean() > 0.99 and len(np.unique(back.argmax(0))) >= 4
    assert np.array_equal(case.prediction.array[clear], back.argmax(0)[clear])
    # negative control: the model-grid labels mapped back by nearest neighbour are a different answer
    assert (to_input_grid(case.labels, case.pre, mode="nearest") == back.argmax(0)).mean() < 0.97


def test_mapping_back_is_cancelled_and_cleans_up(monkeypatch, tmp_path):
    torch.manual_seed(9)
    net = WindowNet().eval()
    image = Volume(np.random.default_rng(1).normal(size=(20, 18, 17)).astype(np.float32), np.diag([1.2, 1.1, 1.3, 1.0]))
    spec = _Resampling(orientation="RAS", spacing=(1.0, 1.0, 1.0), a_min=-3, a_max=3, b_min=-1, b_max=1, clip=True)
    model = SegmentationModel(net, [f"c{i}" for i in range(C)], spec, (16, 16, 16), torch.device("cpu"), "test")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    with pytest.raises(Cancelled):
        prepare_case(model, image, progress=lambda d, t, m: seen.append(m), cancel=lambda: "mapping back" in seen)
    assert "mapping back" in seen and not list(tmp_path.iterdir())
