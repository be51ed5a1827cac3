"""MONAI bundles (the format of MONAI's model zoo) as a :class:`SegmentationModel`.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) and
``models/model.pt`` (a state dict) or ``models/model.ts`` (TorchScript). Only what inference needs is
read: class names from ``metadata.json`` (``network_data_format.outputs.pred.channel_def``), and from
the inference config the sections ``network_def``, ``preprocessing`` and ``inferer`` (with the
entries they reference). Everything else (imports, datalists, handlers) is never looked at, so the
Python expressions real bundles carry there do not matter; of ``postprocessing`` only the transform
names and literal flags are looked at, unevaluated, for the order in which the prediction is mapped
back (``bundle_transforms.prediction_order``).

Inside the sections read, ``@id`` references are resolved, ``$`` expressions that are plain literals
(``$[1.5, 1.5, 1.5]``) are read with :func:`ast.literal_eval`, and ``device`` entries are ignored
(the tool picks the device). Any other expression runs code: it is refused, naming the entry, unless
the caller trusts the bundle (``trust_bundle=True``, ``--trust-bundle``); then the sections are
evaluated by MONAI's own ``ConfigParser``.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import monai
import monai.networks.nets as monai_nets
import torch
from monai.bundle import ConfigParser
from monai.bundle.config_item import ConfigItem
from monai.utils import optional_import

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.bundle_transforms import (
    PAD_MODES,
    BundlePreprocessing,
    build_transforms,
    prediction_order,
)
from napari_agg2exp.models.inference import BLEND_MODES, window_size_3d
from napari_agg2exp.models.model import SegmentationModel, load_state_dict, resolve_device
from napari_agg2exp.options import look_up_option

yaml, _has_yaml = optional_import("yaml")

__all__ = ["is_bundle", "load_bundle", "read_bundle_section"]

METADATA = Path("configs") / "metadata.json"
CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
#: entries the tool decides itself; never read (nor evaluated) inside the sections read
DEVICE_KEYS = ("device", "sw_device")
#: SlidingWindowInferer arguments read, and those that do not change the result (ignored)
INFERER_ARGS = ("roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval")
INFERER_IGNORED = ("progress", "cache_roi_weight_map", "cpu_thresh", "buffer_steps", "buffer_dim")
TRUST_HINT = "pass --trust-bundle (trust_bundle=True) only if you trust this bundle"


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a MONAI bundle folder (it has ``configs/metadata.json``)."""
    p = Path(path)
    return p.is_dir() and (p / METADATA).is_file()


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise Agg2ExpError(f"cannot read {path} ({e}) -- the bundle is incomplete or corrupt") from e
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise Agg2ExpError(f"{path} is not valid JSON ({e}) -- fix the bundle's config") from e
    if not _has_yaml:
        raise Agg2ExpError(f"{path} is YAML: install PyYAML (pip install pyyaml) to read it")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Agg2ExpError(f"{path} is not valid YAML ({first}) -- fix the bundle's config") from e


def _split_id(ident: str) -> list[str]:
    return [part for part in ident.replace("::", "#").split("#")]


class _SafeResolver:
    """Resolves a section of a bundle config without running code (references and literals only)."""

    def __init__(self, config: dict, where: str):
        self.config, self.where = config, where

    def section(self, name: str) -> Any:
        if name not in self.config:
            raise Agg2ExpError(f"{self.where} has no \"{name}\" section -- it is not an inference config of a bundle")
        return self._resolve(self.config[name], [name], (), None)

    def _lookup(self, parts: list[str], ref: str, at: list[str]) -> Any:
        node: Any = self.config
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                node = node[int(part)]
            else:
                raise Agg2ExpError(f"{self.where}: \"{'#'.join(at)}\" refers to {ref!r}, which the config does not have "
                                   "-- fix the reference")
        return node

    def _resolve(self, value: Any, path: list[str], stack: tuple[str, ...], via: str | None) -> Any:
        if isinstance(value, dict):
            return {k: self._resolve(v, path + [str(k)], stack, via) for k, v in value.items() if k not in DEVICE_KEYS}
        if isinstance(value, list):
            return [self._resolve(v, path + [str(i)], stack, via) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        at = "#".join(path) + (f" (used by {via})" if via else "")
        if value.startswith("$"):
            try:
                return ast.literal_eval(value[1:].strip())
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
                raise Agg2ExpError(f"{self.where}: {at} is the Python expression {value!r}, which runs code when "
                                   f"evaluated -- {TRUST_HINT}") from e
        if value.startswith("%"):
            raise Agg2ExpError(f"{self.where}: {at} is the macro {value!r}; macros are not supported -- "
                               "replace it by the value it stands for")
        if not value.startswith("@"):
            return value
        ref = value[1:].replace("::", "#")
        n_up = len(ref) - len(ref.lstrip("#"))
        if n_up:  # relative: "@#A" is A next to this entry, "@##A" one level up (MONAI's convention)
            if n_up > len(path):
                raise Agg2ExpError(f"{self.where}: {at}: relative reference {value!r} goes above the config's root")
            ref = "#".join(path[: len(path) - n_up] + [ref.lstrip("#")])
        if ref in stack:
            raise Agg2ExpError(f"{self.where}: {at}: circular reference {value!r} -- fix the config")
        parts = _split_id(ref)
        return self._resolve(self._lookup(parts, value, path), parts, stack + (ref,), via or "#".join(path))


def _plain(value: Any) -> Any:
    """A ConfigParser result without ``ConfigItem`` wrappers, ``device`` entries dropped."""
    if isinstance(value, ConfigItem):
        value = value.get_config()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in DEVICE_KEYS}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _trusted_sections(cfg_path: Path, root: Path, names: list[str]) -> dict[str, Any]:
    """The sections evaluated by MONAI's ``ConfigParser`` (runs the bundle's expressions: trusted only)."""
    parser = ConfigParser()
    parser.read_config(str(cfg_path))
    parser["bundle_root"] = str(root)
    out = {}
    for name in ["imports"] + names:
        if name not in parser.config:
            if name != "imports":
                raise Agg2ExpError(f"{cfg_path} has no \"{name}\" section -- it is not an inference config of a bundle")
            continue
        try:
            out[name] = _plain(parser.get_parsed_content(name, instantiate=False))
        except (NameError, SyntaxError, TypeError, ValueError, KeyError, AttributeError, ImportError,
                IndexError, ZeroDivisionError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise Agg2ExpError(f"{cfg_path}: evaluating \"{name}\" failed ({type(e).__name__}: {first[:200]}) -- "
                               "fix the bundle's config") from e
    return out


def read_bundle_section(path: str | os.PathLike, names: list[str], trust_bundle: bool = False) -> dict[str, Any]:
    """The resolved sections ``names`` of a bundle's inference config (see the module docstring)."""
    root = Path(path)
    cfg_path = _config_path(root)
    if trust_bundle:
        return _trusted_sections(cfg_path, root, names)
    config = _read_file(cfg_path)
    if not isinstance(config, dict):
        raise Agg2ExpError(f"{cfg_path} is not a bundle config (a mapping at the top)")
    resolver = _SafeResolver(config, str(cfg_path))
    return {name: resolver.section(name) for name in names}


def _config_path(root: Path) -> Path:
    for name in CONFIGS:
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise Agg2ExpError(f"bundle {root} has no configs/inference.json (or .yaml) -- it cannot be used for inference")


def _class_names(meta: Any, where: str) -> tuple[list[str], str]:
    fmt = meta.get("network_data_format", {}) if isinstance(meta, dict) else {}
    outputs = fmt.get("outputs") or {}
    out = outputs.get("pred") or (next(iter(outputs.values())) if outputs else None)
    inputs = fmt.get("inputs") or {}
    image_key = next(iter(inputs), "image")
    n_in = (inputs.get(image_key) or {}).get("num_channels", 1)
    if n_in != 1:
        raise Agg2ExpError(f"{where}: the model takes {n_in} input channels; only single-channel models (one scan) "
                           "are supported")
    cdef = (out or {}).get("channel_def") if isinstance(out, dict) else None
    if not isinstance(cdef, dict) or not cdef:
        raise Agg2ExpError(f"{where} has no network_data_format.outputs.pred.channel_def -- add the class names "
                           "there or pass --label-names FILE")
    try:
        ids = sorted(int(k) for k in cdef)
    except ValueError as e:
        raise Agg2ExpError(f"{where}: channel_def keys must be channel numbers \"0\"..\"N-1\", got {sorted(cdef)}") from e
    if ids != list(range(len(ids))):
        raise Agg2ExpError(f"{where}: channel_def keys must be \"0\"..\"{len(ids) - 1}\" without gaps, got {ids}")
    return [str(cdef[str(i)]) for i in ids], str(image_key)


def _network(section: Any, where: str, monai_version: str) -> torch.nn.Module:
    if not isinstance(section, dict) or "_target_" not in section:
        raise Agg2ExpError(f"{where}: \"network_def\" must be a component with a _target_")
    target = str(section["_target_"])
    name = target.rsplit(".", 1)[1] if target.startswith("monai.networks.") else target
    cls = getattr(monai_nets, name, None) if "." not in name else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise Agg2ExpError(f"{where}: network_def _target_ {target!r} is not a MONAI network (monai.networks.nets) -- "
                           "export the model as TorchScript (models/model.ts) instead")
    if section.get("_mode_", "default") != "default":
        raise Agg2ExpError(f"{where}: network_def _mode_ {section['_mode_']!r} is not supported -- remove it")
    args = {k: v for k, v in section.items() if not (k.startswith("_") and k.endswith("_"))}
    for k, v in args.items():
        if isinstance(v, dict) and "_target_" in v:
            raise Agg2ExpError(f"{where}: network_def argument {k!r} is a component ({v['_target_']}); only literal "
                               "arguments are supported")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for k in [k for k in args if k not in params]:
            warnings.warn(f"bundle network {name}: argument {k}={args.pop(k)!r} (from MONAI {monai_version}) is not "
                          f"accepted by the installed MONAI {monai.__version__}; dropped", stacklevel=3)
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Agg2ExpError(f"{where}: cannot build {name} from network_def ({first[:200]})") from e


def _inferer(section: Any, where: str) -> dict[str, Any]:
    if not isinstance(section, dict) or "_target_" not in section:
        raise Agg2ExpError(f"{where}: \"inferer\" must be a component with a _target_")
    target = str(section["_target_"])
    if target.rsplit(".", 1)[-1] != "SlidingWindowInferer" or ("." in target and not target.startswith("monai.")):
        raise Agg2ExpError(f"{where}: inferer {target} is not supported -- only SlidingWindowInferer")
    args = {k: v for k, v in section.items() if not (k.startswith("_") and k.endswith("_"))}
    if args.get("with_coord"):
        raise Agg2ExpError(f"{where}: inferer with_coord=True is not supported (the network takes the image only)")
    args.pop("with_coord", None)
    unknown = sorted(set(args) - set(INFERER_ARGS) - set(INFERER_IGNORED))
    if unknown:
        raise Agg2ExpError(f"{where}: inferer arguments {unknown} are not supported -- supported: {', '.join(INFERER_ARGS)}")
    if "roi_size" not in args:
        raise Agg2ExpError(f"{where}: the inferer has no roi_size")
    roi = args["roi_size"]
    roi = window_size_3d(roi if isinstance(roi, (list, tuple)) else int(roi))
    overlap = args.get("overlap", 0.25)
    if isinstance(overlap, (list, tuple)):
        if len({float(o) for o in overlap}) != 1:
            raise Agg2ExpError(f"{where}: inferer overlap {overlap} differs per axis; only one overlap is supported")
        overlap = overlap[0]
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise Agg2ExpError(f"{where}: inferer overlap must be in [0, 1), got {overlap}")
    sigma = args.get("sigma_scale", 0.125)
    if any(abs(float(s) - 0.125) > 1e-12 for s in (sigma if isinstance(sigma, (list, tuple)) else [sigma])):
        raise Agg2ExpError(f"{where}: inferer sigma_scale {sigma} is not supported -- only MONAI's default 0.125")
    sw = args.get("sw_batch_size", 1)
    if not isinstance(sw, int) or sw < 1:
        raise Agg2ExpError(f"{where}: inferer sw_batch_size must be a positive integer, got {sw!r}")
    return {
        "roi_size": roi,
        "overlap": overlap,
        "blend": look_up_option(str(args.get("mode", "constant")), BLEND_MODES, what="inferer mode"),
        "sw_batch_size": sw,
        "padding_mode": look_up_option(str(args.get("padding_mode", "constant")), PAD_MODES, what="inferer padding_mode"),
        "cval": float(args.get("cval", 0.0)),
    }


def load_bundle(
    path: str | os.PathLike,
    *,
    device: str | None = "auto",
    label_names: list[str] | None = None,
    trust_bundle: bool = False,
    trust_checkpoint: bool = False,
    window_size: tuple[int, int, int] | None = None,
) -> SegmentationModel:
    """Load a MONAI bundle folder for inference.

    Args:
        path: the bundle folder (``configs/metadata.json``, ``configs/inference.json|yaml``,
            ``models/model.pt`` or ``models/model.ts``).
        device: ``auto`` or a torch device name.
        label_names: class names overriding the metadata's ``channel_def``.
        trust_bundle: evaluate the config's Python expressions with MONAI's ``ConfigParser`` (runs code).
        trust_checkpoint: allow a ``model.pt`` that needs pickle (runs code).
        window_size: override the inferer's ``roi_size``.

    Raises:
        Agg2ExpError: a missing file, an expression refused, an unsupported transform, network or
            inferer, or weights that do not fit the network.
    """
    root = Path(path)
    meta_path, cfg_path = root / METADATA, _config_path(root)
    meta = _read_file(meta_path)
    names, image_key = _class_names(meta, str(meta_path))
    if label_names is not None:
        if len(label_names) != len(names):
            raise Agg2ExpError(f"labels file has {len(label_names)} names but the bundle has {len(names)} outputs -- "
                               "give one name per output channel")
        names = list(label_names)
    weights_pt, weights_ts = root / "models" / "model.pt", root / "models" / "model.ts"
    if not weights_pt.is_file() and not weights_ts.is_file():
        raise Agg2ExpError(f"bundle {root} has no models/model.pt or models/model.ts -- download the bundle's weights")
    wanted = ["preprocessing", "inferer"] + (["network_def"] if weights_pt.is_file() else [])
    sections = read_bundle_section(root, wanted, trust_bundle)
    where = str(cfg_path)
    dev = resolve_device(device)
    if weights_pt.is_file():
        net = _network(sections["network_def"], where, str(meta.get("monai_version", "?")))
        n_out = sections["network_def"].get("out_channels")
        if n_out is not None and n_out != len(names):
            raise Agg2ExpError(f"{where}: network_def has {n_out} output channels but {meta_path.name} names "
                               f"{len(names)} classes -- give one name per output channel")
        try:
            net.load_state_dict(load_state_dict(weights_pt, trust_checkpoint))
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise Agg2ExpError(f"weights {weights_pt} do not fit the network in network_def ({first[:200]})") from e
        weights = weights_pt
    else:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated")
                net = torch.jit.load(str(weights_ts), map_location=dev)
        except RuntimeError as e:
            raise Agg2ExpError(f"{weights_ts} is not a TorchScript model ({str(e).splitlines()[0][:200]})") from e
        weights = weights_ts
    inf = _inferer(sections["inferer"], where)
    raw = _read_file(cfg_path)
    cfg_image_key = raw.get("image_key") if isinstance(raw, dict) else None
    image_key = cfg_image_key if isinstance(cfg_image_key, str) and not cfg_image_key.startswith(("$", "@")) else image_key
    transforms, desc = build_transforms(sections["preprocessing"], image_key, where)
    pre = BundlePreprocessing(transforms, image_key, inf["padding_mode"], inf["cval"], desc,
                              prediction_order(raw if isinstance(raw, dict) else {}))
    return SegmentationModel(
        network=net.to(dev).eval(),
        class_names=names,
        preprocessing=pre,
        window_size=tuple(window_size or inf["roi_size"]),
        device=dev,
        source=str(root),
        spec=None,
        overlap=inf["overlap"],
        blend=inf["blend"],
        sw_batch_size=inf["sw_batch_size"],
        placement="monai",
        files=(str(meta_path), str(cfg_path), str(weights)),
    )
