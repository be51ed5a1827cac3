"""Explanation quality (SPEC §6) and model comparison (SPEC §9, appendix D).

- :func:`evaluate_case` scores attribution methods on one scan: faithfulness correlation, average
  sensitivity, effective complexity, the model-parameter randomisation check and the deletion (AOPC) /
  insertion (AUC) curves, with the same random subsets, noise and random weights for every method.
- The metric functions in :mod:`.metrics` are pure and work on per-class maps (K, X, Y, Z).
- The methods' maps are recomputed for a perturbed input or a randomised network by
  :meth:`~napari_agg2exp.attribution.Explainer.attribute`, with the clean masks fixed.
- :mod:`.compare`: per-class Dice of several models on a cohort, one-way ANOVA.
"""

from napari_agg2exp.evaluation.compare import (
    OVERALL,
    anova_table,
    case_dice,
    comparison_markdown,
    dice_table,
    find_labelled_cases,
    mean_dice_table,
    shared_classes,
)
from napari_agg2exp.evaluation.evaluate import (
    CURVE_COLUMNS,
    CURVE_METRICS,
    METRICS,
    TABLE_COLUMNS,
    MetricInfo,
    Perturbations,
    curve_table,
    evaluate_case,
    look_up_methods,
    look_up_metric,
    look_up_metrics,
    make_perturbations,
)
from napari_agg2exp.evaluation.metrics import (
    PAPER_SUBSET_SIZE,
    PerturbationCurves,
    attribution_ranking,
    average_sensitivity,
    clip_subset_size,
    curve_counts,
    curve_step_size,
    deletion_aopc,
    effective_complexity,
    faithfulness_correlation,
    insertion_auc,
    metric_seed,
    normalise_by_max,
    perturbation_curves,
    random_subsets,
    randomise_network,
    rank_correlation,
    relative_change,
    score_drops,
    uniform_noise,
)
from napari_agg2exp.evaluation.summary import summarise, summary_markdown

__all__ = [
    "OVERALL",
    "anova_table",
    "case_dice",
    "comparison_markdown",
    "dice_table",
    "find_labelled_cases",
    "mean_dice_table",
    "shared_classes",
    "PAPER_SUBSET_SIZE",
    "PerturbationCurves",
    "attribution_ranking",
    "average_sensitivity",
    "clip_subset_size",
    "curve_counts",
    "curve_step_size",
    "deletion_aopc",
    "effective_complexity",
    "faithfulness_correlation",
    "insertion_auc",
    "metric_seed",
    "normalise_by_max",
    "perturbation_curves",
    "random_subsets",
    "randomise_network",
    "rank_correlation",
    "relative_change",
    "score_drops",
    "uniform_noise",
    "CURVE_COLUMNS",
    "CURVE_METRICS",
    "METRICS",
    "TABLE_COLUMNS",
    "MetricInfo",
    "Perturbations",
    "curve_table",
    "evaluate_case",
    "look_up_methods",
    "look_up_metric",
    "look_up_metrics",
    "make_perturbations",
    "summarise",
    "summary_markdown",
]
