"""Builders of MONAI bundle folders mirroring the model zoo's, with small random weights.

``write_bundle("swin_unetr_btcv", out)`` mirrors ``swin_unetr_btcv_segmentation`` (SwinUNETR, 14
classes, 1.5 x 1.5 x 2.0 mm, HU -175..250 -> 0..1, overlap 0.5, written for MONAI 1.4 with the
``img_size`` argument MONAI 1.5 removed); ``write_bundle("wholebody_ct", out)`` mirrors
``wholeBody_ct_segmentation`` (SegResNet, 105 classes, 1.5 mm chosen by a conditional ``$``
expression on ``displayable_configs``, NormalizeIntensity(nonzero) + ScaleIntensity(-1..1), gaussian
blending, overlap 0.25, replicate padding). The configs keep the zoo's other sections (imports,
``$torch.device(...)``, datalist, evaluator, post-processing with ``Invertd``) as they are.

Used by ``tests/test_bundle.py`` and, through ``sys.path``, by ``benchmarks/bench_scale.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["KINDS", "bundle_network", "write_bundle"]

KINDS = ("swin_unetr_btcv", "wholebody_ct")

SWIN_CLASSES = ["background", "spleen", "Right Kidney", "Left Kideny", "Gallbladder", "Esophagus", "Liver", "Stomach",
                "Aorta", "IVC", "Portal and Splenic Veins", "Pancreas", "Right adrenal gland", "Left adrenal gland"]
WHOLEBODY_FIRST = ["background", "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta",
                   "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
                   "adrenal_gland_left"]
WHOLEBODY_CLASSES = WHOLEBODY_FIRST + [f"structure_{i}" for i in range(len(WHOLEBODY_FIRST), 105)]


def _metadata(names: list[str], roi: list[int], version: str) -> dict:
    cdef = {str(i): n for i, n in enumerate(names)}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "monai_version": "1.4.0",
        "pytorch_version": "2.4.0",
        "name": "test bundle",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": roi, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(names),
                                 "spatial_shape": roi, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": cdef}},
        },
    }


def _common(network_def: dict, preprocessing: list, inferer: dict, postprocessing: list) -> dict:
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "output_postfix": "trans",
        "separate_folder": True,
        "load_pretrain": True,
        "dataset_dir": "/workspace/data/RawData/",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing + [
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
             "separate_folder": "@separate_folder"}]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)",
                       "$@checkpointloader(@evaluator) if @load_pretrain else None"],
        "run": ["$@evaluator.run()"],
    }


def _swin(feature_size: int, roi: list[int]) -> tuple[dict, list[str]]:
    network_def = {"_target_": "SwinUNETR", "spatial_dims": 3, "img_size": roi, "in_channels": 1,
                   "out_channels": 14, "feature_size": feature_size, "use_checkpoint": False}
    pre = [
        {"_target_": "LoadImaged", "keys": "@image_key"},  # the zoo's has "reader": "ITKReader" (itk not needed here)
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -175, "a_max": 250, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "@image_key"},
    ]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": 4, "overlap": 0.5}
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    return _common(network_def, pre, inferer, post), SWIN_CLASSES


def _wholebody(init_filters: int, roi: list[int]) -> tuple[dict, list[str]]:
    network_def = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 105,
                   "init_filters": init_filters, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                   "dropout_prob": 0.2}
    pre = [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureTyped", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
        {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
    ]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": "@displayable_configs#sw_batch_size",
               "overlap": "@displayable_configs#sw_overlap", "padding_mode": "replicate", "mode": "gaussian",
               "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"}
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
             "nearest_interp": True, "to_tensor": True}]
    cfg = _common(network_def, pre, inferer, post)
    cfg = {"displayable_configs": {"highres": True, "sw_overlap": 0.25, "sw_batch_size": 1}, **cfg}
    cfg["pixdim"] = "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]"
    cfg["modelname"] = "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'"
    cfg["checkpointloader"]["load_path"] = "$@bundle_root + '/models/' + @modelname"
    return cfg, WHOLEBODY_CLASSES


def bundle_network(config: dict) -> torch.nn.Module:
    """The network of a written config, built directly with MONAI (old-MONAI ``img_size`` left out)."""
    from monai.networks import nets

    args = {k: v for k, v in config["network_def"].items() if k != "_target_" and k != "img_size"}
    return getattr(nets, config["network_def"]["_target_"])(**args)


def write_bundle(kind: str, out_dir: str | Path, *, width: int | None = None, roi_size: int | list[int] = 96, seed: int = 0,
                 last_layer_scale: float = 1.0, torchscript: bool = False,
                 edit: Any = None) -> Path:
    """Write a bundle folder with random weights and return its path.

    Args:
        kind: ``"swin_unetr_btcv"`` or ``"wholebody_ct"``.
        out_dir: the bundle folder to create.
        width: SwinUNETR ``feature_size`` (default 48, a multiple of 12) or SegResNet ``init_filters``
            (default 32).
        roi_size: the inferer's window, 1 or 3 ints (96 in the zoo; SwinUNETR needs multiples of 32 and
            at least 64 on one axis).
        seed: seed of the random weights.
        last_layer_scale: factor on the last convolution's weights and bias (random weights predict few
            classes; a larger factor spreads the argmax over more of them).
        torchscript: write ``models/model.ts`` (traced) instead of ``models/model.pt``.
        edit: optional ``callable(config) -> None`` changing the inference config before it is written.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    roi = [int(v) for v in roi_size] if isinstance(roi_size, (list, tuple)) else [int(roi_size)] * 3
    if kind == "swin_unetr_btcv":
        cfg, names = _swin(48 if width is None else int(width), roi)
    else:
        cfg, names = _wholebody(32 if width is None else int(width), roi)
    out = Path(out_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = bundle_network(cfg).eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        last.weight.mul_(last_layer_scale)
        if last.bias is not None:
            last.bias.mul_(last_layer_scale)
    if edit is not None:
        cfg = copy.deepcopy(cfg)
        edit(cfg)
    (out / "configs" / "metadata.json").write_text(json.dumps(_metadata(names, roi, "0.0.1"), indent=4))
    (out / "configs" / "inference.json").write_text(json.dumps(cfg, indent=4))
    if torchscript:
        with torch.no_grad():
            traced = torch.jit.trace(net, torch.zeros((1, 1, *roi)))
        traced.save(str(out / "models" / "model.ts"))
    else:
        torch.save(net.state_dict(), out / "models" / "model.pt")
    return out
