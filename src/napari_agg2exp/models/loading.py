"""Segmentation models: a folder with a spec file + weights, or a TorchScript file + label names.

A model folder holds ``model.json``::

    {"format": "agg2exp-model/1",
     "architecture": "UNet",                       # see ARCHITECTURES
     "arguments": {"channels": [16, 32, 64], "strides": [2, 2]},
     "class_names": ["background", "aorta", ...],
     "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "a_min": -1024, ...},
     "window_size": [96, 96, 96],
     "weights": "weights.safetensors"}

Weights are safetensors, or a torch checkpoint loaded with ``weights_only=True``; a checkpoint
that needs pickle is refused unless the caller trusts it (``trust_checkpoint=True``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SwinUNETR, UNet
from safetensors.torch import load_model as load_st_model
from safetensors.torch import save_model as save_st_model

from napari_agg2exp.data.labels import read_label_names
from napari_agg2exp.data.preprocessing import PreprocessingSpec
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write, atomic_write_text
from napari_agg2exp.models.model import SegmentationModel, available_devices, load_state_dict, resolve_device
from napari_agg2exp.options import did_you_mean

__all__ = [
    "ARCHITECTURES",
    "ModelSpec",
    "SegmentationModel",
    "build_network",
    "load_model",
    "save_model",
    "resolve_device",
    "available_devices",
    "bundled_model_path",
]

SPEC_FILE = "model.json"
FORMAT = "agg2exp-model/1"


def _swin(v2: bool):
    def build(in_channels: int, out_channels: int, window_size, **kw):
        kw.setdefault("feature_size", 24)
        return SwinUNETR(in_channels=in_channels, out_channels=out_channels, use_v2=v2, **kw)

    return build


def _unetr(in_channels: int, out_channels: int, window_size, **kw):
    kw.setdefault("img_size", tuple(window_size))
    return UNETR(in_channels=in_channels, out_channels=out_channels, **kw)


def _unet(in_channels: int, out_channels: int, window_size, **kw):
    kw.setdefault("spatial_dims", 3)
    kw.setdefault("channels", (16, 32, 64, 128, 256))
    kw.setdefault("strides", (2, 2, 2, 2))
    kw.setdefault("num_res_units", 2)
    return UNet(in_channels=in_channels, out_channels=out_channels, **kw)


def _basic_unet(in_channels: int, out_channels: int, window_size, **kw):
    kw.setdefault("spatial_dims", 3)
    return BasicUNet(in_channels=in_channels, out_channels=out_channels, **kw)


def _dynunet(in_channels: int, out_channels: int, window_size, **kw):
    kw.setdefault("spatial_dims", 3)
    kw.setdefault("kernel_size", [3, 3, 3, 3])
    kw.setdefault("strides", [1, 2, 2, 2])
    kw.setdefault("upsample_kernel_size", list(kw["strides"])[1:])
    return DynUNet(in_channels=in_channels, out_channels=out_channels, **kw)


#: Architecture name -> builder(in_channels, out_channels, window_size, **arguments).
ARCHITECTURES: dict[str, Callable[..., Any]] = {
    "SwinUNETR": _swin(False),
    "SwinUNETRv2": _swin(True),
    "UNETR": _unetr,
    "UNet": _unet,
    "BasicUNet": _basic_unet,
    "DynUNet": _dynunet,
}


@dataclass
class ModelSpec:
    """What is needed to rebuild a network and use it (stored as ``model.json``)."""

    architecture: str
    class_names: list[str]
    arguments: dict[str, Any] = field(default_factory=dict)
    preprocessing: PreprocessingSpec = field(default_factory=PreprocessingSpec)
    window_size: tuple[int, int, int] = (96, 96, 96)
    weights: str | None = "weights.safetensors"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "architecture": self.architecture,
            "arguments": self.arguments,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "window_size": list(self.window_size),
            "weights": self.weights,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model.json") -> "ModelSpec":
        if not isinstance(d, dict) or "architecture" not in d or "class_names" not in d:
            raise Agg2ExpError(f"{source} is not a model spec (needs 'architecture' and 'class_names')")
        arch = d["architecture"]
        if arch not in ARCHITECTURES:
            raise Agg2ExpError(
                f"{source}: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}{did_you_mean(arch, ARCHITECTURES)}"
            )
        ws = d.get("window_size", (96, 96, 96))
        ws = (int(ws),) * 3 if isinstance(ws, (int, float)) else tuple(int(v) for v in ws)
        names = [str(n) for n in d["class_names"]]
        if len(names) < 2:
            raise Agg2ExpError(f"{source}: a segmentation model needs at least 2 class names, got {names}")
        return cls(
            architecture=arch,
            class_names=names,
            arguments=dict(d.get("arguments") or {}),
            preprocessing=PreprocessingSpec.from_dict(d.get("preprocessing")),
            window_size=ws,
            weights=d.get("weights", "weights.safetensors"),
            extra=dict(d.get("extra") or {}),
        )


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """Build the (untrained) network a spec describes; output channels = number of classes."""
    args = dict(spec.arguments)
    n_out = args.pop("out_channels", len(spec.class_names))
    if n_out != len(spec.class_names):
        raise Agg2ExpError(
            f"the model has {n_out} output channels but {len(spec.class_names)} class names -- "
            "give one name per output channel"
        )
    in_ch = args.pop("in_channels", 1)
    try:
        return ARCHITECTURES[spec.architecture](in_ch, n_out, spec.window_size, **args)
    except TypeError as e:
        raise Agg2ExpError(f"invalid arguments for {spec.architecture}: {e}") from e


def bundled_model_path() -> Path:
    return Path(__file__).resolve().parents[1] / "bundled" / "default_model"


def save_model(network: torch.nn.Module, spec: ModelSpec, out_dir: str | os.PathLike,
               extra_files: dict[str, str] | None = None) -> Path:
    """Save a model folder (``model.json`` + ``weights.safetensors``); each file is written atomically.

    Other files in ``out_dir`` are left alone (training keeps ``last/`` and its state there).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec.weights = "weights.safetensors"
    # safetensors' save_model drops aliased tensors (DynUNet shares modules between attributes)
    atomic_write(out / spec.weights, lambda tmp: save_st_model(network, str(tmp)))

    for name, text in {**(extra_files or {}), SPEC_FILE: json.dumps(spec.to_dict(), indent=2) + "\n"}.items():
        atomic_write_text(out / name, text)
    return out


def load_model(
    model: str | os.PathLike | None = None,
    *,
    label_names: str | os.PathLike | list[str] | None = None,
    device: str | None = "auto",
    trust_checkpoint: bool = False,
    preprocessing: PreprocessingSpec | None = None,
    window_size: tuple[int, int, int] | None = None,
) -> SegmentationModel:
    """Load a model folder, a ``model.json``, or a TorchScript file (with ``label_names``).

    Args:
        model: path; ``None`` = the bundled default model.
        label_names: for TorchScript: a labels JSON (``{"0": "background", ...}``) or a list.
        device: ``auto`` (cuda > mps > cpu) or a torch device name.
        trust_checkpoint: allow pickle checkpoints (arbitrary code!).
        preprocessing, window_size: override the spec's (TorchScript defaults: SPEC §9 CT, 96³).

    Raises:
        Agg2ExpError: not a model, unreadable weights, labels count != outputs, pickle refused.
    """
    dev = resolve_device(device)
    p = Path(model) if model is not None else bundled_model_path()
    if not p.exists():
        raise Agg2ExpError(f"model not found: {p} -- give a model folder (with {SPEC_FILE}) or a TorchScript file")
    # other model formats are recognised by their files: MONAI bundle (configs/metadata.json),
    # nnU-Net v2 result folder (dataset.json + plans.json) -- dispatch here
    spec_path = p / SPEC_FILE if p.is_dir() else (p if p.name.endswith(".json") else None)
    if spec_path is not None:
        if not spec_path.exists():
            raise Agg2ExpError(f"{p} is not a model folder: {SPEC_FILE} is missing")
        try:
            raw = json.loads(spec_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Agg2ExpError(f"{spec_path} is not valid JSON ({e}) -- it is not a model spec") from e
        spec = ModelSpec.from_dict(raw, str(spec_path))
        if label_names is not None:
            names = read_label_names(label_names) if not isinstance(label_names, list) else list(label_names)
            if len(names) != len(spec.class_names):
                raise Agg2ExpError(
                    f"labels file has {len(names)} names but the model has {len(spec.class_names)} outputs -- "
                    "give one name per output channel"
                )
            spec.class_names = names
        net = build_network(spec)
        if spec.weights:
            if not isinstance(spec.weights, str) or Path(spec.weights).is_absolute() or ".." in Path(spec.weights).parts:
                raise Agg2ExpError(f"{spec_path.name}: \"weights\" must be a file name inside the model folder, got "
                                   f"{spec.weights!r} -- put the weights next to {spec_path.name}")
            wpath = spec_path.parent / spec.weights
            if not wpath.exists():
                raise Agg2ExpError(f"weights file {wpath} named in {spec_path.name} is missing")
            try:
                if wpath.suffix == ".safetensors":
                    try:
                        load_st_model(net, str(wpath), strict=True, device="cpu")
                    except (OSError, ValueError) as e:  # not a safetensors file
                        raise Agg2ExpError(f"cannot read weights {wpath} ({e}) -- the file is corrupt or not safetensors") from e
                else:
                    net.load_state_dict(load_state_dict(wpath, trust_checkpoint))
            except RuntimeError as e:
                first = str(e).splitlines()[0] if str(e) else ""
                raise Agg2ExpError(
                    f"weights {wpath.name} do not fit the {spec.architecture} described in {spec_path.name} ({first[:200]})"
                ) from e
        net = net.to(dev).eval()
        return SegmentationModel(
            network=net,
            class_names=list(spec.class_names),
            preprocessing=preprocessing or spec.preprocessing,
            window_size=tuple(window_size or spec.window_size),
            device=dev,
            source=str(p),
            spec=spec,
        )
    # a single file: TorchScript
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated")
            net = torch.jit.load(str(p), map_location=dev)
    except Exception as e:
        if p.suffix in (".pt", ".pth", ".ckpt", ".safetensors"):
            raise Agg2ExpError(
                f"{p} is not a TorchScript model -- a plain checkpoint needs a model folder with {SPEC_FILE} "
                "describing the architecture"
            ) from e
        raise Agg2ExpError(f"{p} is not a model (neither a model folder nor a TorchScript file)") from e
    if label_names is None:
        raise Agg2ExpError(f"TorchScript model {p} needs --label-names FILE ({{\"0\": \"background\", ...}})")
    names = read_label_names(label_names) if not isinstance(label_names, list) else list(label_names)
    net.eval()
    return SegmentationModel(
        network=net,
        class_names=names,
        preprocessing=preprocessing or PreprocessingSpec(),
        window_size=tuple(window_size or (96, 96, 96)),
        device=dev,
        source=str(p),
        spec=None,
    )
