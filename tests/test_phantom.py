"""Synthetic thorax CT phantoms: determinism, anatomy, intensities, pathologies, cohort files."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from napari_agg2exp.errors import Agg2ExpError, Cancelled
from napari_agg2exp.data.labels import PATHOLOGY_LABELS, THORAX_LABELS
from napari_agg2exp.data.phantom.cases import PhantomCase, case_seed, make_phantom
from napari_agg2exp.data.phantom.cohort import write_phantom_cohort
from napari_agg2exp.data.volume import Volume, load_volume

L = {n: i for i, n in enumerate(THORAX_LABELS)}
LOBES = [L[n] for n in THORAX_LABELS if n.startswith("lung_")]
SMALL = dict(shape=(48, 40, 48), spacing=6.0)


@pytest.fixture(scope="module")
def cases() -> dict[int, PhantomCase]:
    return {s: make_phantom(s) for s in range(10)}


def _centroid(labels: np.ndarray, label: int) -> np.ndarray:
    return np.argwhere(labels == label).mean(axis=0)


def test_deterministic_bit_identical():
    a, b = make_phantom(3), make_phantom(3)
    for name in ("image", "labels", "pathology", "affine"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.seed == 3


def test_seeds_differ(cases):
    a, b = cases[1], cases[2]
    assert not np.array_equal(a.image, b.image)
    assert (a.labels != b.labels).mean() > 0.005


def test_types_shapes_affine(cases):
    c = cases[0]
    assert c.image.shape == c.labels.shape == c.pathology.shape == (96, 80, 96)
    assert c.image.dtype == np.float32 and c.labels.dtype == np.uint8
    assert c.pathology.dtype == np.uint8
    assert np.array_equal(c.image, np.round(c.image))
    assert np.allclose(np.diag(c.affine), [3, 3, 3, 1])
    centre = c.affine @ np.array([*((np.array(c.image.shape) - 1) / 2), 1.0])
    assert np.allclose(centre[:3], 0)
    assert c.labels.max() <= 16 and set(np.unique(c.pathology)) <= {0, 1, 2}
    img, lab, path = c.volumes()
    assert all(isinstance(v, Volume) for v in (img, lab, path))
    assert img.spacing == (3.0, 3.0, 3.0) and lab.shape == c.labels.shape
    assert np.array_equal(path.affine, c.affine) and path.array is c.pathology


@pytest.mark.parametrize("seed", range(10))
def test_every_label_present(cases, seed):
    counts = np.bincount(cases[seed].labels.ravel(), minlength=len(THORAX_LABELS))
    assert len(counts) == len(THORAX_LABELS)
    small = {n: int(counts[i]) for n, i in L.items() if counts[i] < 50}
    assert not small, f"labels with < 50 voxels: {small}"
    for lobe in LOBES:  # lobes are large
        assert counts[lobe] > 2000, THORAX_LABELS[lobe]
    for name in ("thyroid_gland", "pulmonary_vein"):
        assert counts[L[name]] >= 150, name


def test_left_is_patient_left_in_ras(cases):
    """RAS+: world x (and axis 0) increases towards the patient's right."""
    pairs = [("lung_upper_lobe_left", "lung_upper_lobe_right"),
             ("lung_lower_lobe_left", "lung_lower_lobe_right"),
             ("autochthon_left", "autochthon_right")]
    for c in cases.values():
        for left, right in pairs:
            xl, xr = _centroid(c.labels, L[left])[0], _centroid(c.labels, L[right])[0]
            assert xl < xr, (left, right)
            wl = (c.affine @ [xl, 0, 0, 1])[0]
            wr = (c.affine @ [xr, 0, 0, 1])[0]
            assert wl < 0 < wr
        # the heart and the descending aorta sit left of the midline
        assert (c.affine @ [_centroid(c.labels, L["heart"])[0], 0, 0, 1])[0] < 0


def test_anatomical_layout(cases):
    for c in cases.values():
        cen = {n: _centroid(c.labels, i) for n, i in L.items() if n != "background"}
        x, y, z = 0, 1, 2
        assert cen["sternum"][y] > cen["heart"][y] > cen["vertebrae"][y]
        assert cen["autochthon_left"][y] < cen["vertebrae"][y] + 2
        assert cen["thyroid_gland"][z] > cen["trachea"][z] > cen["heart"][z]
        assert cen["lung_upper_lobe_left"][z] > cen["lung_lower_lobe_left"][z]
        assert cen["lung_upper_lobe_right"][z] > cen["lung_middle_lobe_right"][z]
        assert cen["lung_upper_lobe_right"][z] > cen["lung_lower_lobe_right"][z]
        assert cen["lung_middle_lobe_right"][y] > cen["lung_lower_lobe_right"][y]
        assert cen["costal_cartilages"][y] > cen["ribs"][y]
        assert abs(cen["vertebrae"][x] - (c.labels.shape[0] - 1) / 2) < 6
        # the trachea reaches the top of the volume, the aorta the bottom
        assert (c.labels[:, :, -1] == L["trachea"]).any()
        assert (c.labels[:, :, 0] == L["aorta"]).any()


def test_hu_ranges(cases):
    for c in cases.values():
        mean = {n: float(c.image[c.labels == i].mean()) for n, i in L.items()}
        for lobe in LOBES:  # healthy lung (an effusion is fluid)
            assert c.image[(c.labels == lobe) & (c.pathology == 0)].mean() < -600
        assert mean["ribs"] > 300
        assert mean["vertebrae"] > 200
        assert mean["sternum"] > 200
        assert mean["aorta"] > 120 and mean["pulmonary_vein"] > 60
        assert -20 < mean["heart"] < 120
        assert 0 < mean["autochthon_left"] < 100 and 0 < mean["autochthon_right"] < 100
        assert 40 < mean["thyroid_gland"] < 160
        assert 50 < mean["costal_cartilages"] < 220
        assert mean["trachea"] < -200
        assert c.image[:3, :3, :].mean() < -850  # air outside the body (contrast-scaled)
        assert c.image.min() >= -1024 and c.image.max() <= 3071


def test_fissures_are_faintly_visible(cases):
    """Voxels of a lower lobe touching the upper lobe (the fissure) are brighter than lung."""
    for c in list(cases.values())[:4]:
        lab = c.labels
        up, lo = L["lung_upper_lobe_left"], L["lung_lower_lobe_left"]
        touch = np.zeros(lab.shape, bool)
        for ax in range(3):
            for sh in (1, -1):
                touch |= np.roll(lab, sh, axis=ax) == up
        fissure = (lab == lo) & touch
        interior = (lab == lo) & ~touch
        assert fissure.sum() > 100
        diff = c.image[fissure].mean() - c.image[interior].mean()
        assert 40 < diff < 250, diff


def test_pathology_inside_lungs_and_labels_unchanged(cases):
    n_nod = n_eff = 0
    for s, c in cases.items():
        path = c.pathology
        lung = np.isin(c.labels, LOBES)
        assert not (path[~lung] > 0).any()
        if (path == PATHOLOGY_LABELS.index("nodule")).any():
            n_nod += 1
            assert c.image[path == 1].mean() > -300
        if (path == PATHOLOGY_LABELS.index("effusion")).any():
            n_eff += 1
            assert c.image[path == 2].mean() > -300
        if s < 3:
            off = make_phantom(s, pathology=False)
            assert np.array_equal(off.labels, c.labels)
            assert not off.pathology.any()
            # the image only changes at (or, through smoothing, right next to) the pathologies
            near = binary_dilation(path > 0, np.ones((3, 3, 3), bool), iterations=4)
            assert np.array_equal(off.image[~near], c.image[~near])
    assert n_nod >= 3 and n_eff >= 1


@pytest.mark.parametrize("kw", [SMALL, dict(shape=(48, 40, 48), spacing=3.0),
                                dict(shape=(64, 64, 48), spacing=(4.0, 4.0, 5.0))])
def test_small_and_odd_grids(kw):
    for seed in range(3):
        c = make_phantom(seed, **kw)
        assert c.labels.shape == tuple(kw["shape"])
        counts = np.bincount(c.labels.ravel(), minlength=len(THORAX_LABELS))
        assert (counts >= 20).all(), {THORAX_LABELS[i]: int(n) for i, n in enumerate(counts)}
        sp = np.broadcast_to(np.asarray(kw["spacing"], float), (3,))
        assert np.allclose(np.diag(c.affine)[:3], sp)


def test_speed_default_grid():
    make_phantom(100)
    t = []
    for s in (101, 102):
        t0 = time.perf_counter()
        make_phantom(s)
        t.append(time.perf_counter() - t0)
    assert min(t) < 1.5, t


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(seed=1.5), dict(shape=(10, 10, 10)),
                                    dict(shape=(48, 40)), dict(spacing=0.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(Agg2ExpError):
        make_phantom(**kwargs)


def test_cohort_files(tmp_path):
    out = tmp_path / "cohort"
    calls = []
    paths = write_phantom_cohort(out, 2, seed=5, progress=lambda d, t, m: calls.append((d, t)),
                                 **SMALL)
    assert [p.name for p in paths] == ["case_0000", "case_0001"]
    assert calls[-1] == (2, 2)
    names = json.loads((out / "labels.json").read_text())
    assert names == {str(i): n for i, n in enumerate(THORAX_LABELS)}
    meta = json.loads((out / "phantoms.json").read_text())
    assert meta["case_seeds"] == [case_seed(5, 0), case_seed(5, 1)]
    for i, p in enumerate(paths):
        ref = make_phantom(case_seed(5, i), **SMALL)
        img = load_volume(p / "image.nii.gz")
        lab = load_volume(p / "labels.nii.gz")
        path = load_volume(p / "pathology.nii.gz")
        for v in (img, lab, path):
            assert np.allclose(v.affine, ref.affine)
        assert img.array.dtype == np.int16
        assert lab.array.dtype == np.uint8 and path.array.dtype == np.uint8
        assert np.array_equal(img.array.astype(np.float32), ref.image)
        assert np.array_equal(lab.array, ref.labels)
        assert np.array_equal(path.array, ref.pathology)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # different cases and different cohort seeds give different phantoms
    assert case_seed(5, 0) != case_seed(5, 1) != case_seed(6, 1)
    assert case_seed(5, 0) != case_seed(6, 0)


def test_cohort_refuses_existing_cases_unless_overwrite(tmp_path):
    out = tmp_path / "c"
    write_phantom_cohort(out, 3, seed=0, **SMALL)
    with pytest.raises(Agg2ExpError) as err:
        write_phantom_cohort(out, 1, seed=1, **SMALL)
    assert str(out) in str(err.value) and "--overwrite" in str(err.value)
    write_phantom_cohort(out, 1, seed=1, overwrite=True, **SMALL)
    assert sorted(p.name for p in out.glob("case_*")) == ["case_0000"]
    lab = load_volume(out / "case_0000" / "labels.nii.gz").array
    assert np.array_equal(lab, make_phantom(case_seed(1, 0), **SMALL).labels)
    (tmp_path / "file").write_text("x")
    with pytest.raises(Agg2ExpError):
        write_phantom_cohort(tmp_path / "file", 1, **SMALL)
    with pytest.raises(Agg2ExpError):
        write_phantom_cohort(tmp_path / "d", 0, **SMALL)


def test_cohort_cancel(tmp_path):
    ev = threading.Event()
    done = []

    def progress(d, t, m):
        done.append(d)
        if d == 1:
            ev.set()

    with pytest.raises(Cancelled):
        write_phantom_cohort(tmp_path / "c", 5, progress=progress, cancel=ev, **SMALL)
    assert sorted(p.name for p in (tmp_path / "c").glob("case_*")) == ["case_0000"]
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]
