"""napari dock widgets of napari-agg2exp: thin Qt callers of :mod:`napari_agg2exp.viewer`.

===================  ==========================================================================
widget               does
===================  ==========================================================================
Agg2Exp              the main panel: the six sections below as tabs of one compact dock
Results              the results dock: RoI table + bar chart, graph + distribution, metrics
Model                load the bundled default model, a model folder, or TorchScript + labels
Segment              image layer -> prediction Labels layer (class names/colours in features)
Explain              attribution maps per class (method + parameters from the registry)
RoI importance       table + bar chart of local RoI importance, painted RoIs, go to a RoI
Cohort & graph       cohort tables -> importance graph + distributions; click a node
Evaluate             explanation-quality metrics of the current scan
===================  ==========================================================================

The sections are also single docks (secondary entries); plots and tables always go to the viewer's
one results dock. Long runs go to napari thread workers (progress in the activity dock, Cancel button); layers are
only added when a run has returned. Widgets of one viewer share a
:class:`~napari_agg2exp.viewer.session.Session` (model, selected class, tables).
Widget classes are imported from their modules (``napari.yaml`` names them), so importing this
package does not import Qt.
"""

import importlib

__all__ = [
    "Agg2ExpPanel",
    "CohortGraphWidget",
    "EvaluateWidget",
    "ExplainWidget",
    "ModelWidget",
    "ResultsWidget",
    "RoiImportanceWidget",
    "SegmentWidget",
]

_MODULES = {
    "Agg2ExpPanel": ".panel",
    "ResultsWidget": ".results",
    "ModelWidget": ".model",
    "SegmentWidget": ".segment",
    "ExplainWidget": ".explain",
    "RoiImportanceWidget": ".roi",
    "CohortGraphWidget": ".cohort",
    "EvaluateWidget": ".evaluate",
}


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
