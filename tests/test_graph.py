"""The importance graph's candidate edges and keep rules (SPEC §5; issue 13 items 3 and 4)."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import Volume, save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.importance.global_importance import (
    DEFAULT_EXCLUDE,
    candidate_edges,
    global_importance,
    graph_summary,
    importance_graph,
    keep_rule,
    prune_edges,
    select_edges,
    write_graphml,
)
from napari_agg2exp.importance.tables import (
    has_parquet,
    join_members,
    read_local_table,
    read_local_tables,
    with_join_members,
    write_table,
)
from napari_agg2exp.report.cohort_figures import graph_figure
from napari_agg2exp.report.cohort_outputs import write_global_analysis
from napari_agg2exp.report.html import write_cohort_report
from napari_agg2exp.workflows.case_importance import read_local_importance

LOBES = ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
         "lung_lower_lobe_right"]
CLASSES = ["heart", "aorta", "trachea", "esophagus", *LOBES]
JOINS = {"lung": tuple(LOBES)}


def demo_like(n_cases=6, seed=0):
    """Local table like the demo's: background holds ~70 % of every class's mass, plus ``none``, a nodule
    and the joined ``lung`` (its mass = the sum of the lobes' masses)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        for t in CLASSES:
            rest = rng.dirichlet(np.ones(len(CLASSES) + 1) + 4 * np.array([r == t for r in CLASSES] + [False]))
            bg = rng.uniform(0.67, 0.77)
            mass = dict(zip([*CLASSES, "nodule"], (1 - bg) * rest, strict=True))
            mass["background"] = bg
            mass["none"] = 0.02
            mass["lung"] = sum(mass[lobe] for lobe in LOBES)
            rows += [(f"c{i}", t, r, "abs", m, m) for r, m in mass.items()]
    return pd.DataFrame(rows, columns=["case", "target", "roi", "part", "mass", "mean"])


def expected_candidates(gdf, joins=JOINS):
    """Hand-written candidate rule: no excluded name, no self-edge, no joined RoI into its member."""
    out = {}
    for r in gdf.itertuples():
        if r.roi in DEFAULT_EXCLUDE or r.target in DEFAULT_EXCLUDE or r.roi == r.target:
            continue
        if r.target in joins.get(r.roi, ()):
            continue
        if r.mean > 0:
            out[(r.roi, r.target)] = r.mean
    return out


# ---------------------------------------------------------------- default rule

def test_background_holds_most_mass_and_the_default_keeps_the_heaviest_third():
    local = with_join_members(demo_like(), JOINS)
    gdf = global_importance(local)
    bg = gdf[gdf["roi"] == "background"].set_index("target")["mean"]
    assert bg.between(0.67, 0.77).all()  # the paper's situation
    cands = expected_candidates(gdf)
    n = len(cands)
    assert n == len(CLASSES) * (len(CLASSES) - 1) + len(CLASSES) + len(CLASSES) - len(LOBES)  # RoIs, nodule, lung
    g = importance_graph(gdf)
    assert g.graph["rule"] == "keep_fraction" and g.graph["rule_value"] == pytest.approx(1 / 3)
    assert g.graph["candidates"] == n and g.graph["kept"] == round(n / 3) == g.number_of_edges()
    kept = set(g.edges)
    assert kept <= set(cands)
    lightest_kept = min(cands[e] for e in kept)
    heaviest_dropped = max(cands[e] for e in set(cands) - kept)
    assert lightest_kept >= heaviest_dropped
    for u, v, d in g.edges(data=True):
        assert d["weight"] == pytest.approx(cands[(u, v)]) and d["n"] == 6
    assert graph_summary(g) == f"{round(n / 3)} of {n} candidate edges kept (heaviest 1/3 of all candidates)"


def test_excluded_self_and_joined_into_member_are_never_candidates():
    gdf = global_importance(with_join_members(demo_like(), JOINS))
    g = importance_graph(gdf, keep_fraction=1.0)  # every candidate kept
    assert set(g.edges) == set(expected_candidates(gdf))
    assert "background" not in g and "none" not in g
    assert not any(u == v for u, v in g.edges)
    assert not any(u == "lung" and v in LOBES for u, v in g.edges)
    assert ("lung", "heart") in g.edges and ("lung", "aorta") in g.edges
    assert g.nodes["lung"]["members"] == ",".join(LOBES) and g.nodes["lung"]["kind"] == "roi"
    assert json.loads(g.graph["joins"]) == {"lung": LOBES}
    # without the join definition (a table that does not record it) lung -> lobe is a candidate again
    plain = importance_graph(global_importance(demo_like()), keep_fraction=1.0)
    assert ("lung", "lung_upper_lobe_left") in plain.edges
    assert plain.graph["candidates"] == g.graph["candidates"] + len(LOBES)
    # an explicit argument overrides the table's record; a join of joins contains its members' members
    nested = importance_graph(gdf, keep_fraction=1.0, joins={"lung": LOBES, "chest": ("lung", "heart")})
    assert not any(u == "chest" for u, _ in nested.edges)  # no chest RoI in the table: no edge at all
    cands = candidate_edges(gdf.assign(roi=gdf["roi"].replace({"nodule": "chest"})),
                            joins={"lung": LOBES, "chest": ("lung", "heart")})
    assert not ((cands["roi"] == "chest") & cands["target"].isin([*LOBES, "heart"])).any()
    assert ((cands["roi"] == "chest") & (cands["target"] == "aorta")).any()


def small():
    """Hand-made global table (part abs): weights of the candidate edges only matter."""
    rows = [
        ("heart", "background", 0.70), ("heart", "heart", 0.40), ("heart", "aorta", 0.20),
        ("heart", "ribs", 0.10), ("heart", "nodule", 0.05), ("heart", "vertebrae", 0.04),
        ("ribs", "background", 0.75), ("ribs", "vertebrae", 0.50), ("ribs", "heart", 0.15), ("ribs", "aorta", 0.05),
        ("aorta", "none", 0.3), ("aorta", "heart", 0.10), ("aorta", "ribs", 0.0), ("aorta", "nodule", np.nan),
    ]
    df = pd.DataFrame(rows, columns=["target", "roi", "mean"])
    df["part"] = "abs"
    return df


def test_fraction_top_k_and_keep_mass_by_hand():
    # candidates, heaviest first (ties by RoI name): vertebrae->ribs .50, aorta->heart .20, heart->ribs .15,
    # heart->aorta .10, ribs->heart .10, aorta->ribs .05, nodule->heart .05, vertebrae->heart .04  (n = 8)
    cands = candidate_edges(small())
    assert list(zip(cands["roi"], cands["target"], strict=True)) == [
        ("vertebrae", "ribs"), ("aorta", "heart"), ("heart", "ribs"), ("heart", "aorta"), ("ribs", "heart"),
        ("aorta", "ribs"), ("nodule", "heart"), ("vertebrae", "heart")]
    edges = lambda **kw: set(importance_graph(small(), **kw).edges)
    assert edges() == {("vertebrae", "ribs"), ("aorta", "heart"), ("heart", "ribs")}  # round(8/3) = 3
    assert edges(keep_fraction=0.5) == edges() | {("heart", "aorta")}  # tie at .10 broken by RoI name
    assert len(edges(keep_fraction=0.01)) == 1  # at least the heaviest
    # top_k: per target its k heaviest
    assert edges(top_k=1) == {("aorta", "heart"), ("vertebrae", "ribs"), ("heart", "aorta")}
    assert edges(top_k=2) == edges(top_k=1) | {("ribs", "heart"), ("heart", "ribs")}
    # keep_mass: shares among a target's candidates. heart: .20/.39 = .513, +.10 -> .769, +.05 -> .897, 1;
    # ribs: .50/.70 = .714, +.15 -> .929, 1; aorta: 1 (the heaviest is always kept)
    assert edges(keep_mass=0.5) == edges(top_k=1)
    assert edges(keep_mass=0.8) == edges(top_k=1) | {("ribs", "heart")}
    assert edges(keep_mass=0.93) == edges(top_k=2) | {("nodule", "heart")}
    g = importance_graph(small(), top_k=2)
    assert (g.graph["rule"], g.graph["top_k"], g.graph["kept"], g.graph["candidates"]) == ("top_k", 2, 5, 8)
    assert graph_summary(g) == "5 of 8 candidate edges kept (top 2 per class)"
    assert graph_summary(importance_graph(small(), keep_mass=0.8)) == \
        "4 of 8 candidate edges kept (cumulative share <= 0.8 per class)"
    # the per-target helper gives the same selections for one target
    heart = {"aorta": 0.20, "ribs": 0.10, "nodule": 0.05, "vertebrae": 0.04}
    assert prune_edges(heart, keep_mass=0.8) == ["aorta", "ribs"]
    assert prune_edges(heart, top_k=3) == ["aorta", "ribs", "nodule"]
    assert prune_edges(heart) == prune_edges(heart, keep_fraction=1 / 3) == ["aorta"]  # round(4/3) = 1
    assert list(select_edges(cands, keep_rule(top_k=1))["roi"]) == ["vertebrae", "aorta", "heart"]


def test_rule_validation():
    for kw in ({"keep_fraction": 0}, {"keep_fraction": 1.5}, {"top_k": 0}, {"top_k": 1.5}, {"keep_mass": -0.1},
               {"keep_mass": 2}, {"keep_mass": float("nan")}, {"top_k": 2, "keep_mass": 0.5}):
        with pytest.raises(Agg2ExpError):
            importance_graph(small(), **kw)
    assert keep_rule() == keep_rule(keep_fraction=1 / 3)


def test_counts_in_graphml_figure_and_outputs(tmp_path):
    local = with_join_members(demo_like(), JOINS)
    g = importance_graph(global_importance(local), top_k=3)
    back = nx.read_graphml(write_graphml(g, tmp_path / "g.graphml"))
    for key in ("rule", "rule_value", "kept", "candidates", "joins", "top_k"):
        assert back.graph[key] == g.graph[key], key
    assert graph_summary(back) == graph_summary(g)
    title = graph_figure(g).axes[0].get_title()
    assert f"{g.graph['kept']} of {g.graph['candidates']} candidate edges kept" in title
    out = tmp_path / "cohort"
    write_global_analysis(local, out, keep_mass=0.5)  # joins taken from the table's members column
    saved = nx.read_graphml(out / "graph.graphml")
    assert saved.graph["rule"] == "keep_mass" and not any(u == "lung" and v in LOBES for u, v in saved.edges)
    html = write_cohort_report(out).read_text()
    assert f"{saved.graph['kept']} of {saved.graph['candidates']} candidate edges kept" in html
    with pytest.raises(Agg2ExpError, match="at most one edge rule"):
        write_global_analysis(local, tmp_path / "bad", top_k=2, keep_fraction=0.5)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- join definitions in tables

def test_members_column_survives_csv_parquet_and_mixed_tables(tmp_path):
    local = with_join_members(demo_like(2), JOINS)
    assert set(local.loc[local["roi"] != "lung", "members"]) == {""}
    back = read_local_table(write_table(local, tmp_path / "a.csv"))
    assert join_members(back) == JOINS
    other = demo_like(2).assign(case=lambda d: "d" + d["case"])  # a table without join info
    mixed = read_local_tables([write_table(other, tmp_path / "b.csv"), tmp_path / "a.csv"])
    assert join_members(mixed) == JOINS and mixed["members"].notna().all()
    assert join_members(other) == {}
    both = read_local_importance([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert both.attrs["joins"] == JOINS
    if has_parquet():
        pq = read_local_tables([write_table(mixed, tmp_path / "m.parquet")])
        assert join_members(pq) == JOINS
    # two tables recording different members: the union (conservative: no edge into any of them)
    a = with_join_members(demo_like(1), {"lung": tuple(LOBES[:2])})
    b = with_join_members(demo_like(1).assign(case="x"), {"lung": tuple(LOBES[2:])})
    assert join_members(pd.concat([a, b])) == JOINS


# ---------------------------------------------------------------- end to end through the CLI

CASE_CLASSES = ["background", "heart", "aorta", "lung_upper_lobe_left", "lung_lower_lobe_left"]
SHAPE = (12, 10, 8)


def make_case(root, name, seed):
    """A case folder like `agg2exp explain` writes (random maps, block labels)."""
    rng = np.random.default_rng(seed)
    d = root / name
    (d / "attributions").mkdir(parents=True)
    affine = np.eye(4)
    pred = np.zeros(SHAPE, np.uint8)
    pred[1:5, 1:5, 1:7] = 1
    pred[6:10, 1:4, 1:7] = 2
    pred[1:6, 6:10, :] = 3
    pred[6:11, 6:10, :] = 4
    save_volume(Volume(rng.normal(0, 100, SHAPE).astype(np.float32), affine), root / f"{name}_ct.nii.gz")
    save_volume(Volume(pred, affine), d / "prediction.nii.gz", dtype=np.uint8)
    (d / "labels.json").write_text(json.dumps({str(i): n for i, n in enumerate(CASE_CLASSES)}))
    for t in CASE_CLASSES[1:]:
        a = rng.standard_normal(SHAPE).astype(np.float32) * (1 + 3 * (pred == CASE_CLASSES.index(t)))
        save_volume(Volume(a, affine), d / "attributions" / f"{t}.nii.gz")
    info = {"method": "integrated_gradients", "image": str(root / f"{name}_ct.nii.gz"), "case": name}
    (d / "attribution_info.json").write_text(json.dumps(info))
    return d


def test_join_survives_aggregate_to_global(tmp_path, capsys):
    tables = []
    for i in range(3):
        case = make_case(tmp_path, f"c{i}", seed=i)
        out = tmp_path / f"c{i}.csv"
        assert main(["aggregate", "--attributions", str(case), "--join",
                     "lung=lung_upper_lobe_left,lung_lower_lobe_left", "--out", str(out)]) == 0
        tables.append(str(out))
    assert "joined RoIs recorded" in capsys.readouterr().out
    assert join_members(read_local_table(tables[0])) == {"lung": ("lung_upper_lobe_left", "lung_lower_lobe_left")}

    assert main(["global", *tables, "--out", str(tmp_path / "all"), "--top-k", "100"]) == 0
    g = nx.read_graphml(tmp_path / "all" / "graph.graphml")
    assert ("lung", "heart") in g.edges and ("lung", "aorta") in g.edges
    assert ("lung", "lung_upper_lobe_left") not in g.edges and ("lung", "lung_lower_lobe_left") not in g.edges
    # 4 targets x (3 other classes + lung), less lung -> its 2 lobes; every candidate kept by top-k 100
    assert g.graph["candidates"] == g.graph["kept"] == 4 * 4 - 2
    assert "14 of 14 candidate edges kept (top 100 per class)" in capsys.readouterr().out

    assert main(["global", *tables, "--out", str(tmp_path / "default")]) == 0
    printed = capsys.readouterr().out
    assert "lung = lung_upper_lobe_left+lung_lower_lobe_left" in printed
    assert "5 of 14 candidate edges kept (heaviest 1/3 of all candidates)" in printed  # round(14/3) = 5
    g = nx.read_graphml(tmp_path / "default" / "graph.graphml")
    assert g.number_of_edges() == 5 and not any(u == "lung" and v.startswith("lung_") for u, v in g.edges)

    # the same tables without the join record: lung -> lobe edges become candidates (not guessed from names)
    plain = read_local_table(tables[0]).drop(columns="members")
    write_table(plain, tmp_path / "plain.csv")
    assert main(["global", str(tmp_path / "plain.csv"), "--out", str(tmp_path / "plain"), "--top-k", "100"]) == 0
    assert ("lung", "lung_upper_lobe_left") in nx.read_graphml(tmp_path / "plain" / "graph.graphml").edges


@pytest.mark.parametrize("args", [
    ["--top-k", "2", "--keep-mass", "0.5"], ["--keep-fraction", "1/3", "--top-k", "3"], ["--keep-fraction", "0"],
    ["--keep-fraction", "abc"], ["--keep-fraction", "1.5"], ["--top-k", "0"], ["--top-k", "2.5"],
    ["--keep-mass", "2"], ["--keep-mass", "-0.1"],
])
def test_invalid_keep_options_give_one_error_line(tmp_path, capsys, args):
    table = write_table(demo_like(2), tmp_path / "t.csv")
    assert main(["global", str(table), "--out", str(tmp_path / "g"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("agg2exp: error:"), err
    assert not (tmp_path / "g").exists()


def test_fraction_option_accepts_fractions(tmp_path, capsys):
    table = write_table(with_join_members(demo_like(2), JOINS), tmp_path / "t.csv")
    assert main(["global", str(table), "--out", str(tmp_path / "g"), "--keep-fraction", "1/4"]) == 0
    g = nx.read_graphml(tmp_path / "g" / "graph.graphml")
    assert g.graph["kept"] == round(g.graph["candidates"] / 4)
    assert "(heaviest 1/4 of all candidates)" in capsys.readouterr().out
