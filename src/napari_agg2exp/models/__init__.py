"""Segmentation models: specs and loading, sliding-window inference, training."""

from napari_agg2exp.models.bundle import is_bundle, load_bundle
from napari_agg2exp.models.loading import (
    ARCHITECTURES,
    ModelSpec,
    SegmentationModel,
    available_devices,
    build_network,
    bundled_model_path,
    load_model,
    resolve_device,
    save_model,
)
from napari_agg2exp.models.nnunet import load_nnunet

__all__ = [
    "ARCHITECTURES",
    "ModelSpec",
    "SegmentationModel",
    "available_devices",
    "build_network",
    "is_bundle",
    "load_bundle",
    "bundled_model_path",
    "load_model",
    "load_nnunet",
    "resolve_device",
    "save_model",
]
