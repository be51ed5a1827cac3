"""Tables I/O, global importance, the importance graph and outlier scans (SPEC §5, §7)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_agg2exp.importance.global_importance import (
    global_importance,
    importance_graph,
    prune_edges,
    read_groups,
    write_graphml,
)
from napari_agg2exp.importance.outliers import outlier_analysis, outlier_scores, spearman_table
from napari_agg2exp.report.cohort_outputs import write_global_analysis
from napari_agg2exp.importance.tables import (
    has_parquet,
    read_local_table,
    read_local_tables,
    read_quality_table,
    write_table,
)
from napari_agg2exp.errors import Agg2ExpError

PNG = b"\x89PNG\r\n\x1a\n"
TARGETS = ["aorta", "heart", "ribs"]
ROIS = ["background", "aorta", "heart", "ribs", "vertebrae", "nodule"]


def cohort(n_cases=12, seed=0, prefix="c"):
    """A synthetic local table: per (case, target, part) Dirichlet masses over ROIS."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        for t in TARGETS:
            for part in ("abs", "pos", "neg"):
                alpha = np.ones(len(ROIS)) + 5 * np.array([r == t for r in ROIS])
                mass = rng.dirichlet(alpha)
                for r, m in zip(ROIS, mass, strict=True):
                    rows.append((f"{prefix}{i:03d}", t, r, part, m, m * rng.uniform(0.5, 2)))
    return pd.DataFrame(rows, columns=["case", "target", "roi", "part", "mass", "mean"])


def quality_for(local, seed=1):
    rng = np.random.default_rng(seed)
    cases = local["case"].unique()
    return pd.DataFrame([(c, t, rng.uniform(0.5, 1), rng.uniform(0.3, 1)) for c in cases for t in TARGETS],
                        columns=["case", "class", "dice", "iou"])


# ---------------------------------------------------------------- tables

def test_csv_roundtrip_keeps_text_and_missing_values(tmp_path):
    df = pd.DataFrame({"case": ["001", "002"], "target": ["heart", "heart"], "roi": ["none", "NA_region"],
                       "part": ["abs", "neg"], "mass": [0.5, np.nan], "mean": [np.nan, 1e-9]})
    p = write_table(df, tmp_path / "sub" / "local.csv")
    back = read_local_table(p)
    assert list(back["case"]) == ["001", "002"]
    assert list(back["roi"]) == ["none", "NA_region"]
    assert np.isnan(back["mass"][1]) and np.isnan(back["mean"][0])
    assert back["mean"][1] == pytest.approx(1e-9)
    assert not list(tmp_path.joinpath("sub").glob(".*"))  # no temporary file left


def test_missing_columns_name_the_columns_and_file(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("case,target,roi,mass\nc,h,r,0.1\n")
    with pytest.raises(Agg2ExpError, match=r"bad.csv lacks column\(s\) part, mean"):
        read_local_table(p)
    q = tmp_path / "q.csv"
    q.write_text("case,class,dice\nc,h,0.9\n")
    with pytest.raises(Agg2ExpError, match="lacks column.*iou"):
        read_quality_table(q)


def test_bad_values_and_formats(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("case,target,roi,part,mass,mean\nc,h,r,abs,lots,0.1\n")
    with pytest.raises(Agg2ExpError, match="numeric"):
        read_local_table(p)
    p.write_text("case,target,roi,part,mass,mean\nc,h,r,both,0.1,0.1\n")
    with pytest.raises(Agg2ExpError, match="unknown part"):
        read_local_table(p)
    with pytest.raises(Agg2ExpError, match="unknown table format"):
        write_table(cohort(1), tmp_path / "x.xlsx")
    with pytest.raises(Agg2ExpError, match="not found"):
        read_local_table(tmp_path / "missing.csv")


def test_parquet(tmp_path):
    df = cohort(2)
    if has_parquet():
        back = read_local_table(write_table(df, tmp_path / "t.parquet"))
        pd.testing.assert_frame_equal(back, df)
    else:
        with pytest.raises(Agg2ExpError, match="pyarrow"):
            write_table(df, tmp_path / "t.parquet")


def test_duplicate_rows_across_tables_are_refused(tmp_path):
    a = write_table(cohort(2), tmp_path / "a.csv")
    b = write_table(cohort(2), tmp_path / "b.csv")
    with pytest.raises(Agg2ExpError, match="duplicate rows.*a.csv, .*b.csv"):
        read_local_tables([a, b])
    c = write_table(cohort(2, prefix="d"), tmp_path / "c.csv")
    assert read_local_tables([a, c])["case"].nunique() == 4


# ---------------------------------------------------------------- global importance

def test_global_equals_grouped_statistics():
    local = cohort()
    local.loc[local.sample(frac=0.1, random_state=0).index, "mass"] = np.nan
    g = global_importance(local)
    grouped = local.groupby(["target", "roi", "part"])["mass"]
    ref = pd.DataFrame({"mean": grouped.mean(), "median": grouped.median(), "std": grouped.std(),
                        "q25": grouped.quantile(0.25), "q75": grouped.quantile(0.75), "n": grouped.count()})
    got = g.set_index(["target", "roi", "part"]).loc[ref.index]
    np.testing.assert_allclose(got[["mean", "median", "std", "q25", "q75"]], ref[["mean", "median", "std", "q25",
                                                                                   "q75"]])
    np.testing.assert_array_equal(got["n"], ref["n"])
    assert list(g.columns) == ["target", "roi", "part", "mean", "median", "std", "q25", "q75", "n"]


def test_global_part_filter():
    g = global_importance(cohort(3), part="pos")
    assert set(g["part"]) == {"pos"}
    with pytest.raises(Agg2ExpError, match="no row with part"):
        global_importance(cohort(3).query("part == 'abs'"), part="neg")


def hand_made():
    rows = [
        # target heart: candidates (no background, no self-edge) 0.20, 0.10, 0.05, 0.04 (sum 0.39): shares
        # 0.513, 0.256, 0.128, 0.103, cumulative 0.513, 0.769, 0.897, 1
        ("heart", "heart", 0.40), ("heart", "background", 0.21), ("heart", "aorta", 0.20),
        ("heart", "ribs", 0.10), ("heart", "nodule", 0.05), ("heart", "vertebrae", 0.04),
        # target ribs: candidates 0.50, 0.15, 0.05 (sum 0.70): cumulative shares 0.714, 0.929, 1
        ("ribs", "ribs", 0.30), ("ribs", "vertebrae", 0.50), ("ribs", "heart", 0.15), ("ribs", "aorta", 0.05),
        # target aorta: zero and missing weights never make edges
        ("aorta", "aorta", 0.9), ("aorta", "heart", 0.1), ("aorta", "ribs", 0.0), ("aorta", "nodule", np.nan),
    ]
    df = pd.DataFrame(rows, columns=["target", "roi", "mean"])
    df["part"] = "abs"
    df["n"] = 7
    return df


def test_pruning_rule_on_a_hand_made_table():
    # keep_mass is a cumulative share among each target's candidates (background and self excluded)
    g = importance_graph(hand_made(), keep_mass=0.8)
    assert sorted(g.in_edges("heart")) == sorted([("aorta", "heart"), ("ribs", "heart")])  # 0.769 <= 0.8
    assert list(g.in_edges("ribs")) == [("vertebrae", "ribs")]  # 0.929 > 0.8
    assert list(g.in_edges("aorta")) == [("heart", "aorta")]  # the heaviest is always kept
    assert (g.graph["rule"], g.graph["kept"], g.graph["candidates"]) == ("keep_mass", 4, 8)
    assert "background" not in g
    assert not any(u == v for u, v in g.edges)
    assert g.edges["aorta", "heart"]["weight"] == pytest.approx(0.20)
    assert g.edges["aorta", "heart"]["n"] == 7
    assert g.nodes["nodule"]["kind"] == "roi" and g.nodes["heart"]["kind"] == "class"
    assert g.nodes["heart"]["group"] == "cardiovascular" and g.nodes["ribs"]["group"] == "bones"
    assert g.nodes["nodule"]["group"] == "other"
    # a larger share keeps the next edges; min_edges=0 drops the lone heavy edge
    assert ("nodule", "heart") in importance_graph(hand_made(), keep_mass=0.90).edges
    assert ("vertebrae", "heart") not in importance_graph(hand_made(), keep_mass=0.90).edges
    assert importance_graph(hand_made(), keep_mass=0.35, min_edges=0).in_degree("ribs") == 0
    assert ("heart", "heart") in importance_graph(hand_made(), keep_mass=0.5, self_loops=True).edges
    groups = {"nodule": "pathology"}
    assert importance_graph(hand_made(), groups=groups).nodes["nodule"]["group"] == "pathology"


def test_prune_edges_validates_threshold():
    assert prune_edges({"a": 0.1, "b": 0.1, "c": 0.3}, 0.2) == ["c"]  # shares 0.6, 0.2, 0.2
    assert prune_edges({"b": 0.1, "a": 0.1}, 0.15) == ["a"]  # ties by name
    with pytest.raises(Agg2ExpError, match="keep_mass"):
        prune_edges({}, 1.5)


def test_graphml_roundtrip(tmp_path):
    import networkx as nx

    g = importance_graph(hand_made())
    back = nx.read_graphml(write_graphml(g, tmp_path / "g.graphml"))
    assert set(back.edges) == set(g.edges)
    assert back.edges["vertebrae", "ribs"]["weight"] == pytest.approx(0.5)
    assert back.nodes["nodule"]["kind"] == "roi"


def test_write_global_analysis_writes_every_file(tmp_path):
    written = write_global_analysis(cohort(5), tmp_path / "g")
    for name in ("global_importance.csv", "graph.graphml", "graph.png", "heatmap.png"):
        assert (tmp_path / "g" / name).exists()
    for t in TARGETS:
        assert (tmp_path / "g" / "distributions" / f"{t}.png").read_bytes().startswith(PNG)
    assert len(written) == 4 + len(TARGETS)


def test_read_groups(tmp_path):
    p = tmp_path / "groups.json"
    p.write_text(json.dumps({"nodule": "pathology"}))
    assert read_groups(p) == {"nodule": "pathology"}
    p.write_text("[1, 2]")
    with pytest.raises(Agg2ExpError, match="map RoI names"):
        read_groups(p)


# ---------------------------------------------------------------- outliers

def test_outliers_deterministic_for_a_seed():
    train, test = cohort(20, seed=0), cohort(8, seed=5, prefix="t")
    a, _ = outlier_scores(train, test, seed=3)
    b, _ = outlier_scores(train, test, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c, _ = outlier_scores(train, test, seed=4)
    assert not np.allclose(a["score"], c["score"])
    assert list(a.columns) == ["case", "target", "score", "outlier"]
    assert (a["outlier"] == (a["score"] < 0)).all()
    assert len(a) == 8 * len(TARGETS)


def test_features_match_sklearn_directly():
    from sklearn.ensemble import IsolationForest

    train, test = cohort(15, seed=0), cohort(6, seed=5, prefix="t")
    scores, _ = outlier_scores(train, test, seed=0)
    sel = lambda df: df[(df.target == "heart") & (df.part == "abs")].pivot(index="case", columns="roi",
                                                                           values="mass").sort_index(axis=1)
    forest = IsolationForest(n_estimators=100, random_state=0).fit(sel(train).to_numpy())
    expected = forest.decision_function(sel(test).to_numpy())
    np.testing.assert_allclose(scores[scores.target == "heart"]["score"], expected)


def test_spearman_equals_scipy():
    from scipy.stats import spearmanr

    train, test = cohort(20, seed=0), cohort(10, seed=5, prefix="t")
    quality = quality_for(test)
    result = outlier_analysis(train, test, quality, seed=0)
    for _, row in result.spearman.iterrows():
        s = result.scores[result.scores.target == row["target"]]
        m = s.merge(quality.rename(columns={"class": "target"}), on=["case", "target"])
        ref = spearmanr(m["score"], m["dice"])
        assert row["rho"] == pytest.approx(ref.statistic)
        assert row["p"] == pytest.approx(ref.pvalue)
        assert row["n"] == 10


def test_outlier_errors():
    train, test = cohort(10), cohort(4, seed=2, prefix="t")
    with pytest.raises(Agg2ExpError, match="no target in common"):
        outlier_scores(train, test.assign(target="lung"))
    quality = quality_for(test)
    with pytest.raises(Agg2ExpError, match="lacks case"):
        spearman_table(outlier_scores(train, test)[0], quality[quality.case != "t000"])
    few = spearman_table(outlier_scores(train, test.query("case in ['t000', 't001']"))[0], quality)
    assert few["rho"].isna().all() and (few["n"] == 2).all()
    _, skipped = outlier_scores(train.query("case == 'c000' or target != 'ribs'"), test)
    assert "ribs" in skipped
