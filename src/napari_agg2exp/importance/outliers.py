"""Outlier scans over local RoI importance (SPEC §7, appendix C.1).

Per target label ``l``, a case's feature vector is ``(mass(l <- R))_R`` over all RoIs of the
tables (``abs`` part by default; a RoI missing for a case, or a missing mass, counts as 0). An
``IsolationForest(n_estimators=100, random_state=seed)`` is fitted on the training cohort and scores
the test cohort with ``decision_function`` (higher = more normal; ``outlier`` is
``predict == -1``, i.e. a negative score). The Spearman correlation between score and the case's
Dice for ``l`` is the paper's appendix Table 1: a positive rho means the cases the model treats
unusually are the ones it segments worse.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.ensemble import IsolationForest

from napari_agg2exp.data.labels import THORAX_LABELS
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.importance.local import look_up_part
from napari_agg2exp.importance.tables import (
    LOCAL_COLUMNS,
    QUALITY_COLUMNS,
    SCORES_COLUMNS,
    SPEARMAN_COLUMNS,
    validate_columns,
)

__all__ = [
    "OutlierResult",
    "mass_features",
    "outlier_analysis",
    "outlier_scores",
    "spearman_table",
]


@dataclass
class OutlierResult:
    """Outputs of :func:`outlier_analysis`.

    Attributes:
        scores: ``case,target,score,outlier`` for the test cases.
        spearman: ``target,rho,p,n``.
        skipped: target -> why it was not scored.
    """

    scores: pd.DataFrame
    spearman: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)


def mass_features(local_df: pd.DataFrame, target: str, part: str = "abs",
                  rois: Sequence[str] | None = None) -> pd.DataFrame:
    """Feature matrix of one target: cases (rows) × RoIs (columns) of ``mass``, missing = 0.

    Args:
        local_df: local importance table.
        target: the target class.
        part: which part.
        rois: columns to produce (default: the RoIs present, sorted).
    """
    df = local_df[(local_df["target"] == target) & (local_df["part"] == part)]
    table = df.pivot_table(index="case", columns="roi", values="mass", aggfunc="first", dropna=False)
    table = table.reindex(columns=sorted(table.columns) if rois is None else list(rois))
    return table.astype(float).fillna(0.0)


def _target_order(names) -> list[str]:
    rank = {n: i for i, n in enumerate(THORAX_LABELS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def outlier_scores(train_df: pd.DataFrame, test_df: pd.DataFrame, *, part: str = "abs", seed: int = 0,
                   n_estimators: int = 100, targets: Sequence[str] | None = None
                   ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Fit one IsolationForest per target on ``train_df`` and score ``test_df``.

    Args:
        train_df: local importance of the training cohort.
        test_df: local importance of the cohort to scan.
        part: which part's masses form the features.
        seed: ``random_state`` of the forests (results are deterministic for a seed).
        n_estimators: trees per forest.
        targets: targets to scan (default: all targets in both tables).

    Returns:
        (``case,target,score,outlier`` table, {skipped target: reason}).

    Raises:
        Agg2ExpError: missing columns, no row for ``part``, or no target common to both cohorts.
    """
    part = look_up_part(part)
    for name, df in (("training", train_df), ("test", test_df)):
        validate_columns(df, LOCAL_COLUMNS, f"({name} cohort)", "local importance table")
        if not (df["part"] == part).any():
            raise Agg2ExpError(f"the {name} local importance table has no row with part {part!r} -- parts present: "
                               f"{sorted(df['part'].unique())}")
    train_t = set(train_df.loc[train_df["part"] == part, "target"])
    test_t = set(test_df.loc[test_df["part"] == part, "target"])
    wanted = set(targets) if targets is not None else test_t
    skipped = {t: "not in the training cohort" for t in sorted(wanted - train_t)}
    skipped.update({t: "not in the test cohort" for t in sorted(wanted - test_t)})
    common = wanted & train_t & test_t
    if not common:
        raise Agg2ExpError(
            f"the training and test tables have no target in common (training: {sorted(train_t)[:8]}, test: "
            f"{sorted(test_t)[:8]}) -- both cohorts must be explained for the same classes"
        )
    frames = []
    for target in _target_order(common):
        rois = sorted(set(train_df.loc[(train_df["target"] == target) & (train_df["part"] == part), "roi"])
                      | set(test_df.loc[(test_df["target"] == target) & (test_df["part"] == part), "roi"]))
        x_train = mass_features(train_df, target, part, rois)
        x_test = mass_features(test_df, target, part, rois)
        if len(x_train) < 2:
            skipped[target] = f"only {len(x_train)} training case(s); at least 2 are needed"
            continue
        forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
        forest.fit(x_train.to_numpy())
        score = forest.decision_function(x_test.to_numpy())
        outlier = forest.predict(x_test.to_numpy()) == -1
        frames.append(pd.DataFrame({"case": x_test.index.astype(str), "target": target,
                                    "score": score.astype(float), "outlier": outlier}))
    if not frames:
        raise Agg2ExpError("no target could be scanned: " + "; ".join(f"{t}: {r}" for t, r in skipped.items()))
    return pd.concat(frames, ignore_index=True)[list(SCORES_COLUMNS)], skipped


def spearman_table(scores: pd.DataFrame, quality: pd.DataFrame, *, min_cases: int = 3) -> pd.DataFrame:
    """Spearman correlation between outlier score and Dice, per target.

    Args:
        scores: ``case,target,score,outlier``.
        quality: ``case,class,dice,iou`` (``class`` matches ``target``).
        min_cases: fewer cases with both a score and a Dice give a missing rho and p.

    Returns:
        ``target,rho,p,n`` (``n`` = cases with a score and a Dice).

    Raises:
        Agg2ExpError: missing columns, or scored cases absent from the quality table.
    """
    validate_columns(scores, SCORES_COLUMNS, "(data frame)", "outlier scores table")
    validate_columns(quality, QUALITY_COLUMNS, "(data frame)", "quality table")
    missing = sorted(set(scores["case"].astype(str)) - set(quality["case"].astype(str)))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise Agg2ExpError(f"the quality table lacks case(s) {', '.join(missing[:5])}{more} of the test cohort -- "
                           "give the quality (Dice) table of the test cases")
    q = quality[["case", "class", "dice"]].rename(columns={"class": "target"}).copy()
    q["case"] = q["case"].astype(str)
    q["dice"] = pd.to_numeric(q["dice"], errors="coerce")
    q = q.drop_duplicates(["case", "target"])
    merged = scores.assign(case=scores["case"].astype(str)).merge(q, on=["case", "target"], how="left")
    rows = []
    for target in pd.unique(scores["target"]):
        m = merged[(merged["target"] == target) & merged["dice"].notna() & merged["score"].notna()]
        rho = p = np.nan
        if len(m) >= min_cases:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
                res = spearmanr(m["score"], m["dice"])
            rho, p = float(res.statistic), float(res.pvalue)
        rows.append({"target": target, "rho": rho, "p": p, "n": len(m)})
    return pd.DataFrame(rows, columns=list(SPEARMAN_COLUMNS))


def outlier_analysis(train_df: pd.DataFrame, test_df: pd.DataFrame, quality: pd.DataFrame, *, seed: int = 0,
                     part: str = "abs", n_estimators: int = 100) -> OutlierResult:
    """Scores and Spearman table of SPEC §7 (see :func:`outlier_scores`, :func:`spearman_table`)."""
    validate_columns(quality, QUALITY_COLUMNS, "(data frame)", "quality table")
    scores, skipped = outlier_scores(train_df, test_df, part=part, seed=seed, n_estimators=n_estimators)
    return OutlierResult(scores, spearman_table(scores, quality), skipped)
