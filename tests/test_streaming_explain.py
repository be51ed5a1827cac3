"""Streamed explanation (issue 12 items 4-5): each class's map is written and aggregated as soon as its class
pass is done; memory holds one pass of maps, never all C."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from conftest import model_grid_case

from napari_agg2exp.attribution.explainer import Explainer
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.importance.local import naive_local_importance
from napari_agg2exp.workflows.case import run_case
from napari_agg2exp.workflows.case_folder import CaseFolder


class Ladder(torch.nn.Module):
    """``z_c(x) = c·x − c²/2``: class ``c`` wins where ``x`` is nearest ``c``, so a ramp predicts every class;
    ``∇_x Σ_{M_c} z_c = c·1[M_c]`` exactly."""

    def __init__(self, n: int):
        super().__init__()
        c = torch.arange(n, dtype=torch.float32)
        self.register_buffer("w", c.view(1, -1, 1, 1, 1))
        self.register_buffer("b", (-(c**2) / 2).view(1, -1, 1, 1, 1))

    def forward(self, x):
        return x * self.w + self.b


class SmallConv(torch.nn.Module):
    """A 3×3×3 convolution (windows see their neighbours' voxels: overlapping VJPs really add up)."""

    def __init__(self, n: int):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv3d(1, n, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _ramp(n_classes: int, shape=(24, 20, 18)) -> torch.Tensor:
    x = torch.linspace(-0.4, n_classes - 0.6, shape[0]).view(-1, 1, 1).expand(shape).contiguous()
    return x + 0.01 * torch.randn(shape)


def _written(folder, names):
    return {n: load_volume(folder / "attributions" / f"{n}.nii.gz").array for n in names}


def test_streamed_maps_are_the_gradients_and_pass_by_pass(tmp_path, monkeypatch):
    """Written maps = the analytic gradient c·1[M_c]; at most ``class_batch`` classes per pass, and each pass's
    maps are all written before the next pass starts (so no more than one pass of maps is alive)."""
    n = 12
    case = model_grid_case(Ladder(n), _ramp(n), (8, 8, 8), overlap=0.5, blend="gaussian")
    assert len(case.present) == n
    events: list[tuple[str, int]] = []
    real_attribute, real_write = Explainer.attribute, CaseFolder.write_attribution

    def attribute(self, prepared, target_ids, **kw):
        events.append(("attribute", len(target_ids)))
        return real_attribute(self, prepared, target_ids, **kw)

    def write(self, target, volume):
        events.append(("write", 1))
        return real_write(self, target, volume)

    monkeypatch.setattr(Explainer, "attribute", attribute)
    monkeypatch.setattr(CaseFolder, "write_attribution", write)
    res = run_case(case.model, case.image, prepared=case, explainer=Explainer("vg", class_batch=5),
                   out=CaseFolder(tmp_path / "c"))
    assert [k for k, _ in events] == ["attribute"] + ["write"] * 5 + ["attribute"] + ["write"] * 5 \
        + ["attribute"] + ["write"] * 2
    e = res.explanation
    assert e.maps_model is None and e.extra["classes_per_pass"] == 5
    maps = _written(tmp_path / "c", e.targets)
    for name, c in zip(e.targets, e.target_ids):
        np.testing.assert_allclose(maps[name], c * (case.labels == c), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e.map_model(name), maps[name])  # read back lazily from the folder
    # local importance from the streamed maps = the reference per-RoI masked computation on the written maps
    ref = naive_local_importance(maps, case.labels, case.class_names, case="case")
    got = res.local_importance
    np.testing.assert_allclose(got["mass"].to_numpy(), ref["mass"].to_numpy(), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("maps_on", ["model", "input"])
def test_streamed_equals_in_memory_on_a_conv_net(tmp_path, maps_on):
    """Streamed, written maps (1 class per pass) = one in-memory pass over all classes (``Explainer.attribute``)."""
    n = 6
    case = model_grid_case(SmallConv(n), torch.randn(20, 18, 16), (8, 8, 8), overlap=0.25)
    ids = case.present
    ref, _ = Explainer("vg").attribute(case, ids)
    res = run_case(case.model, case.image, prepared=case, explainer=Explainer("vg", class_batch=1), maps_on=maps_on,
                   out=CaseFolder(tmp_path / "c"))
    maps = _written(tmp_path / "c", res.explanation.targets)
    scale = float(ref.abs().max())
    for k, name in enumerate(res.explanation.targets):
        np.testing.assert_allclose(maps[name], ref[k].numpy(), rtol=1e-5, atol=1e-6 * scale)


def _peak_numpy_bytes(n_classes: int, tmp_path) -> tuple[int, int]:
    case = model_grid_case(Ladder(n_classes), _ramp(n_classes, (32, 32, 32)), (16, 16, 16))
    assert len(case.present) == n_classes
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run_case(case.model, case.image, prepared=case, explainer=Explainer("vg", class_batch=2), local=False,
                 out=CaseFolder(tmp_path / f"c{n_classes}"))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, case.labels.size * 4


def test_peak_memory_does_not_grow_with_the_number_of_classes(tmp_path):
    """Traced numpy memory of a streamed run with 16 classes stays within two maps of the run with 4 (keeping the
    written maps would add 12). The maps of a pass are torch tensors, which tracemalloc does not see: their number
    per pass is checked above (at most ``class_batch``, each pass written before the next starts)."""
    _peak_numpy_bytes(3, tmp_path)  # warm-up: one-off allocations (imports, caches) are not counted
    small, map_bytes = _peak_numpy_bytes(4, tmp_path)
    large, _ = _peak_numpy_bytes(16, tmp_path)
    assert large - small < 2 * map_bytes, (small / map_bytes, large / map_bytes)


def test_class_batch_must_be_positive():
    from napari_agg2exp.errors import Agg2ExpError

    with pytest.raises(Agg2ExpError, match="class_batch"):
        Explainer("vg", class_batch=0)
