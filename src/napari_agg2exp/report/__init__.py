"""Figures, cohort outputs and self-contained HTML reports (SPEC §5, §8)."""

from napari_agg2exp.report.cohort_outputs import write_global_analysis, write_outlier_analysis
from napari_agg2exp.report.html import write_cohort_report

__all__ = ["write_cohort_report", "write_global_analysis", "write_outlier_analysis"]
