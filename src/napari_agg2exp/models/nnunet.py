"""nnU-Net v2 result folders (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``).

TotalSegmentator's task folders have this form. What is read, as ``nnUNetPredictor`` reads it:

- ``dataset.json``: ``labels`` (name -> value; the class names, in value order) and ``channel_names``
  (one channel). Region-based training (label lists) is refused.
- ``plans.json``: the configuration the checkpoint was trained with (``init_args.configuration`` in
  the checkpoint, else the folder name's ``__3d_fullres`` suffix), its ``inherits_from`` chain, its
  network (current form: ``architecture.network_class_name`` + ``arch_kwargs`` + ``_kw_requires_import``;
  older form: ``UNet_class_name``, ``UNet_base_num_features``, ``n_conv_per_stage_encoder``, ... converted
  as ``nnunetv2.utilities.plans_handling.plans_handler.ConfigurationManager`` converts it), the patch
  size, spacing, normalisation, resampling, ``transpose_forward``, ``image_reader_writer`` and the
  foreground intensity properties.
- ``fold_N/checkpoint_final.pth``: ``network_weights`` (and ``inference_allowed_mirroring_axes``),
  read with ``torch.load(weights_only=True)`` and the numpy scalar globals nnU-Net's logging puts in
  it; a checkpoint that needs more (pickle code) loads only with ``trust_checkpoint``. Several folds
  are averaged (logits), as nnU-Net ensembles them.

The network is built with ``dynamic_network_architectures`` (the ``[nnunet]`` extra): only classes
from ``dynamic_network_architectures`` and ``torch.nn`` are imported from the plans, anything else
needs ``trust_checkpoint``. Sliding windows are nnU-Net's (``placement="nnunet"``, tile step 0.5 =
overlap 0.5, gaussian blending); mirroring test-time augmentation is off unless ``tta``.
"""

from __future__ import annotations

import copy
import itertools
import json
import pydoc
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.model import SegmentationModel
from napari_agg2exp.models.nnunet_preprocessing import (
    NORMALIZATIONS,
    READERS,
    RESAMPLING_FUNCTIONS,
    NnUNetPreprocessing,
)

__all__ = ["FoldEnsemble", "MirrorEnsemble", "is_nnunet_folder", "load_nnunet", "nnunet_architecture",
           "read_nnunet_checkpoint"]

CHECKPOINT = "checkpoint_final.pth"
#: modules the plans may name classes from without trust (what nnU-Net's own plans use)
SAFE_IMPORT_PREFIXES = ("dynamic_network_architectures.", "torch.nn.")


def is_nnunet_folder(path: Path) -> bool:
    """An nnU-Net v2 result folder: ``dataset.json`` and ``plans.json`` side by side."""
    return path.is_dir() and (path / "dataset.json").is_file() and (path / "plans.json").is_file()


class FoldEnsemble(torch.nn.Module):
    """The mean of several networks' logits (nnU-Net's fold ensemble); differentiable."""

    def __init__(self, networks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.folds = torch.nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.folds[0](x)
        for net in self.folds[1:]:
            out = out + net(x)
        return out / len(self.folds)


class MirrorEnsemble(torch.nn.Module):
    """Mirroring test-time augmentation (nnU-Net's ``_internal_maybe_mirror_and_predict``); differentiable.

    The mean over the identity and every non-empty combination of flips along ``axes`` (spatial axes
    0..2) of ``flip(network(flip(x)))``.
    """

    def __init__(self, network: torch.nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.network = network
        self.axes = tuple(int(a) for a in axes)
        dims = [a + 2 for a in self.axes]
        self.combinations = [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        for dims in self.combinations:
            out = out + torch.flip(self.network(torch.flip(x, dims)), dims)
        return out / (len(self.combinations) + 1)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Agg2ExpError(f"cannot read {path} ({type(e).__name__}: {e}) -- the nnU-Net {what} must be valid JSON") from e
    if not isinstance(data, dict):
        raise Agg2ExpError(f"{path} is not an nnU-Net {what} (a JSON object is expected)")
    return data


def _numpy_safe_globals() -> list:
    """The numpy globals nnU-Net checkpoints hold (numpy scalars in ``logging`` and ``_best_ema``)."""
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor (numpy.core / numpy._core by version)
    out: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_):
        out.append(type(np.dtype(t)))
    return out


def read_nnunet_checkpoint(path: Path, trust_checkpoint: bool = False) -> dict:
    """An nnU-Net checkpoint dict, read without running pickle code unless ``trust_checkpoint``.

    Raises:
        Agg2ExpError: unreadable, pickle refused, or no ``network_weights``.
    """
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if not ("weights_only" in msg or "Unpickl" in type(e).__name__ or "GLOBAL" in msg):
            raise Agg2ExpError(f"cannot read checkpoint {path} ({type(e).__name__}) -- the file is corrupt or "
                               "not a torch checkpoint") from e
        if not trust_checkpoint:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            raise Agg2ExpError(
                f"checkpoint {path} needs pickle to load"
                + (f" ({found.group(1)})" if found else "")
                + ", which can run arbitrary code -- pass --trust-checkpoint only if you trust its source"
            ) from e
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise Agg2ExpError(f"{path} is not an nnU-Net checkpoint (no 'network_weights') -- give the "
                           f"fold_N/{CHECKPOINT} nnU-Net wrote")
    return ckpt


def _configuration(plans: dict, name: str, source: Path) -> dict:
    """The configuration with its ``inherits_from`` chain resolved (``PlansManager.get_configuration``)."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        known = ", ".join(configs) if isinstance(configs, dict) else "none"
        raise Agg2ExpError(f"{source}: configuration {name!r} not in the plans (configurations: {known})")
    seen: list[str] = []
    chain = []
    while True:
        if name in seen:
            raise Agg2ExpError(f"{source}: configurations inherit in a circle ({' -> '.join(seen + [name])})")
        seen.append(name)
        if name not in configs:
            raise Agg2ExpError(f"{source}: configuration {seen[-2]!r} inherits from unknown {name!r}")
        chain.append(configs[name])
        name = configs[name].get("inherits_from")
        if name is None:
            break
    conf: dict = {}
    for c in reversed(chain):
        conf.update(copy.deepcopy(c))
    return conf


def nnunet_architecture(conf: dict) -> dict:
    """The configuration's ``architecture`` entry; the older plans form converted as nnU-Net does."""
    if "architecture" in conf:
        return copy.deepcopy(conf["architecture"])
    unet = conf.get("UNet_class_name")
    if unet == "PlainConvUNet":
        cls, blocks = "dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"
    elif unet == "ResidualEncoderUNet":
        cls = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"
        blocks = "n_blocks_per_stage"
    else:
        raise Agg2ExpError(f"plans without 'architecture' name UNet_class_name {unet!r} -- only PlainConvUNet and "
                           "ResidualEncoderUNet convert (as in nnU-Net); rerun nnUNetv2_plan_experiment")
    n_stages = len(conf["n_conv_per_stage_encoder"])
    dim = len(conf["patch_size"])
    return {
        "network_class_name": cls,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(conf["UNet_base_num_features"] * 2 ** i, conf["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": copy.deepcopy(conf["conv_kernel_sizes"]),
            "strides": copy.deepcopy(conf["pool_op_kernel_sizes"]),
            blocks: copy.deepcopy(conf["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": copy.deepcopy(conf["n_conv_per_stage_decoder"]),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _locate(name: str, source: Path, trust: bool) -> Any:
    if not isinstance(name, str):
        raise Agg2ExpError(f"{source}: expected a class name in the plans' architecture, got {name!r}")
    if not name.startswith(SAFE_IMPORT_PREFIXES) and not trust:
        raise Agg2ExpError(f"{source} names {name!r}, outside dynamic_network_architectures and torch.nn; importing "
                           "it runs its code -- pass --trust-checkpoint only if you trust this model")
    obj = pydoc.locate(name)
    if obj is None:
        raise Agg2ExpError(f"{source}: cannot import {name!r} -- install the package that defines it "
                           "(pip install 'napari-agg2exp[nnunet]' for dynamic_network_architectures)")
    return obj


def _build_network(arch: dict, n_in: int, n_out: int, source: Path, trust: bool) -> torch.nn.Module:
    try:
        import dynamic_network_architectures  # noqa: F401  (the nnU-Net networks)
    except ImportError as e:
        raise Agg2ExpError("nnU-Net models need dynamic_network_architectures -- pip install "
                           "'napari-agg2exp[nnunet]'") from e
    try:
        kwargs = dict(arch["arch_kwargs"])
        for key in arch.get("_kw_requires_import", ()):
            if kwargs.get(key) is not None:
                kwargs[key] = _locate(kwargs[key], source, trust)
        cls = _locate(arch["network_class_name"], source, trust)
    except (KeyError, TypeError) as e:
        raise Agg2ExpError(f"{source}: the plans' architecture entry is incomplete ({e!r}) -- rerun "
                           "nnUNetv2_plan_experiment") from e
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise Agg2ExpError(f"{source}: {arch['network_class_name']!r} is not a torch network class")
    kwargs["deep_supervision"] = False
    try:
        return cls(input_channels=n_in, num_classes=n_out, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise Agg2ExpError(f"{source}: cannot build {arch['network_class_name']} from the plans ({e})") from e


def _class_names(dataset: dict, source: Path) -> list[str]:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise Agg2ExpError(f"{source}: no 'labels' (name -> value) -- it is not an nnU-Net v2 dataset.json")
    labels = {k: v for k, v in labels.items() if k != "ignore"}  # the ignore label is no output channel
    regions = [k for k, v in labels.items() if isinstance(v, (list, tuple))]
    if regions:
        raise Agg2ExpError(f"{source}: region-based training (labels {regions[:3]} are lists) is not supported -- "
                           "only models with one label value per class (softmax outputs)")
    values = sorted(labels.values()) if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()) \
        else None
    if values != list(range(len(labels))):
        raise Agg2ExpError(f"{source}: label values must be the integers 0..{len(labels) - 1}, got "
                           f"{sorted(labels.values(), key=str)}")
    return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]


def _folds(folder: Path, folds: list[str] | None) -> list[Path]:
    """``fold_N/checkpoint_final.pth`` paths (nnU-Net's ``auto_detect_available_folds``; ``fold_all`` if alone)."""
    if folds is not None:
        paths = [folder / f"fold_{f}" / CHECKPOINT for f in folds]
        missing = [str(p.relative_to(folder)) for p in paths if not p.is_file()]
        if missing:
            raise Agg2ExpError(f"{folder}: missing {', '.join(missing)} -- give folds that were trained")
        return paths
    found = sorted((p for p in folder.glob("fold_*") if p.is_dir() and p.name != "fold_all"
                    and p.name[5:].isdigit() and (p / CHECKPOINT).is_file()), key=lambda p: int(p.name[5:]))
    if not found and (folder / "fold_all" / CHECKPOINT).is_file():
        found = [folder / "fold_all"]
    if not found:
        other = sorted(str(p.relative_to(folder)) for p in folder.glob("fold_*/checkpoint_*.pth"))
        raise Agg2ExpError(f"{folder} has no fold_N/{CHECKPOINT}"
                           + (f" (found {', '.join(other[:3])}; nnU-Net predicts with {CHECKPOINT})" if other else "")
                           + " -- give the nnU-Net result folder of a finished training")
    return [p / CHECKPOINT for p in found]


def _preprocessing(plans: dict, conf: dict, dataset: dict, source: Path) -> NnUNetPreprocessing:
    channels = dataset.get("channel_names", dataset.get("modality", {"0": "CT"}))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise Agg2ExpError(f"{source}: the model takes {len(channels) if isinstance(channels, dict) else '?'} input "
                           "channels -- only single-channel (one image per case) models are supported")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise Agg2ExpError(f"{source}: image_reader_writer {reader!r} is not supported (supported: {', '.join(READERS)})")
    norm = (conf.get("normalization_schemes") or ["?"])[0]
    if norm not in NORMALIZATIONS:
        raise Agg2ExpError(f"{source}: normalization {norm!r} is not supported (supported: {', '.join(NORMALIZATIONS)})")
    props = plans.get("foreground_intensity_properties_per_channel",
                      plans.get("foreground_intensity_properties_by_modality", {}))
    intensity = dict(props.get("0", {})) if isinstance(props, dict) else {}
    need = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if norm == "CTNormalization" and not all(k in intensity for k in need):
        raise Agg2ExpError(f"{source}: CTNormalization needs foreground_intensity_properties_per_channel['0'] with "
                           f"{', '.join(need)}")
    resampling = {}
    for kind, default_order in (("data", 3), ("probabilities", 1)):
        fn = conf.get(f"resampling_fn_{kind}", "resample_data_or_seg_to_shape")
        if fn not in RESAMPLING_FUNCTIONS:
            raise Agg2ExpError(f"{source}: resampling_fn_{kind} {fn!r} is not supported (supported: "
                               f"{', '.join(RESAMPLING_FUNCTIONS)})")
        kw = dict(conf.get(f"resampling_fn_{kind}_kwargs") or {})
        resampling[kind] = {"order": int(kw.get("order", default_order)), "order_z": int(kw.get("order_z", 0)),
                            "force_separate_z": kw.get("force_separate_z")}
    transpose = tuple(int(t) for t in plans.get("transpose_forward", (0, 1, 2)))
    if sorted(transpose) != [0, 1, 2]:
        raise Agg2ExpError(f"{source}: transpose_forward {list(transpose)} is not a permutation of 0, 1, 2")
    spacing = tuple(float(s) for s in conf["spacing"])
    return NnUNetPreprocessing(
        spacing=spacing, transpose_forward=transpose, reader=reader, normalization=norm, intensity=intensity,
        use_mask_for_norm=bool((conf.get("use_mask_for_norm") or [False])[0]),
        data_resampling=resampling["data"], probability_resampling=resampling["probabilities"],
        canonical=reader == "NibabelIOWithReorient" or "totalsegmentator" in str(plans.get("dataset_name", "")).lower(),
    )


def load_nnunet(
    folder: str | Path,
    *,
    device: torch.device,
    trust_checkpoint: bool = False,
    tta: bool = False,
    folds: list[str] | None = None,
    configuration: str | None = None,
) -> SegmentationModel:
    """Load an nnU-Net v2 result folder as a :class:`SegmentationModel`.

    Args:
        folder: the folder with ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``.
        device: where the network runs.
        trust_checkpoint: allow checkpoints that need pickle and plans naming classes outside
            ``dynamic_network_architectures`` / ``torch.nn`` (runs code from the files!).
        tta: mirroring test-time augmentation over the checkpoint's allowed axes (nnU-Net's default).
        folds: fold names to use (``["0", "1"]``); ``None`` = every trained fold.
        configuration: the plans configuration; ``None`` = the checkpoint's (else the folder name's).

    Raises:
        Agg2ExpError: anything missing, unsupported or refused, in one line.
    """
    folder = Path(folder)
    dataset = _read_json(folder / "dataset.json", "dataset.json")
    plans = _read_json(folder / "plans.json", "plans.json")
    names = _class_names(dataset, folder / "dataset.json")
    paths = _folds(folder, folds)
    ckpts = [read_nnunet_checkpoint(p, trust_checkpoint) for p in paths]
    first = ckpts[0]
    if configuration is None:
        configuration = (first.get("init_args") or {}).get("configuration") if isinstance(first.get("init_args"), dict) \
            else None
    if configuration is None and "__" in folder.name:
        configuration = folder.name.rsplit("__", 1)[-1]
    if configuration is None:
        raise Agg2ExpError(f"{folder}: cannot tell which plans configuration the checkpoint used -- name the folder "
                           "TRAINER__PLANS__CONFIGURATION as nnU-Net does")
    conf = _configuration(plans, str(configuration), folder / "plans.json")
    if len(conf.get("patch_size", ())) != 3:
        raise Agg2ExpError(f"{folder}: configuration {configuration!r} is not 3D (patch size {conf.get('patch_size')}) "
                           "-- only 3D nnU-Net models are supported")
    if conf.get("previous_stage"):
        raise Agg2ExpError(f"{folder}: configuration {configuration!r} is a cascade stage (it needs the "
                           f"{conf['previous_stage']} segmentation as input) -- use a 3d_fullres or 3d_lowres model")
    pre = _preprocessing(plans, conf, dataset, folder)
    try:
        arch = nnunet_architecture(conf)
    except KeyError as e:
        raise Agg2ExpError(f"{folder / 'plans.json'}: configuration {configuration!r} lacks {e} -- rerun "
                           "nnUNetv2_plan_experiment") from e
    nets = []
    for path, ckpt in zip(paths, ckpts):
        net = _build_network(arch, 1, len(names), folder / "plans.json", trust_checkpoint)
        try:
            net.load_state_dict(ckpt["network_weights"])
        except RuntimeError as e:
            line = str(e).splitlines()[0] if str(e) else ""
            raise Agg2ExpError(f"{path}: the weights do not fit the network the plans describe ({line[:200]}) -- "
                               "was it trained with a custom trainer or other plans?") from e
        nets.append(net.eval())
    network: torch.nn.Module = nets[0] if len(nets) == 1 else FoldEnsemble(nets)
    if tta:
        axes = first.get("inference_allowed_mirroring_axes")
        if axes:
            network = MirrorEnsemble(network, tuple(axes))
        else:
            warnings.warn(f"{folder.name} was trained without mirroring; --tta has no effect", stacklevel=2)
    return SegmentationModel(
        network=network.to(device).eval(),
        class_names=names,
        preprocessing=pre,
        window_size=tuple(int(v) for v in conf["patch_size"]),
        device=device,
        source=str(folder),
        spec=None,
        overlap=0.5,  # nnUNetPredictor's tile_step_size 0.5
        blend="gaussian",
        sw_batch_size=1,
        placement="nnunet",
        files=tuple(str(p) for p in [folder / "dataset.json", folder / "plans.json", *paths]),
    )
