"""Explanation quality (SPEC §6) and model comparison (SPEC §9, appendix D).

- :func:`evaluate_case` scores attribution methods on one scan: faithfulness correlation, average
  sensitivity, effective complexity and the model-parameter randomisation check, with the same random
  subsets, noise and random weights for every method.
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
    METRICS,
    TABLE_COLUMNS,
    MetricInfo,
    Perturbations,
    evaluate_case,
    look_up_methods,
    look_up_metric,
    look_up_metrics,
    make_perturbations,
)
from napari_agg2exp.evaluation.metrics import (
    PAPER_SUBSET_SIZE,
    average_sensitivity,
    clip_subset_size,
    effective_complexity,
    faithfulness_correlation,
    metric_seed,
    normalise_by_max,
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
    "average_sensitivity",
    "clip_subset_size",
    "effective_complexity",
    "faithfulness_correlation",
    "metric_seed",
    "normalise_by_max",
    "random_subsets",
    "randomise_network",
    "rank_correlation",
    "relative_change",
    "score_drops",
    "uniform_noise",
    "METRICS",
    "TABLE_COLUMNS",
    "MetricInfo",
    "Perturbations",
    "evaluate_case",
    "look_up_methods",
    "look_up_metric",
    "look_up_metrics",
    "make_perturbations",
    "summarise",
    "summary_markdown",
]
