"""Local importance is computed on the grid the model saw, so it does not depend on the scan's spacing (issue 13.1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_agg2exp.attribution import Explainer
from napari_agg2exp.data.geometry import label_occupancy
from napari_agg2exp.data.preprocessing import PreprocessingSpec
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.importance.local import local_importance, occupancy_local_importance
from napari_agg2exp.models.loading import SegmentationModel
from napari_agg2exp.workflows.case import run_case

MODEL_MM = 3.0
FOV_MM = 60.0
WINDOW = 24  # one window holds the whole 20³ model grid, so the sign pattern below is global


class AlternatingGradient(torch.nn.Module):
    """Logits whose argmax follows the intensity (class 1 = bright) while the input gradient alternates in sign
    from voxel to voxel in the left half: ``z_c = L_c(x).detach() + ε·w_c·s(v)·x(v)`` with ``s = ±1`` on a
    checkerboard for x < 30 mm and ``s = 1`` elsewhere (the audit's example: |a| equal everywhere)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1, 1))

    def forward(self, x):
        idx = [torch.arange(n, device=x.device) for n in x.shape[2:]]
        s = ((idx[0][:, None, None] + idx[1][None, :, None] + idx[2][None, None, :]) % 2) * 2.0 - 1.0
        s = torch.where(idx[0][:, None, None] < x.shape[2] // 2, s, torch.ones_like(s))  # padded grid: 24 = 2+20+2
        bright = 10.0 * (x - 0.5)
        smooth = torch.cat([torch.zeros_like(x), bright, bright - 3.0], dim=1).detach()
        return smooth + 1e-3 * self.w * s * x


def _model() -> SegmentationModel:
    spec = PreprocessingSpec(orientation="RAS", spacing=(MODEL_MM,) * 3, a_min=-1000, a_max=1000)
    return SegmentationModel(AlternatingGradient().eval(), ["background", "soft", "bone"], spec, (WINDOW,) * 3,
                             torch.device("cpu"), "test")


def _scan(spacing) -> tuple[Volume, Volume]:
    """The same anatomy (world mm) sampled at ``spacing``: a bright ball, a brighter block; and a painted RoI
    (a small ball, smaller than two model voxels across) plus a RoI covering the left half."""
    sp = np.asarray(spacing, float)
    shape = tuple(int(round(FOV_MM / s)) for s in sp)
    c = [(np.arange(n) + 0.5) * s for n, s in zip(shape, sp)]  # voxel centres, voxel-edge aligned FOV
    x, y, z = np.meshgrid(*c, indexing="ij")
    ct = np.full(shape, -800.0, np.float32)
    ct[(x - 25) ** 2 + (y - 30) ** 2 + (z - 30) ** 2 < 15**2] = 300.0
    ct[(abs(x - 42) < 8) & (abs(y - 30) < 10) & (abs(z - 30) < 12)] = 900.0
    rois = np.zeros(shape, np.uint8)
    rois[x < 30] = 1
    rois[(x - 25) ** 2 + (y - 30) ** 2 + (z - 30) ** 2 < 4.5**2] = 2  # a nodule-sized RoI
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = sp / 2  # voxel i's centre at (i + 0.5)·s mm: every spacing covers the same 60 mm
    return Volume(ct, aff, "ct"), Volume(rois, aff, "rois")


SPACINGS = {"native 3 mm": (3.0, 3.0, 3.0), "0.75 mm": (0.75, 0.75, 0.75), "1x1x3 mm": (1.0, 1.0, 3.0)}


@pytest.fixture(scope="module")
def tables():
    model = _model()
    out = {}
    for label, sp in SPACINGS.items():
        ct, rois = _scan(sp)
        res = run_case(model, ct, case=label, explainer=Explainer("vg"), rois=rois, roi_names=["rest", "left",
                                                                                               "nodule"])
        out[label] = res
    return out


def test_masses_agree_across_spacings(tables):
    ref = tables["native 3 mm"].local_importance.set_index(["target", "roi", "part"])["mass"]
    assert {"left", "nodule", "soft", "bone", "background"} <= set(ref.index.get_level_values("roi"))
    for label in ("0.75 mm", "1x1x3 mm"):
        other = tables[label].local_importance.set_index(["target", "roi", "part"])["mass"]
        diff = (other - ref).abs()
        assert diff.max() < 0.02, f"{label}:\n{diff.sort_values().tail(5)}"
    # the signs really alternate: pos and neg halves of every class's |a| on the model grid
    t = ref.xs("background", level="roi")
    assert t.xs("pos", level="part").between(0.0, 1.0).all()


def test_alternating_maps_would_cancel_on_the_fine_grid(tables):
    """What aggregating resampled maps on the input grid does (0.1's way): the masses move with the spacing."""
    res = tables["0.75 mm"]
    e = res.explanation
    fine = {t: e.map_on_input(t) for t in e.targets}
    ct, rois = _scan(SPACINGS["0.75 mm"])
    on_input = local_importance(fine, rois.array, ["rest", "left", "nodule"], case="x", skip_labels=(0,))
    on_model = res.local_importance
    a = on_input[(on_input.roi == "left") & (on_input.part == "abs")].set_index("target")["mass"]
    b = on_model[(on_model.roi == "left") & (on_model.part == "abs")].set_index("target")["mass"]
    assert (b - a).min() > 0.1, (a, b)  # the old way loses the alternating half; the test above shows ours does not


def test_small_roi_keeps_its_share():
    """A RoI smaller than a model voxel contributes its volume share, not 0 or a whole voxel."""
    grid_aff = np.diag([3.0, 3.0, 3.0, 1.0])
    fine = np.zeros((12, 12, 12), np.uint8)
    fine[4, 4, 4] = 1  # one 0.75 mm voxel: 1/64 of a 3 mm voxel
    vol = Volume(fine, np.diag([0.75, 0.75, 0.75, 1.0]) @ _shift(-1.5))
    occ = label_occupancy(vol, (3, 3, 3), grid_aff)[1]
    assert occ.sum() == pytest.approx(1 / 64) and occ.max() == pytest.approx(1 / 64)
    a = {"t": np.ones((3, 3, 3), np.float32)}
    table = occupancy_local_importance(a, {"tiny": occ}, parts=["abs"])
    assert table["mass"].iloc[0] == pytest.approx(1 / 64 / 27)
    assert table["mean"].iloc[0] == pytest.approx(1.0)


def _shift(v: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = v
    return m


def test_case_folder_keeps_maps_on_the_model_grid(tmp_path, tables):
    from napari_agg2exp.workflows.case_folder import CaseFolder
    from napari_agg2exp.workflows.case_importance import case_local_importance

    model = _model()
    ct, rois = _scan(SPACINGS["0.75 mm"])
    folder = CaseFolder(tmp_path / "case")
    res = run_case(model, ct, case="c", explainer=Explainer("vg"), out=folder)
    case = folder.load(load_image=False)
    assert not case.maps_on_prediction_grid and case.maps_grid.shape == res.prepared.labels[res.prepared.crop].shape
    # aggregation from the folder equals the run's own table, for the predicted and for custom RoIs
    pd.testing.assert_frame_equal(case_local_importance(case), res.local_importance)
    custom = case_local_importance(case, rois, ["rest", "left", "nodule"])
    direct = tables["0.75 mm"].local_importance
    direct = direct[direct.roi.isin(["left", "nodule"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(custom.drop(columns="case"), direct.drop(columns="case"), atol=1e-6)
