"""The loaded model every step uses (:class:`SegmentationModel`), devices, and safe checkpoint reading.

The model formats (model folder, TorchScript, MONAI bundle, nnU-Net result folder) each build one
:class:`SegmentationModel`; this module is what they share.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.options import did_you_mean

__all__ = ["SegmentationModel", "available_devices", "resolve_device", "load_state_dict"]


def available_devices() -> list[str]:
    """Devices that exist on this machine, best first (for device pickers)."""
    devs = []
    if torch.cuda.is_available():
        devs += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    devs.append("cpu")
    return devs


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` -> cuda > mps > cpu; a named device that does not exist falls back to CPU with a warning."""
    if device is None or str(device) == "auto":
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(str(device))
    except RuntimeError as e:
        raise Agg2ExpError(f"unknown device {device!r} -- use auto, cpu, cuda, cuda:N or mps") from e
    ok = dev.type == "cpu"
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
    elif dev.type == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not ok:
        warnings.warn(f"device {device!r} is not available here; falling back to CPU", stacklevel=2)
        return torch.device("cpu")
    return dev


@dataclass
class SegmentationModel:
    """A network ready for inference and attribution.

    Attributes:
        network: the torch module, in eval mode, on ``device``; maps (B, 1, X, Y, Z) -> (B, C, X, Y, Z) logits.
        class_names: one name per output channel.
        preprocessing: how inputs are prepared: a :class:`PreprocessingSpec`, or an object with
            ``apply(volume, window_size) -> Preprocessed`` and ``to_dict()`` (bundles, nnU-Net).
        window_size: sliding-window size.
        device: torch device.
        source: where it was loaded from.
        spec: the spec (None for TorchScript).
    """

    network: Any
    class_names: list[str]
    preprocessing: Any
    window_size: tuple[int, int, int]
    device: Any
    source: str = ""
    spec: Any = None
    #: sliding-window defaults of the model's own format (a bundle's inferer, nnU-Net's predictor);
    #: ``prepare_case`` uses them where the caller gives ``None``
    overlap: float = 0.25
    blend: str = "constant"
    sw_batch_size: int = 1
    placement: str = "monai"
    #: every file the model was read from (spec, configs, plans, weights): what its fingerprint hashes
    files: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, name_or_id: str | int) -> int:
        if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
            i = int(name_or_id)
            if not 0 <= i < self.num_classes:
                raise Agg2ExpError(f"class id {i} out of range 0..{self.num_classes - 1}")
            return i
        if name_or_id not in self.class_names:
            raise Agg2ExpError(
                f"unknown class {name_or_id!r}{did_you_mean(name_or_id, self.class_names)} "
                f"(classes: {', '.join(self.class_names)})"
            )
        return self.class_names.index(name_or_id)


def load_state_dict(path: Path, trust_checkpoint: bool = False) -> dict:
    """A state dict from a ``.safetensors`` file or a torch checkpoint, without running pickle code.

    Pickle checkpoints load only with ``trust_checkpoint``; a checkpoint dict's ``state_dict`` /
    ``model`` / ``network`` / ``model_state_dict`` entry is taken.
    """
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise Agg2ExpError(f"cannot read weights {path} ({e}) -- the file is corrupt or not safetensors") from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:  # what a bad file raises
        msg = str(e)
        if "weights_only" in msg or "Unpickl" in type(e).__name__ or "GLOBAL" in msg:
            if not trust_checkpoint:
                raise Agg2ExpError(
                    f"checkpoint {path} needs pickle to load, which can run arbitrary code -- "
                    "pass --trust-checkpoint only if you trust its source, or re-save it as safetensors"
                ) from e
            state = torch.load(str(path), map_location="cpu", weights_only=False)
        else:
            raise Agg2ExpError(f"cannot read checkpoint {path} ({type(e).__name__}) -- the file is corrupt or not a torch checkpoint") from e
    if isinstance(state, dict):
        for key in ("state_dict", "model", "network", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        if hasattr(state, "state_dict"):
            return state.state_dict()
        raise Agg2ExpError(f"checkpoint {path} holds no state dict -- save model.state_dict()")
    return state
