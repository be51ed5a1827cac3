"""Agg²Exp analysis: voxel attributions aggregated into RoI importance (SPEC §4, §5, §7, §8).

* :mod:`.local` -- local RoI importance of one case (``mass``, ``mean``; parts abs/pos/neg).
* :mod:`.case` -- reading an explained case folder; its local importance table.
* :mod:`.tables` -- table formats, CSV/Parquet I/O with validation.
* :mod:`.global_` -- global importance over a cohort and the importance graph.
* :mod:`.outliers` -- IsolationForest outlier scans and their Spearman correlation with Dice.
* :mod:`.figures`, :mod:`.plots` -- paper-style case figures and cohort figures.
* :mod:`.report` -- self-contained HTML reports.

Nothing here imports Qt or napari; matplotlib, networkx and scikit-learn are imported lazily.
"""

from __future__ import annotations

from .case import (
    CaseData,
    case_local_importance,
    load_case,
    resample_labels,
    write_local_importance,
)
from .global_ import (
    DEFAULT_EXCLUDE,
    global_importance,
    importance_graph,
    prune_edges,
    read_groups,
    write_global_analysis,
    write_graphml,
)
from .local import (
    PARTS,
    THORAX_JOINS,
    local_importance,
    naive_local_importance,
    parse_joins,
)
from .outliers import (
    OutlierResult,
    outlier_analysis,
    outlier_scores,
    spearman_table,
    write_outlier_analysis,
)
from .report import write_case_report, write_cohort_report
from .tables import (
    GLOBAL_COLUMNS,
    LOCAL_COLUMNS,
    QUALITY_COLUMNS,
    SCORES_COLUMNS,
    SPEARMAN_COLUMNS,
    read_local_table,
    read_local_tables,
    read_quality_table,
    read_table,
    write_table,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "GLOBAL_COLUMNS",
    "LOCAL_COLUMNS",
    "PARTS",
    "QUALITY_COLUMNS",
    "SCORES_COLUMNS",
    "SPEARMAN_COLUMNS",
    "THORAX_JOINS",
    "CaseData",
    "OutlierResult",
    "case_local_importance",
    "global_importance",
    "importance_graph",
    "load_case",
    "local_importance",
    "naive_local_importance",
    "outlier_analysis",
    "outlier_scores",
    "parse_joins",
    "prune_edges",
    "read_groups",
    "read_local_table",
    "read_local_tables",
    "read_quality_table",
    "read_table",
    "resample_labels",
    "spearman_table",
    "write_case_report",
    "write_cohort_report",
    "write_global_analysis",
    "write_graphml",
    "write_local_importance",
    "write_outlier_analysis",
    "write_table",
]
