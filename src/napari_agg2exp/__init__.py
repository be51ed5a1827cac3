"""napari-agg2exp: explain 3D medical segmentation models (Agg2Exp)."""

__version__ = "0.1.0"
