"""Local RoI importance (SPEC §4): one pass per target, checked against the per-RoI masked reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_agg2exp.importance.local import _LabelIndex, local_importance, naive_local_importance, parse_joins
from napari_agg2exp.errors import Agg2ExpError, Cancelled

NAMES = ["background", "aorta", "heart", "trachea", "ribs"]


def _blocky(shape=(13, 11, 9), seed=0, n_labels=5):
    """Labels in slabs (long runs: the run-length path)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    for k in range(1, n_labels):
        x0, y0 = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        lab[x0 : x0 + 4, y0 : y0 + 5, :] = k
    return lab


def _random(shape=(13, 11, 9), seed=0, n_labels=5):
    """Labels drawn per voxel (short runs: the bincount fallback path)."""
    return np.random.default_rng(seed).integers(0, n_labels, shape).astype(np.uint8)


def _maps(shape, seed=0, targets=("aorta", "heart", "ribs"), dtype=np.float32):
    rng = np.random.default_rng(seed + 100)
    return {t: rng.standard_normal(shape).astype(dtype) for t in targets}


LABELS = {"runs": _blocky, "bincount": _random}


@pytest.mark.parametrize("kind", ["runs", "bincount"])
def test_mass_sums_to_one_over_partition(kind):
    lab = LABELS[kind]()
    df = local_importance(_maps(lab.shape), lab, NAMES)
    sums = df.groupby(["target", "part"])["mass"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-9)
    assert list(df.columns) == ["case", "target", "roi", "part", "mass", "mean"]
    assert len(df) == 3 * 3 * len(NAMES)


@pytest.mark.parametrize("kind", ["runs", "bincount"])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_naive_masked_computation(kind, order, dtype):
    lab = np.asarray(LABELS[kind](), order=order)
    maps = {k: np.asarray(v, order="C") for k, v in _maps(lab.shape, dtype=dtype).items()}
    joins = {"great_vessels": ("aorta", "heart")}
    fast = local_importance(maps, lab, NAMES, case="c1", joins=joins)
    naive = naive_local_importance(maps, lab, NAMES, case="c1", joins=joins)
    pd.testing.assert_frame_equal(fast[["case", "target", "roi", "part"]], naive[["case", "target", "roi", "part"]])
    np.testing.assert_allclose(fast[["mass", "mean"]].to_numpy(), naive[["mass", "mean"]].to_numpy(),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("kind", ["runs", "bincount"])
def test_chunked_sums_match_bincount_at_any_chunk_size(chunk, kind):
    lab = LABELS[kind](shape=(7, 6, 5))
    a = np.random.default_rng(3).standard_normal(lab.shape)
    index = _LabelIndex.build(lab, 6, chunk=chunk)
    pos, neg = index.part_sums(a, chunk=chunk)
    np.testing.assert_allclose(pos, np.bincount(lab.ravel(), np.maximum(a, 0).ravel(), 6))
    np.testing.assert_allclose(neg, np.bincount(lab.ravel(), np.maximum(-a, 0).ravel(), 6))
    np.testing.assert_array_equal(index.counts, np.bincount(lab.ravel(), minlength=6))


def test_empty_roi_gives_missing_mean_and_zero_mass():
    lab = _blocky()
    names = NAMES + ["thyroid_gland"]  # id 5 never occurs
    df = local_importance(_maps(lab.shape), lab, names)
    empty = df[df["roi"] == "thyroid_gland"]
    assert len(empty) == 9
    assert empty["mean"].isna().all()
    assert (empty["mass"] == 0).all()


def test_joined_roi_equals_union():
    lab = _blocky()
    maps = _maps(lab.shape)
    df = local_importance(maps, lab, NAMES, joins=["vessels_and_bone=aorta,ribs"])
    merged = np.where(lab == 4, 1, lab)  # ribs relabelled as aorta: the union as one label
    ref = local_importance(maps, merged, NAMES)
    a = df[df["roi"] == "vessels_and_bone"].reset_index(drop=True)
    b = ref[ref["roi"] == "aorta"].reset_index(drop=True)
    np.testing.assert_allclose(a[["mass", "mean"]].to_numpy(), b[["mass", "mean"]].to_numpy(), rtol=1e-12)
    parts = df[df["roi"].isin(["aorta", "ribs"])].groupby(["target", "part"])["mass"].sum()
    joined = df[df["roi"] == "vessels_and_bone"].set_index(["target", "part"])["mass"]
    np.testing.assert_allclose(joined.loc[parts.index].to_numpy(), parts.to_numpy(), rtol=1e-12)


def test_abs_is_pos_plus_neg_in_raw_sums():
    lab = _blocky()
    df = local_importance(_maps(lab.shape), lab, NAMES)
    counts = np.bincount(lab.ravel(), minlength=len(NAMES))
    wide = df.pivot_table(index=["target", "roi"], columns="part", values="mean")
    raw = wide.mul(counts[[NAMES.index(r) for r in wide.index.get_level_values("roi")]], axis=0)
    np.testing.assert_allclose(raw["abs"], raw["pos"] + raw["neg"], rtol=1e-12)


def test_zero_total_gives_missing_mass_but_defined_mean():
    lab = _blocky()
    maps = {"heart": np.abs(_maps(lab.shape)["heart"])}  # no negative value
    df = local_importance(maps, lab, NAMES)
    neg = df[df["part"] == "neg"]
    assert neg["mass"].isna().all()
    assert (neg["mean"] == 0).all()
    assert df[df["part"] == "pos"]["mass"].notna().all()


def test_unnamed_labels_are_reported_and_skip_labels_hides_rows():
    lab = _blocky()
    lab[0, 0, :] = 9
    maps = _maps(lab.shape, targets=("heart",))
    df = local_importance(maps, lab, {0: "background", 2: "heart"}, parts=["abs"])
    assert list(df["roi"]) == ["background", "label_1", "heart", "label_3", "label_4", "label_9"]
    assert df["mass"].sum() == pytest.approx(1.0)
    skipped = local_importance(maps, lab, NAMES[:5], parts=["abs"], skip_labels=[0])
    assert "background" not in set(skipped["roi"])
    np.testing.assert_allclose(skipped.set_index("roi")["mass"], df.set_index("roi")["mass"].drop("background")
                               .rename(index={"label_1": "aorta", "label_3": "trachea", "label_4": "ribs"}))


def test_float_labels_with_whole_numbers_are_accepted():
    lab = _blocky()
    maps = _maps(lab.shape)
    a = local_importance(maps, lab.astype(np.float32), NAMES)
    b = local_importance(maps, lab, NAMES)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full((4, 4, 4), 0.5), "fractional"),
        (np.full((4, 4, 4), -1), "negative"),
        (np.full((3, 4, 4), 1), "shape"),
    ],
)
def test_bad_labels_raise(labels, message):
    with pytest.raises(Agg2ExpError, match=message):
        local_importance({"heart": np.zeros((4, 4, 4))}, labels, NAMES)


@pytest.mark.parametrize("kind", ["runs", "bincount"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_attribution_raises(kind, bad):
    lab = LABELS[kind]()
    a = _maps(lab.shape)["heart"]
    a[3, 2, 1] = bad
    with pytest.raises(Agg2ExpError, match="NaN or infinite"):
        local_importance({"heart": a}, lab, NAMES)


def test_parts_are_validated_with_a_suggestion():
    lab = _blocky()
    with pytest.raises(Agg2ExpError, match="did you mean 'abs'"):
        local_importance(_maps(lab.shape), lab, NAMES, parts=["abss"])
    df = local_importance(_maps(lab.shape), lab, NAMES, parts=["neg"])
    assert set(df["part"]) == {"neg"}


def test_parse_joins():
    joins = parse_joins(["lung=a, b", "x=c"], ["a", "b", "c"])
    assert joins == {"lung": ("a", "b"), "x": ("c",)}
    with pytest.raises(Agg2ExpError, match="did you mean 'aorta'"):
        parse_joins(["vessels=aortta,heart"], NAMES)
    with pytest.raises(Agg2ExpError, match="NAME=a,b"):
        parse_joins(["lung"], NAMES)
    with pytest.raises(Agg2ExpError, match="already a RoI name"):
        parse_joins(["heart=aorta"], NAMES)
    with pytest.raises(Agg2ExpError, match="twice"):
        parse_joins(["v=aorta", "v=heart"], NAMES)
    with pytest.raises(Agg2ExpError, match="no members"):
        parse_joins(["v="], NAMES)


def test_progress_and_cancel():
    lab = _blocky()
    calls = []
    local_importance(_maps(lab.shape), lab, NAMES, progress=lambda d, t, m: calls.append((d, t)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    with pytest.raises(Cancelled):
        local_importance(_maps(lab.shape), lab, NAMES, cancel=lambda: True)


def test_empty_attribution_mapping_gives_empty_table():
    df = local_importance({}, _blocky(), NAMES)
    assert df.empty and list(df.columns) == ["case", "target", "roi", "part", "mass", "mean"]


def test_both_summation_paths_are_exercised():
    assert _LabelIndex.build(_blocky(), 5).starts is not None
    assert _LabelIndex.build(_random(), 5).starts is None
