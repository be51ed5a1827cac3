"""Every axis-aligned NIfTI orientation in a shown viewer: world positions from the file's affine,
radiology defaults, write-back in the file's own geometry, overlays of files on other grids."""

from __future__ import annotations

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest

pytest.importorskip("napari")

from napari_agg2exp import viewer as agg
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.viewer import display, reader, writer

SHAPE = (9, 8, 7)
MARK = (2, 6, 1)


def affine_for(codes: str, spacing=(1.0, 1.5, 3.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    """Voxel-to-world affine whose data axes point along ``codes`` (e.g. ``"PIL"``)."""
    ornt = nio.axcodes2ornt(tuple(codes))
    aff = np.eye(4)
    aff[:3, :3] = 0
    for j, (axis, flip) in enumerate(ornt):
        aff[int(axis), j] = flip * spacing[j]
    aff[:3, 3] = origin
    return aff


def marked_file(tmp_path, codes: str, **kw) -> tuple:
    arr = np.linspace(0, 1, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    arr[MARK] = 10.0
    aff = affine_for(codes, **kw)
    path = save_volume(Volume(arr, aff), tmp_path / f"scan_{codes}.nii.gz")
    return path, arr, aff


def open_file(viewer, path):
    layers = [viewer.add_layer(_create(*t)) for t in reader.read_nifti(str(path))]
    return layers[0]


def _create(data, kwargs, layer_type):
    from napari.layers import Layer

    return Layer.create(data, kwargs, layer_type)


@pytest.fixture
def shown(make_napari_viewer):
    return make_napari_viewer(show=True)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIL", "SAR", "AIR"])
def test_marked_voxel_at_its_affine_world_position(shown, tmp_path, qtbot, codes):
    path, _, aff = marked_file(tmp_path, codes)
    layer = open_file(shown, path)
    # the data is nibabel's closest canonical (RAS+) reorder of the file
    canon = nib.as_closest_canonical(nib.load(str(path)))
    np.testing.assert_array_equal(layer.data, np.asarray(canon.dataobj))
    assert np.all(np.asarray(layer.scale) > 0) and np.allclose(layer.affine.affine_matrix, np.eye(4))
    idx = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    np.testing.assert_allclose(layer.data_to_world(idx), (aff @ [*MARK, 1])[:3], atol=1e-9)
    # the canvas renders (no singular transform): the shown slice is not blank
    agg.radiology_view(shown, force=True)
    qtbot.wait(10)
    shot = shown.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 1


@pytest.mark.parametrize("codes", ["LPS", "PIL"])
def test_radiology_view_puts_right_anterior_top_left(shown, tmp_path, qtbot, codes):
    """Axial slice, anterior up, the patient's right on the viewer's left: a block in the right
    anterior quadrant of every slice shows in the top-left quadrant of the canvas."""
    aff = affine_for(codes, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    shape = (24, 24, 24)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    centre = (world.min(0) + world.max(0)) / 2
    arr = ((world[:, 0] > centre[0]) & (world[:, 1] > centre[1])).astype(np.float32).reshape(shape)
    layer = open_file(shown, save_volume(Volume(arr, aff), tmp_path / "quadrant.nii.gz"))
    layer.contrast_limits = (0, 1)
    agg.radiology_view(shown, force=True)
    shown.reset_view()
    qtbot.wait(20)
    assert shown.dims.order[-3:] == (2, 1, 0) and shown.dims.not_displayed == (2,)  # slider on I-S
    assert tuple(shown.camera.orientation2d) == ("up", "left")
    assert shown.scale_bar.visible and str(shown.layers.units[-1]) == "millimeter"
    assert tuple(shown.dims.axis_labels) == display.AXIS_LABELS
    shot = shown.screenshot(canvas_only=True, flash=False)[..., :3].mean(-1)
    ys, xs = np.nonzero(shot > 128)
    h, w = shot.shape
    assert len(ys) > 100 and ys.mean() < h / 2 and xs.mean() < w / 2


def test_oblique_is_shown_axis_aligned_with_a_notification(shown, tmp_path, monkeypatch):
    from napari.utils import notifications

    seen = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: seen.append(str(msg)))
    t = np.deg2rad(10)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 2.0, 3.0])
    aff[:3, 3] = (5.0, -4.0, 3.0)
    arr = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    layer = open_file(shown, save_volume(Volume(arr, aff), tmp_path / "oblique.nii.gz"))
    assert seen and "oblique" in seen[0]
    np.testing.assert_allclose(layer.scale, (1.0, 2.0, 3.0), atol=1e-6)
    np.testing.assert_allclose(layer.translate, (5.0, -4.0, 3.0), atol=1e-6)
    # the model still gets the full affine
    np.testing.assert_allclose(agg.layer_volume(layer).affine, nib.load(str(tmp_path / "oblique.nii.gz")).affine,
                               atol=1e-5)


@pytest.mark.parametrize("codes", ["PIL", "LPS"])
def test_writer_restores_the_source_geometry(shown, tmp_path, codes):
    path, arr, _ = marked_file(tmp_path, codes)
    layer = open_file(shown, path)
    out = writer.write_image(str(tmp_path / "back"), layer.data, layer._get_state())
    back = nib.load(out[0])
    np.testing.assert_array_equal(back.affine, nib.load(str(path)).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), arr)


def test_prediction_overlays_the_scan_voxel_for_voxel(shown, tmp_path, tiny_model_dir):
    """The viewer's prediction of a PIL file, written back, is the CLI's prediction of the file."""
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.workflows.case import run_case

    rng = np.random.default_rng(1)
    arr = rng.normal(0, 1, (20, 18, 17)).astype(np.float32)
    arr[4:12, 5:11, 3:9] += 3
    path = save_volume(Volume(arr, affine_for("PIL", spacing=(1.0, 1.2, 2.0))), tmp_path / "pil.nii.gz")
    layer = open_file(shown, path)
    agg.load_model(shown, tiny_model_dir, device="cpu")
    pred = agg.segment(shown, layer)
    np.testing.assert_allclose(pred.scale, layer.scale)
    np.testing.assert_allclose(pred.translate, layer.translate)
    out = writer.write_labels(str(tmp_path / "pred"), pred.data, pred._get_state())
    expected = run_case(load_model(tiny_model_dir, device="cpu"), load_volume(path)).prepared.prediction.array
    back = nib.load(out[0])
    np.testing.assert_array_equal(back.affine, nib.load(str(path)).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), expected)


def test_map_on_the_model_grid_overlays_at_its_world_place(shown, tmp_path):
    """A map written on another grid (RAS, 2 mm, its own origin) lands on the scan's (LPS) voxel at
    the same world point."""
    img_aff = affine_for("LPS", spacing=(1.0, 1.0, 2.0), origin=(30.0, 25.0, -10.0))
    map_aff = affine_for("RAS", spacing=(2.0, 2.0, 2.0), origin=(14.0, 11.0, -10.0))
    img = np.zeros((16, 14, 8), np.float32)
    amap = np.zeros((8, 7, 8), np.float32)
    m = (3, 4, 5)
    amap[m] = 1.0
    w = (map_aff @ [*m, 1])[:3]
    v = np.linalg.solve(img_aff[:3, :3], w - img_aff[:3, 3])
    assert np.allclose(v, np.round(v))  # the world point is an image voxel
    img[tuple(round(x) for x in v)] = 1.0
    scan = open_file(shown, save_volume(Volume(img, img_aff), tmp_path / "ct.nii.gz"))
    mp = open_file(shown, save_volume(Volume(amap, map_aff), tmp_path / "heart.nii.gz"))
    wi = scan.data_to_world(np.unravel_index(np.argmax(scan.data), scan.data.shape))
    wm = mp.data_to_world(np.unravel_index(np.argmax(mp.data), mp.data.shape))
    np.testing.assert_allclose(wi, w, atol=1e-9)
    np.testing.assert_allclose(wm, w, atol=1e-9)


def test_ct_windows_and_heuristic(shown, tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 30, (16, 16, 8)).astype(np.float32)
    ct[:4] = -1000  # air
    ct[-2:] = 900  # bone
    mr = rng.random((16, 16, 8)).astype(np.float32) * 800
    assert display.looks_like_ct(ct) and not display.looks_like_ct(mr)
    scan = open_file(shown, save_volume(Volume(ct, np.eye(4)), tmp_path / "ct.nii.gz"))
    assert tuple(scan.contrast_limits) == (50 - 175, 50 + 175)  # mediastinum: W 350, L 50
    assert display.apply_ct_window(scan, "lung") == (-1350.0, 150.0)
    assert tuple(scan.contrast_limits) == (-1350.0, 150.0)
    with pytest.raises(Agg2ExpError, match="did you mean 'lung'"):
        display.apply_ct_window(scan, "lugn")
    other = open_file(shown, save_volume(Volume(mr, np.eye(4)), tmp_path / "t1.nii.gz"))
    lo, hi = other.contrast_limits
    assert 0 <= lo < 20 and 780 < hi <= 800


def test_open_through_napari_applies_the_radiology_view(shown, tmp_path, qtbot):
    """``viewer.open`` with this plugin's reader: a SAR file renders, and the viewer switches to the
    axial view with labelled axes and the scale bar on the next event-loop turn."""
    path, _, aff = marked_file(tmp_path, "SAR")
    layers = shown.open(str(path), plugin="napari-agg2exp")
    qtbot.waitUntil(lambda: shown.scale_bar.visible, timeout=2000)
    assert shown.dims.order == (2, 1, 0) and tuple(shown.dims.axis_labels) == display.AXIS_LABELS
    idx = np.unravel_index(np.argmax(layers[0].data), layers[0].data.shape)
    np.testing.assert_allclose(layers[0].data_to_world(idx), (aff @ [*MARK, 1])[:3], atol=1e-9)
    assert shown.screenshot(canvas_only=True, flash=False)[..., :3].std() > 1
