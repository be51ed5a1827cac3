"""The napari side: session, layers, jobs, widgets, reader, writer and sample data.

The only package that imports napari, Qt, magicgui or vispy (importing this package itself does
not: napari is imported when a function needs it).

This package is also the scripted viewer API: everything the dock widgets do, callable from
Python on a viewer, synchronously::

    import napari
    from napari_agg2exp import viewer as agg

    viewer = napari.Viewer()
    agg.open_sample(viewer)                              # phantom CT + labels + pathology
    agg.load_model(viewer)                               # bundled default model (or a folder)
    agg.segment(viewer, "phantom CT")                    # -> Labels layer "phantom CT prediction"
    agg.explain(viewer, "phantom CT", method="vg")       # -> one attribution layer (class axis first)
    table = agg.roi_importance(viewer, "phantom CT", target="heart")   # local importance (SPEC §4)
    agg.show_graph(viewer)                               # graph + distributions in a dock
    napari.run()

The widgets call the same code: every long operation exists as a ``*_job`` function returning a
:class:`~napari_agg2exp.viewer.jobs.Job` (see :mod:`napari_agg2exp.viewer.jobs`).

Layers hold their data in the closest canonical (RAS+) axis order with a scale and translate in mm
(any axis order, flip or spacing renders; files written back keep their own geometry), and the
viewer opens on axial slices with a scale bar in mm (:func:`~napari_agg2exp.viewer.display.radiology_view`).
Each explanation run is one Image layer ``(K, X, Y, Z)``: the class slider picks the map.

Per-viewer state (the loaded model, the selected class, the local importance tables of the
session) lives in a :class:`~napari_agg2exp.viewer.session.Session`, see
:func:`~napari_agg2exp.viewer.session.session`. Layers made here carry their provenance in
``layer.metadata["agg2exp"]`` and the source voxel-to-world affine in ``layer.metadata["affine"]``
(what the NIfTI writer saves).

Only :func:`show_graph` and :func:`open_widget` need Qt (they open dock widgets).

Modules: :mod:`~napari_agg2exp.viewer.session` (per-viewer state),
:mod:`~napari_agg2exp.viewer.layers` (volume <-> layer conversion),
:mod:`~napari_agg2exp.viewer.layer_lookup` (finding the plugin's layers),
:mod:`~napari_agg2exp.viewer.add_layers` (adding sample / result layers),
:mod:`~napari_agg2exp.viewer.display` (colours, selected class, going to a RoI, table views),
:mod:`~napari_agg2exp.viewer.job` (the Job type, watching a job's input layer),
:mod:`~napari_agg2exp.viewer.jobs` (load, segment, explain), :mod:`~napari_agg2exp.viewer.roi_jobs`
(RoI importance, explanation quality), :mod:`~napari_agg2exp.viewer.cohort_graph`
(cohorts and the importance graph), :mod:`~napari_agg2exp.viewer.docks` (opening dock widgets).
Note: the name ``session`` of this package is the function (the module is
``napari_agg2exp.viewer.session`` in ``from ... import``).
"""

from napari_agg2exp.viewer.add_layers import open_sample, write_features
from napari_agg2exp.viewer.cohort_graph import (
    GraphResult,
    cohort,
    cohort_job,
    cohort_table,
    importance_graph,
    load_tables,
    show_graph,
)
from napari_agg2exp.viewer.display import (
    ATTRIBUTION_COLORMAP,
    CT_WINDOWS,
    apply_ct_window,
    default_targets,
    go_to_roi,
    metric_table,
    radiology_view,
    roi_table,
    select_class,
    show_class,
)
from napari_agg2exp.viewer.docks import PLUGIN, WIDGETS, open_widget
from napari_agg2exp.viewer.jobs import (
    Job,
    evaluate,
    evaluate_job,
    explain,
    explain_job,
    explain_parameters,
    finish,
    load_model,
    load_model_job,
    roi_importance,
    roi_importance_job,
    segment,
    segment_job,
)
from napari_agg2exp.viewer.layer_lookup import (
    attribution_layer,
    attribution_layers,
    attribution_maps,
    get_image_layer,
    image_layers,
    layer_kind,
    prediction_layer,
    roi_label_ids,
)
from napari_agg2exp.viewer.layers import layer_affine, layer_volume
from napari_agg2exp.viewer.session import Session, session

__all__ = [
    "ATTRIBUTION_COLORMAP",
    "CT_WINDOWS",
    "PLUGIN",
    "WIDGETS",
    "GraphResult",
    "Job",
    "Session",
    "apply_ct_window",
    "attribution_layer",
    "attribution_layers",
    "attribution_maps",
    "cohort",
    "cohort_job",
    "cohort_table",
    "default_targets",
    "evaluate",
    "evaluate_job",
    "explain",
    "explain_job",
    "explain_parameters",
    "finish",
    "get_image_layer",
    "go_to_roi",
    "image_layers",
    "importance_graph",
    "layer_affine",
    "layer_kind",
    "layer_volume",
    "load_model",
    "load_model_job",
    "load_tables",
    "metric_table",
    "open_sample",
    "open_widget",
    "prediction_layer",
    "radiology_view",
    "roi_importance",
    "roi_importance_job",
    "roi_label_ids",
    "roi_table",
    "segment",
    "segment_job",
    "select_class",
    "session",
    "show_class",
    "show_graph",
    "write_features",
]
