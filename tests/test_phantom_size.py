"""``agg2exp phantom --size/--shape/--spacing``: the written grid is the one asked for, with its anatomy."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_agg2exp.cli.main import main
from napari_agg2exp.cli.phantom import phantom_grid
from napari_agg2exp.data.labels import THORAX_LABELS

L = {n: i for i, n in enumerate(THORAX_LABELS)}


def test_phantom_cli_shape_and_spacing(tmp_path, capsys):
    out = tmp_path / "ph"
    shape, spacing = (56, 48, 40), (5.0, 5.5, 7.0)
    argv = ["phantom", "--out", str(out), "--shape", *map(str, shape), "--spacing", *map(str, spacing)]
    assert main(argv) == 0
    assert "56x48x40 voxels at 5x5.5x7 mm" in capsys.readouterr().out
    img = nib.load(out / "case_0000" / "image.nii.gz")
    lab = nib.load(out / "case_0000" / "labels.nii.gz")
    # the file's own header (independent of the writer): shape, voxel size and the affine's columns
    assert img.shape == shape and lab.shape == shape
    assert np.allclose(img.header.get_zooms(), spacing)
    assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), spacing)
    assert np.allclose(lab.affine, img.affine)
    # centred at 0 mm: the centre voxel maps to the origin
    centre = img.affine @ np.array([*((np.array(shape) - 1) / 2), 1.0])
    assert np.allclose(centre[:3], 0, atol=1e-4)
    labels = np.asarray(lab.dataobj)
    hu = np.asarray(img.dataobj, dtype=np.float32)
    # the whole anatomy at this coarse, anisotropic grid; labels sit on the image's structures
    assert set(np.unique(labels).tolist()) == set(range(len(THORAX_LABELS)))
    lungs = np.isin(labels, [L[n] for n in THORAX_LABELS if n.startswith("lung")])
    assert lungs.mean() > 0.01 and np.median(hu[lungs]) < -500  # aerated lung is dark
    assert np.median(hu[labels == L["heart"]]) > 0  # blood / muscle
    assert np.median(hu[labels == L["vertebrae"]]) > 150  # bone
    assert np.median(hu[0, 0, :]) < -800  # air outside the body at the grid's corner
    meta = json.loads((out / "phantoms.json").read_text())
    assert meta["shape"] == list(shape) and meta["spacing"] == list(spacing)


def test_phantom_size_presets():
    assert phantom_grid("full", None, None) == ((512, 512, 300), (0.8, 0.8, 1.5))
    assert phantom_grid(None, None, None) == ((96, 80, 96), (3.0, 3.0, 3.0))
    assert phantom_grid("full", None, [2.0]) == ((512, 512, 300), (2.0, 2.0, 2.0))  # override one part
    assert phantom_grid("default", [64, 64, 64], None) == ((64, 64, 64), (3.0, 3.0, 3.0))


@pytest.mark.parametrize("argv, words", [
    (["--size", "ful"], "did you mean 'full'"),
    (["--shape", "64", "64"], "--shape needs three integers"),
    (["--shape", "64", "64", "10"], "--shape needs three integers >= 24"),
    (["--spacing", "1", "2"], "--spacing needs 1 or 3 positive numbers"),
    (["--spacing", "0", "1", "1"], "--spacing needs 1 or 3 positive numbers"),
    (["--spacing", "nan"], "--spacing needs 1 or 3 positive numbers"),
    (["--shape", "20000", "20000", "20000"], "use a smaller --shape"),
])
def test_phantom_cli_bad_grid(tmp_path, capsys, argv, words):
    out = tmp_path / "bad"
    assert main(["phantom", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("agg2exp: error:") and words in err and "\n" not in err
    assert not out.exists()  # nothing written
