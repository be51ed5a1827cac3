"""napari-agg2exp: explain 3D medical segmentation models (Agg2Exp).

The public API is exported here lazily (``import napari_agg2exp`` stays cheap; a name's module is
imported on first use)::

    import napari_agg2exp as agg2exp

    model = agg2exp.load_model()
    prepared = agg2exp.prepare_case(model, agg2exp.load_volume("ct.nii.gz"))
    explanation = agg2exp.Explainer("ig", n_steps=20).explain(prepared, ["heart"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Agg2ExpError": "napari_agg2exp.errors",
    "Volume": "napari_agg2exp.data.volume",
    "load_volume": "napari_agg2exp.data.volume",
    "save_volume": "napari_agg2exp.data.volume",
    "load_model": "napari_agg2exp.models.loading",
    "SegmentationModel": "napari_agg2exp.models.loading",
    "PreparedCase": "napari_agg2exp.models.prepared",
    "prepare_case": "napari_agg2exp.models.prepared",
    "segment": "napari_agg2exp.models.prepared",
    "METHODS": "napari_agg2exp.attribution.methods",
    "Explainer": "napari_agg2exp.attribution.explainer",
    "Explanation": "napari_agg2exp.attribution.explainer",
    "explain": "napari_agg2exp.attribution.explainer",
    "Saliency": "napari_agg2exp.attribution.gradient",
    "IntegratedGradients": "napari_agg2exp.attribution.gradient",
    "NoiseTunnel": "napari_agg2exp.attribution.noise_tunnel",
    "KernelShap": "napari_agg2exp.attribution.kernel_shap",
    "Occlusion": "napari_agg2exp.attribution.perturbation",
    "FeatureAblation": "napari_agg2exp.attribution.perturbation",
    "ShapleyValueSampling": "napari_agg2exp.attribution.perturbation",
    "SlidingWindowTarget": "napari_agg2exp.attribution.target",
    "local_importance": "napari_agg2exp.importance.local",
    "global_importance": "napari_agg2exp.importance.global_importance",
    "importance_graph": "napari_agg2exp.importance.global_importance",
    "outlier_analysis": "napari_agg2exp.importance.outliers",
    "evaluate_case": "napari_agg2exp.evaluation.evaluate",
    "run_case": "napari_agg2exp.workflows.case",
    "CaseFolder": "napari_agg2exp.workflows.case_folder",
    "load_case": "napari_agg2exp.workflows.case_folder",
    "run_cohort": "napari_agg2exp.workflows.cohort",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from napari_agg2exp.attribution.explainer import Explainer, Explanation, explain
    from napari_agg2exp.attribution.gradient import IntegratedGradients, Saliency
    from napari_agg2exp.attribution.kernel_shap import KernelShap
    from napari_agg2exp.attribution.methods import METHODS
    from napari_agg2exp.attribution.noise_tunnel import NoiseTunnel
    from napari_agg2exp.attribution.perturbation import (
        FeatureAblation,
        Occlusion,
        ShapleyValueSampling,
    )
    from napari_agg2exp.attribution.target import SlidingWindowTarget
    from napari_agg2exp.data.volume import Volume, load_volume, save_volume
    from napari_agg2exp.errors import Agg2ExpError
    from napari_agg2exp.evaluation.evaluate import evaluate_case
    from napari_agg2exp.importance.global_importance import global_importance, importance_graph
    from napari_agg2exp.importance.local import local_importance
    from napari_agg2exp.importance.outliers import outlier_analysis
    from napari_agg2exp.models.loading import SegmentationModel, load_model
    from napari_agg2exp.models.prepared import PreparedCase, prepare_case, segment
    from napari_agg2exp.workflows.case import run_case
    from napari_agg2exp.workflows.case_folder import CaseFolder, load_case
    from napari_agg2exp.workflows.cohort import run_cohort


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
