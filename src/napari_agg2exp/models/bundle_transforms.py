"""A MONAI bundle's preprocessing, run with MONAI's own transforms, and its inverse.

The bundle's dictionary transforms (``Orientationd``, ``Spacingd``, ``ScaleIntensityRanged``,
``NormalizeIntensityd``, ``ScaleIntensityd``, ``CropForegroundd``) are instantiated from the bundle's
arguments and applied to a ``MetaTensor`` built from the :class:`Volume` (what ``LoadImaged`` +
``EnsureChannelFirstd`` give for a NIfTI file), so the model input equals the bundle's own. The
result is padded to the window exactly as ``monai.inferers.sliding_window_inference`` pads (its
``padding_mode`` and ``cval``). Model-grid results go back to the input grid with MONAI's inverse of
the same transform instances (what the bundle's ``Invertd`` post-processing does); label volumes on
the input grid go to the model grid with MONAI's ``SpatialResample`` (nearest) by the two affines.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.data import MetaTensor
from monai.transforms.utils import allow_missing_keys_mode, convert_applied_interp_mode

from napari_agg2exp.data.preprocessing import Preprocessed
from napari_agg2exp.data.volume import Volume
from napari_agg2exp.errors import Agg2ExpError

__all__ = ["NO_OP_TRANSFORMS", "SUPPORTED_TRANSFORMS", "BundlePreprocessing", "build_transforms", "prediction_order",
           "transform_name"]

#: transforms applied to the image (MONAI's dictionary versions)
SUPPORTED_TRANSFORMS = ("Orientation", "Spacing", "ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity",
                        "CropForeground")
#: transforms that do nothing here: the image is already loaded, channel-first and a tensor
NO_OP_TRANSFORMS = ("LoadImage", "EnsureChannelFirst", "EnsureType")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def transform_name(target: Any, known: Sequence[str] = ()) -> str:
    """The base name of a transform ``_target_`` (``monai.transforms.Spacingd`` / ``SpacingD`` -> ``Spacing``).

    A ``_target_`` that is not a MONAI transform name comes back unchanged (and is then unsupported).
    ``known``: the base names recognised (default: the supported and no-op preprocessing transforms).
    """
    name = str(target)
    if "." in name:
        if not name.startswith("monai.transforms."):
            return name
        name = name.rsplit(".", 1)[1]
    for suffix in ("Dict", "D", "d"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in (tuple(known) or SUPPORTED_TRANSFORMS + NO_OP_TRANSFORMS):
            return base
    return name


def _unsupported(target: Any, where: str) -> Agg2ExpError:
    return Agg2ExpError(
        f"{where}: preprocessing transform {target} is not supported (supported: "
        f"{', '.join(n + 'd' for n in SUPPORTED_TRANSFORMS + NO_OP_TRANSFORMS)}) -- remove it from the bundle's "
        "preprocessing, or export the model as a model folder with its own preprocessing"
    )


def build_transforms(section: Any, image_key: str, where: str) -> tuple[list, list[dict]]:
    """Instantiate a bundle's ``preprocessing`` (a resolved ``Compose`` config or list of transform configs).

    Args:
        section: the resolved section: ``{"_target_": "Compose", "transforms": [...]}`` or a list.
        image_key: the bundle's image key; transforms whose ``keys`` do not name it are skipped.
        where: the config file, for messages.

    Returns:
        ``(transforms, description)``: the MONAI dictionary transforms that act on the image, in order,
        and their configs (for records).

    Raises:
        Agg2ExpError: a transform that is not supported, or arguments MONAI rejects.
    """
    items = section
    if isinstance(section, dict):
        if transform_name(section.get("_target_", "")) != "Compose" and section.get("_target_") != "monai.transforms.Compose":
            if "_target_" in section:  # a single transform
                items = [section]
            else:
                raise Agg2ExpError(f"{where}: \"preprocessing\" must be a Compose of transforms -- got keys {sorted(section)}")
        else:
            items = section.get("transforms", [])
    if not isinstance(items, (list, tuple)):
        raise Agg2ExpError(f"{where}: \"preprocessing\" transforms must be a list, got {type(items).__name__}")
    out, desc = [], []
    for item in items:
        if isinstance(item, mt.Transform):  # trusted bundles evaluated by ConfigParser may give instances
            raise _unsupported(type(item).__name__, where)
        if not isinstance(item, dict) or "_target_" not in item:
            raise Agg2ExpError(f"{where}: preprocessing item {item!r} is not a transform (no _target_)")
        if item.get("_disabled_") in (True, "true", "True"):
            continue
        target = item["_target_"]
        name = transform_name(target)
        if name in NO_OP_TRANSFORMS:
            continue
        if name not in SUPPORTED_TRANSFORMS:
            raise _unsupported(target, where)
        args = {k: v for k, v in item.items() if not (k.startswith("_") and k.endswith("_"))}
        keys = args.get("keys", image_key)
        keys = [keys] if isinstance(keys, str) else list(keys)
        if image_key not in keys:
            continue  # acts on other keys (labels) only
        args["keys"] = keys
        args["allow_missing_keys"] = True  # only the image is given; per-key argument lists keep their order
        if name == "CropForeground" and args.get("source_key", image_key) != image_key:
            raise Agg2ExpError(f"{where}: CropForegroundd with source_key {args['source_key']!r} needs a second input "
                               f"-- only source_key {image_key!r} (the image) is supported")
        try:
            with warnings.catch_warnings():  # MONAI's notice that Orientation's default labels will follow the meta
                warnings.simplefilter("ignore", FutureWarning)
                out.append(getattr(mt, name + "d")(**args))
        except (TypeError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise Agg2ExpError(f"{where}: cannot build {target} from the bundle's arguments ({first[:200]})") from e
        desc.append({"_target_": name + "d", **{k: v for k, v in args.items() if k != "allow_missing_keys"}})
    return out, desc


#: the post-processing transforms whose order decides how the prediction is mapped back
POSTPROCESSING_TRANSFORMS = ("Activations", "Invert", "AsDiscrete")


def prediction_order(config: Any) -> str:
    """How a bundle's ``postprocessing`` maps the prediction back: ``probabilities``, ``logits`` or ``labels``.

    Read from the raw config without evaluating anything (only ``_target_`` names and literal flags):
    ``AsDiscreted(argmax)`` before ``Invertd``, or an ``Invertd`` with ``nearest_interp`` true (its
    default), maps labels back by nearest neighbour (``labels``); otherwise each class is inverted with
    the preprocessing's own interpolation and the argmax is taken on the input grid -- of the softmax
    when an ``Activationsd(softmax=True)`` comes first (``probabilities``), else of the logits. A config
    without a readable ``postprocessing`` gets ``probabilities`` (what MONAI's segmentation bundles do).
    """
    post = config.get("postprocessing") if isinstance(config, dict) else None
    if isinstance(post, str) and post.startswith("@"):
        post = config.get(post[1:])
    items = post.get("transforms") if isinstance(post, dict) else post
    if not isinstance(items, list):
        return "probabilities"
    names = [transform_name(t.get("_target_", ""), POSTPROCESSING_TRANSFORMS) if isinstance(t, dict) else ""
             for t in items]
    if "Invert" not in names:
        return "probabilities"
    inv = names.index("Invert")
    if "AsDiscrete" in names[:inv] or items[inv].get("nearest_interp", True) not in (False, "false", "False"):
        return "labels"
    softmax = any(n == "Activations" and items[i].get("softmax") in (True, "true", "True")
                  for i, n in enumerate(names[:inv]))
    return "probabilities" if softmax else "logits"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


@dataclass
class BundlePreprocessing:
    """A bundle's preprocessing: MONAI transforms, then padding to the window as its inferer pads.

    Attributes:
        transforms: instantiated MONAI dictionary transforms acting on ``image_key``.
        image_key: the bundle's image key.
        padding_mode: the inferer's ``padding_mode`` (``constant``, ``reflect``, ``replicate``, ``circular``).
        cval: the inferer's fill value for ``constant`` padding.
        description: the transforms' configs (recorded by :meth:`to_dict`).
        prediction_from: ``probabilities``, ``logits`` or ``labels`` (:func:`prediction_order`).
    """

    transforms: list
    image_key: str = "image"
    padding_mode: str = "constant"
    cval: float = 0.0
    description: list[dict] = field(default_factory=list)
    #: how the prediction goes back to the input grid (the bundle's post-processing order, see ``prepare_case``):
    #: ``probabilities`` (Activationsd softmax, Invertd, AsDiscreted argmax), ``logits`` (no softmax before
    #: Invertd) or ``labels`` (argmax before Invertd with nearest interpolation)
    prediction_from: str = "probabilities"

    def to_dict(self) -> dict[str, Any]:
        return {"format": "monai-bundle", "transforms": _jsonable(self.description),
                "padding_mode": self.padding_mode, "cval": float(self.cval), "prediction_from": self.prediction_from}

    def apply(self, volume: Volume, window_size: Sequence[int] | None) -> Preprocessed:
        """Run the transforms on ``volume`` and pad to ``window_size`` (``sliding_window_inference``'s padding)."""
        img = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32)[None]),
                         affine=torch.as_tensor(volume.affine, dtype=torch.float64))
        img.meta["space"] = "RAS"
        img.meta["original_affine"] = volume.affine.copy()
        img.meta["spatial_shape"] = np.asarray(volume.array.shape)
        compose = mt.Compose(self.transforms)
        out = compose({self.image_key: img})[self.image_key]
        if not isinstance(out, MetaTensor) or out.ndim != 4:
            raise Agg2ExpError(f"the bundle's preprocessing gave {type(out).__name__} of shape {tuple(out.shape)}; "
                               "expected one 3D channel")
        post_affine = np.asarray(out.affine, dtype=float)
        post_shape = tuple(int(s) for s in out.shape[1:])
        trace, meta = copy.deepcopy(out.applied_operations), copy.deepcopy(out.meta)
        arr = out.as_tensor().float()
        pad = ((0, 0),) * 3
        if window_size is not None:
            diffs = [max(int(w) - n, 0) for w, n in zip(window_size, post_shape)]
            pad = tuple((d // 2, d - d // 2) for d in diffs)
            if any(diffs):
                flat = [p for before_after in reversed(pad) for p in before_after]  # F.pad: last axis first
                arr = F.pad(arr[None], pad=flat, mode=self.padding_mode, value=float(self.cval))[0]
        shift = np.eye(4)
        shift[:3, 3] = [-b for b, _ in pad]
        padded_affine = post_affine @ shift
        padded_shape = tuple(int(s) for s in arr.shape[1:])
        tfm = nio.ornt_transform(nio.io_orientation(volume.affine), nio.io_orientation(post_affine))
        oriented = [0, 0, 0]
        for n, (ax, _) in zip(volume.array.shape, tfm):
            oriented[int(ax)] = int(n)
        key, input_affine = self.image_key, volume.affine.copy()

        def inverse(array: np.ndarray, mode: str) -> np.ndarray:
            a = np.asarray(array)
            crop = tuple(slice(b, b + n) for (b, _), n in zip(pad, post_shape))
            a = a[(Ellipsis,) + crop]
            lead, dtype = a.shape[:-3], a.dtype
            t = MetaTensor(torch.from_numpy(np.ascontiguousarray(a.reshape((-1,) + a.shape[-3:]), dtype=np.float32)))
            ops = copy.deepcopy(trace)
            if mode == "nearest":
                ops = convert_applied_interp_mode(trans_info=ops, mode="nearest", align_corners=None)
            t.applied_operations = ops
            t.meta = copy.deepcopy(meta)
            with allow_missing_keys_mode(compose):
                res = compose.inverse({key: t})[key]
            res = (res.as_tensor() if isinstance(res, MetaTensor) else torch.as_tensor(res)).cpu().numpy()
            if tuple(res.shape[1:]) != tuple(volume.array.shape):
                raise Agg2ExpError(f"the bundle's inverse preprocessing gave shape {res.shape[1:]}, not the input's "
                                   f"{volume.array.shape} -- report this bundle")
            res = res.reshape(lead + res.shape[1:])
            return np.rint(res).astype(dtype) if mode == "nearest" else res.astype(np.float32, copy=False)

        def forward_labels(labels: np.ndarray) -> np.ndarray:
            # MONAI's own spatial transforms with nearest interpolation, as a bundle's label pipeline runs them;
            # what follows them (CropForeground, the window padding) is an integer shift
            dtype = np.asarray(labels).dtype
            lab = MetaTensor(torch.from_numpy(np.asarray(labels, dtype=np.float32)[None]),
                             affine=torch.as_tensor(input_affine, dtype=torch.float64))
            lab.meta["space"] = "RAS"
            for t in self.transforms:
                if isinstance(t, mt.Orientationd):
                    lab = t.ornt_transform(lab)
                elif isinstance(t, mt.Spacingd):
                    i = list(t.keys).index(key)
                    lab = t.spacing_transform(lab, mode="nearest", padding_mode=t.padding_mode[i],
                                              align_corners=t.align_corners[i], dtype=t.dtype[i],
                                              scale_extent=t.scale_extent[i])
            m = np.linalg.solve(padded_affine, np.asarray(lab.affine, dtype=float))
            off = np.rint(m[:3, 3]).astype(int)
            src = np.asarray(lab.as_tensor()[0])
            if not (np.allclose(m[:3, :3], np.eye(3), atol=1e-6) and np.allclose(m[:3, 3], off, atol=1e-4)):
                src = np.asarray(mt.SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
                    lab, dst_affine=torch.as_tensor(padded_affine, dtype=torch.float64),
                    spatial_size=padded_shape).as_tensor()[0])
                off = np.zeros(3, dtype=int)
            res = np.zeros(padded_shape, dtype=np.float32)
            dst = tuple(slice(max(o, 0), min(o + n, p)) for o, n, p in zip(off, src.shape, padded_shape))
            from_ = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, off))
            res[dst] = src[from_]
            return np.rint(res).astype(dtype)

        return Preprocessed(
            array=np.ascontiguousarray(arr[0].numpy(), dtype=np.float32),
            affine=padded_affine,
            input_shape=tuple(int(s) for s in volume.array.shape),
            input_affine=input_affine,
            ornt=tfm,
            oriented_shape=tuple(oriented),
            resampled_shape=post_shape,
            pad=pad,
            inverse=inverse,
            forward_labels=forward_labels,
        )
