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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SwinUNETR, UNet
from safetensors import SafetensorError
from safetensors.torch import load_model as load_st_model
from safetensors.torch import save_model as save_st_model

from napari_agg2exp.data.labels import read_label_names
from napari_agg2exp.data.preprocessing import PreprocessingSpec
from napari_agg2exp.data.volume import check_allocation
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write, atomic_write_text
from napari_agg2exp.models.bundle import is_bundle, load_bundle
from napari_agg2exp.models.inference import window_size_3d
from napari_agg2exp.models.model import (
    SegmentationModel,
    available_devices,
    load_state_dict,
    resolve_device,
)
from napari_agg2exp.models.nnunet import is_nnunet_folder, load_nnunet
from napari_agg2exp.options import did_you_mean

__all__ = [
    "ARCHITECTURES",
    "ModelSpec",
    "SegmentationModel",
    "build_network",
    "check_model_window",
    "check_window_size",
    "window_multiple",
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
        """A spec from its JSON form; each wrong type or value is one :class:`Agg2ExpError` naming the key."""
        if not isinstance(d, dict) or "architecture" not in d or "class_names" not in d:
            raise Agg2ExpError(f"{source} is not a model spec (needs 'architecture' and 'class_names')")
        arch = d["architecture"]
        if not isinstance(arch, str) or arch not in ARCHITECTURES:
            raise Agg2ExpError(
                f"{source}: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
                f"{did_you_mean(arch, ARCHITECTURES) if isinstance(arch, str) else ''}"
            )
        names = d["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
            raise Agg2ExpError(f"{source}: \"class_names\" must be a list of names, got {names!r}")
        names = [str(n) for n in names]
        if len(names) < 2:
            raise Agg2ExpError(f"{source}: a segmentation model needs at least 2 class names, got {names}")
        if len(set(names)) != len(names):
            raise Agg2ExpError(f"{source}: \"class_names\" repeat a name -- give each class its own name")
        arguments = d.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise Agg2ExpError(f"{source}: \"arguments\" must be an object of {arch} keyword arguments "
                               f"({{\"channels\": [16, 32], ...}}), got {type(arguments).__name__}")
        extra = d.get("extra") or {}
        if not isinstance(extra, dict):
            raise Agg2ExpError(f"{source}: \"extra\" must be an object, got {type(extra).__name__}")
        weights = d.get("weights", "weights.safetensors")
        if weights is not None and not isinstance(weights, str):
            raise Agg2ExpError(f"{source}: \"weights\" must be a file name inside the model folder, got "
                               f"{weights!r} -- e.g. \"weights.safetensors\"")
        return cls(
            architecture=arch,
            class_names=names,
            arguments=dict(arguments),
            preprocessing=PreprocessingSpec.from_dict(d.get("preprocessing"), source),
            window_size=_window_from_json(d.get("window_size", (96, 96, 96)), source),
            weights=weights,
            extra=dict(extra),
        )


def _window_from_json(ws: Any, source: str) -> tuple[int, int, int]:
    ws = [ws] * 3 if isinstance(ws, int) and not isinstance(ws, bool) else ws
    if not isinstance(ws, (list, tuple)) or len(ws) != 3 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ws):
        raise Agg2ExpError(f"{source}: \"window_size\" must be 1 or 3 positive integers, got {ws!r}")
    return tuple(int(v) for v in ws)


def _per_axis(value: Any) -> tuple[int, int, int]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * 3


def window_multiple(spec: ModelSpec) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(multiple, minimum)`` per axis of the window sizes the architecture of ``spec`` can take.

    Each down-sampling halves (or divides by its stride) the window, and the decoder must restore the same
    size: UNet / DynUNet need multiples of the product of their strides, SwinUNETR multiples of 32 (MONAI's
    ``_check_input_size``), UNETR multiples of its 16-voxel patches; BasicUNet pads any size of at least 16.
    """
    a = spec.arguments
    one = (1, 1, 1)
    if spec.architecture in ("SwinUNETR", "SwinUNETRv2"):
        return (32, 32, 32), (32, 32, 32)
    if spec.architecture == "UNETR":
        return (16, 16, 16), (16, 16, 16)
    if spec.architecture == "BasicUNet":
        return one, (16, 16, 16)
    if spec.architecture in ("UNet", "DynUNet"):
        default = (2, 2, 2, 2) if spec.architecture == "UNet" else (1, 2, 2, 2)
        mult = np.ones(3, dtype=np.int64)
        for st in a.get("strides", default):
            mult *= np.asarray(_per_axis(st), dtype=np.int64)
        m = tuple(int(v) for v in mult)
        return m, m
    return one, one


def check_window_size(spec: ModelSpec | None, window_size: Sequence[int], n_classes: int = 2) -> None:
    """Refuse a sliding window the network cannot take or the memory cannot hold.

    Args:
        spec: the model's spec (``None`` for formats whose architecture is not known here: memory only).
        window_size: (X, Y, Z) window.
        n_classes: output channels (for the memory estimate).

    Raises:
        Agg2ExpError: naming the valid multiple (and the nearest valid size) or the memory needed.
    """
    ws = tuple(int(v) for v in window_size)
    if spec is not None:
        mult, low = window_multiple(spec)
        if spec.architecture == "UNETR" and "img_size" in spec.arguments \
                and _per_axis(spec.arguments["img_size"]) != ws:
            raise Agg2ExpError(f"window size {ws} differs from the UNETR's img_size {spec.arguments['img_size']} -- "
                               f"UNETR takes only windows of its img_size; use --window-size "
                               f"{' '.join(str(v) for v in _per_axis(spec.arguments['img_size']))}")
        if any(w < lo or w % m for w, m, lo in zip(ws, mult, low)):
            near = tuple(max(lo, int(round(w / m)) * m) for w, m, lo in zip(ws, mult, low))
            need = (f"a multiple of {mult[0]}" if len(set(mult)) == 1 else f"multiples of {mult} per axis") \
                if mult != (1, 1, 1) else f"at least {low[0]}"
            raise Agg2ExpError(f"window size {ws} does not fit the {spec.architecture}: each axis must be {need}"
                               f"{'' if mult == (1, 1, 1) or low == mult else f' and at least {low[0]}'} -- use e.g. "
                               f"--window-size {' '.join(str(v) for v in near)}")
    # one window's input, logits and (at least) as many activations per layer: a lower bound
    check_allocation(float(np.prod(ws, dtype=float)) * 4 * (1 + max(2, n_classes)) * 4,
                     f"a sliding window of {ws}", "use a smaller --window-size")


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """Build the (untrained) network a spec describes; output channels = number of classes."""
    args = dict(spec.arguments)
    n_out = args.pop("out_channels", len(spec.class_names))
    if not isinstance(n_out, int) or n_out != len(spec.class_names):
        raise Agg2ExpError(
            f"the model has {n_out} output channels but {len(spec.class_names)} class names -- "
            "give one name per output channel"
        )
    in_ch = args.pop("in_channels", 1)
    try:  # MONAI's constructors check their own arguments (unknown norm/act, lengths, types)
        return ARCHITECTURES[spec.architecture](in_ch, n_out, spec.window_size, **args)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Agg2ExpError(f"invalid arguments for {spec.architecture} in the model spec: {first[:300]} -- see MONAI's "
                           f"{spec.architecture} for the arguments it takes") from e


def check_model_window(model: SegmentationModel, window_size: Sequence[int] | int | None = None) -> None:
    """:func:`check_window_size` for a loaded model (its spec where it has one; ``None`` = its own window)."""
    ws = model.window_size if window_size is None else window_size_3d(window_size)
    check_window_size(model.spec if isinstance(model.spec, ModelSpec) else None, ws, model.num_classes)


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
    trust_bundle: bool = False,
    tta: bool = False,
    preprocessing: PreprocessingSpec | None = None,
    window_size: tuple[int, int, int] | None = None,
) -> SegmentationModel:
    """Load a model folder, a ``model.json``, or a TorchScript file (with ``label_names``).

    Args:
        model: path; ``None`` = the bundled default model.
        label_names: for TorchScript: a labels JSON (``{"0": "background", ...}``) or a list.
        device: ``auto`` (cuda > mps > cpu) or a torch device name.
        trust_checkpoint: allow pickle checkpoints (arbitrary code!).
        tta: nnU-Net folders: mirroring test-time augmentation (off by default).
        trust_bundle: evaluate a MONAI bundle's Python expressions (arbitrary code!).
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
    if is_nnunet_folder(p):
        return load_nnunet(p, device=dev, trust_checkpoint=trust_checkpoint, tta=tta)
    if is_bundle(p):
        names = None if label_names is None else \
            (list(label_names) if isinstance(label_names, list) else read_label_names(label_names))
        return load_bundle(p, device=device, label_names=names, trust_bundle=trust_bundle,
                           trust_checkpoint=trust_checkpoint, window_size=window_size)
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
        check_window_size(spec, window_size_3d(window_size) if window_size is not None else spec.window_size,
                          len(spec.class_names))
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
                    except (SafetensorError, OSError, ValueError) as e:  # empty, corrupt, oversized header
                        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                        raise Agg2ExpError(f"cannot read weights {wpath} ({first}) -- the file is corrupt, truncated "
                                           "or not safetensors; save the weights again") from e
                else:
                    net.load_state_dict(load_state_dict(wpath, trust_checkpoint))
            except RuntimeError as e:
                first = str(e).splitlines()[0] if str(e) else ""
                raise Agg2ExpError(
                    f"weights {wpath.name} do not fit the {spec.architecture} described in {spec_path.name} ({first[:200]})"
                ) from e
        net = net.to(dev).eval()
        read = [spec_path] + ([wpath] if spec.weights else [])
        return SegmentationModel(
            network=net,
            class_names=list(spec.class_names),
            preprocessing=preprocessing or spec.preprocessing,
            window_size=tuple(window_size or spec.window_size),
            device=dev,
            source=str(p),
            spec=spec,
            files=tuple(str(f) for f in read + ([Path(label_names)] if isinstance(label_names, (str, os.PathLike)) else [])),
        )
    # a single file: TorchScript
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated")
            net = torch.jit.load(str(p), map_location=dev)
    except (RuntimeError, ValueError, OSError) as e:  # torch's reader: not a TorchScript archive
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
        files=(str(p),) + ((str(label_names),) if isinstance(label_names, (str, os.PathLike)) else ()),
    )
