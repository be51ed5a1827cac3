"""Segmentation models: specs and loading, sliding-window inference, training."""

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

__all__ = [
    "ARCHITECTURES",
    "ModelSpec",
    "SegmentationModel",
    "available_devices",
    "build_network",
    "bundled_model_path",
    "load_model",
    "resolve_device",
    "save_model",
]
