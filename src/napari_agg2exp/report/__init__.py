"""Figures and self-contained HTML reports of a case and of a cohort (SPEC §8)."""

from napari_agg2exp.report.html import write_case_report, write_cohort_report

__all__ = ["write_case_report", "write_cohort_report"]
