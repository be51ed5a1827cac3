"""Agg²Exp importance: voxel attributions aggregated into RoI importance (SPEC §4, §5, §7).

* :mod:`.local` -- local RoI importance of one case (``mass``, ``mean``; parts abs/pos/neg), one pass.
* :mod:`.tables` -- table formats, CSV/Parquet I/O with validation.
* :mod:`.global_importance` -- global importance over a cohort and the importance graph.
* :mod:`.outliers` -- IsolationForest outlier scans and their Spearman correlation with Dice.

Pure: nothing here imports Qt or napari.
"""

from __future__ import annotations

from napari_agg2exp.importance.global_importance import (
    DEFAULT_EXCLUDE,
    global_importance,
    importance_graph,
    prune_edges,
    read_groups,
    write_graphml,
)
from napari_agg2exp.importance.local import PARTS, THORAX_JOINS, local_importance, naive_local_importance, parse_joins
from napari_agg2exp.importance.outliers import (
    OutlierResult,
    outlier_analysis,
    outlier_scores,
    spearman_table,
)
from napari_agg2exp.importance.tables import (
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
    "OutlierResult",
    "global_importance",
    "importance_graph",
    "local_importance",
    "naive_local_importance",
    "outlier_analysis",
    "outlier_scores",
    "spearman_table",
    "parse_joins",
    "prune_edges",
    "read_groups",
    "read_local_table",
    "read_local_tables",
    "read_quality_table",
    "read_table",
    "write_graphml",
    "write_table",
]
