"""The case folder: :class:`CaseFolder` is the only reader and writer of its layout.

Layout (version 2) of a case folder ``CASE/``, written by ``segment``, ``explain``, ``demo`` and
every ``COHORT/cases/<case>``::

    case.json                    {"layout": 2, "case": ..., "image": "ct.nii.gz" (relative to CASE/),
                                  "ground_truth": ..., "model": ..., "files": [...]}; written last
    prediction.nii.gz            uint8 labels on the input grid and affine
    labels.json                  {"0": "background", "1": ...} class names by id
    attributions/<class>.nii.gz  float32 attribution map per explained class on the model grid with its own
                                 affine (the input grid with ``maps_on="input"``; none without maps)
    prediction_model_grid.nii.gz the clean prediction on the maps' model grid (the predicted RoIs)
    attribution_info.json        method, parameters, targets, scores, completeness, timings
    local_importance.csv         case,target,roi,part,mass,mean
    quality.csv                  case,class,dice,iou (with ground truth)

Paths inside ``case.json`` are relative to the case folder (absolute only when no relative path
exists), computed against the folder's final place, never a staging folder. Folders of version 0.1
still load: ``explain`` folders (``attribution_info.json`` and no ``case.json``) and cohort case
folders (``info.json``, maps in ``maps.npz`` when kept, class names from the cohort's model).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.filebasedimages import ImageFileError

from napari_agg2exp.data.geometry import grid_volume, resample_labels, resample_map
from napari_agg2exp.data.labels import as_label_array, label_names_json, read_label_names
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.files import atomic_write, atomic_write_text, safe_file_name
from napari_agg2exp.importance.tables import read_local_table, read_quality_table, write_table

__all__ = ["LAYOUT_VERSION", "CaseData", "CaseFolder", "load_case", "is_case_folder"]

LAYOUT_VERSION = 2
CASE_FILE = "case.json"
PREDICTION = "prediction.nii.gz"
MODEL_PREDICTION = "prediction_model_grid.nii.gz"
LABELS = "labels.json"
ATTRIBUTIONS = "attributions"
ATTRIBUTION_INFO = "attribution_info.json"
LOCAL_TABLE = "local_importance.csv"
QUALITY_TABLE = "quality.csv"
_LEGACY_COHORT_INFO = "info.json"
_LEGACY_MAPS = "maps.npz"
_NIFTI = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _read_json(path: Path, what: str) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Agg2ExpError(f"{path} is not valid JSON ({e}) -- the {what} is damaged; rerun the command") from e
    if not isinstance(raw, dict):
        raise Agg2ExpError(f"{path} must hold a JSON object -- the {what} is damaged; rerun the command")
    return raw


class _LazyMaps(Mapping):
    """target -> attribution array, each read from disk on access (never cached)."""

    def __init__(self, load, names: list[str]):
        self._load, self._names = load, names

    def __getitem__(self, target: str) -> np.ndarray:
        if target not in self._names:
            raise KeyError(target)
        return self._load(target)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class CaseData:
    """A case read from its folder.

    Attributes:
        case_dir: the folder.
        name: case name.
        image: the input scan (None when not loaded).
        prediction: predicted labels on the input grid.
        class_names: class names by id.
        attributions: target -> (X, Y, Z) float32 map on the maps' grid, in class order (read
            from disk on each access unless loaded eagerly); empty when the folder keeps no maps.
        info: ``case.json`` merged with the method information.
        maps_grid: the maps' grid as an empty-array :class:`Volume` (shape and affine): the model grid,
            or the prediction's grid for maps written on the input grid (and folders of version 0.1).
        maps_labels: the clean prediction on the maps' grid (the predicted RoIs for aggregation).
    """

    case_dir: Path
    name: str
    image: Volume | None
    prediction: Volume
    class_names: list[str]
    attributions: Mapping[str, np.ndarray]
    info: dict = field(default_factory=dict)
    maps_grid: Volume | None = None
    maps_labels: Volume | None = None

    @property
    def maps_on_prediction_grid(self) -> bool:
        g = self.maps_grid
        return g is None or (g.shape == self.prediction.shape and np.allclose(g.affine, self.prediction.affine))

    def map_on_image_grid(self, target: str) -> np.ndarray:
        """One map on the prediction's (input) grid, resampled trilinearly when stored on the model grid."""
        a = self.attributions[target]
        if self.maps_on_prediction_grid:
            return a
        return resample_map(Volume(a, self.maps_grid.affine), self.prediction.shape, self.prediction.affine)

    @property
    def ground_truth_path(self) -> Path | None:
        gt = self.info.get("ground_truth")
        return None if not gt else (Path(gt) if Path(gt).is_absolute() else self.case_dir / gt)

    def load_ground_truth(self) -> Volume:
        """The ground-truth label volume named in the case folder, on the prediction grid."""
        p = self.ground_truth_path
        if p is None:
            raise Agg2ExpError(f"case {self.case_dir} names no ground truth -- pass the label file with "
                               "--ground-truth FILE")
        gt = load_volume(p, what="ground truth")
        return Volume(resample_labels(gt, self.prediction), self.prediction.affine, gt.name)


#: Uncompressed bytes per gzip member of :func:`write_float_nifti_gz` (members are compressed in parallel).
_GZIP_BLOCK = 8 << 20


def write_float_nifti_gz(volume: Volume, path: str | os.PathLike) -> Path:
    """A float32 ``.nii.gz``, written atomically, fast: the NIfTI bytes (header and data as nibabel lays them
    out) are gzip-compressed at level 1 in 8 MiB blocks on several threads (zlib releases the GIL), each block a
    gzip member. A multi-member gzip file is standard gzip (RFC 1952 §2.2): nibabel, ``gzip``, ``zcat`` and
    zlib's ``gzread`` (ITK, 3D Slicer) read it as one stream. Memory: one uncompressed copy of the map."""
    aff = np.asarray(volume.affine, float)
    img = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    raw = memoryview(img.to_bytes())
    blocks = [raw[i : i + _GZIP_BLOCK] for i in range(0, len(raw), _GZIP_BLOCK)] or [raw]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            f.writelines(pool.map(lambda b: zlib.compress(b, 1, wbits=31), blocks))

    return atomic_write(path, write)


def is_case_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a case folder of any layout version."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in (CASE_FILE, ATTRIBUTION_INFO, _LEGACY_COHORT_INFO))


class CaseFolder:
    """Read and write one case folder.

    Args:
        path: where the files are (or are being written: a staging folder).
        final: where the folder will live once complete (default: ``path``); paths recorded in
            ``case.json`` are relative to it.
    """

    def __init__(self, path: str | os.PathLike, *, final: str | os.PathLike | None = None):
        self.path = Path(path)
        self.final = Path(final) if final is not None else self.path
        self._files: list[str] = []

    def __repr__(self) -> str:
        return f"CaseFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ writing

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` as recorded in ``case.json``: relative to the folder's final place."""
        p = Path(path).resolve()
        for base in (self.path.resolve(), self.final.resolve()):
            try:
                return p.relative_to(base).as_posix()  # inside the folder (e.g. the demo's sample/)
            except ValueError:
                continue
        try:
            return Path(os.path.relpath(p, self.final.resolve())).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            return str(p)

    def _written(self, name: str) -> Path:
        if name not in self._files:
            self._files.append(name)
        return self.path / name

    def write_prediction(self, prediction: Volume, class_names: Iterable[str]) -> None:
        """``prediction.nii.gz`` (uint8 when the ids fit) and ``labels.json``."""
        dtype = np.uint8 if int(prediction.array.max(initial=0)) < 256 else np.int32
        save_volume(prediction, self._written(PREDICTION), dtype=dtype)
        atomic_write_text(self._written(LABELS), label_names_json(list(class_names)))

    def write_model_prediction(self, labels: Volume) -> None:
        """``prediction_model_grid.nii.gz``: the clean prediction on the maps' model grid."""
        dtype = np.uint8 if int(labels.array.max(initial=0)) < 256 else np.int32
        save_volume(labels, self._written(MODEL_PREDICTION), dtype=dtype)

    def write_attribution(self, target: str, volume: Volume) -> Path:
        """``attributions/<class>.nii.gz`` (float32, gzip level 1 compressed in parallel blocks)."""
        return write_float_nifti_gz(volume, self._written(f"{ATTRIBUTIONS}/{safe_file_name(target)}.nii.gz"))

    def write_attribution_info(self, info: Mapping[str, Any]) -> Path:
        return atomic_write_text(self._written(ATTRIBUTION_INFO), json.dumps(info, indent=2, default=str) + "\n")

    def write_local_importance(self, table: pd.DataFrame) -> Path:
        return write_table(table, self._written(LOCAL_TABLE))

    def write_quality(self, table: pd.DataFrame) -> Path:
        return write_table(table, self._written(QUALITY_TABLE))

    def inputs_record(self, image: Volume | str | os.PathLike | None = None,
                      ground_truth: Volume | str | os.PathLike | None = None,
                      rois: Volume | str | os.PathLike | None = None) -> dict[str, str]:
        """The input files as recorded (relative paths): paths, or the file a volume was read from; volumes
        made in memory are not recorded."""
        given = {"image": image, "ground_truth": ground_truth, "rois": rois}
        paths = {k: v.source if isinstance(v, Volume) else v for k, v in given.items()}
        return {k: self.relative(v) for k, v in paths.items() if isinstance(v, (str, os.PathLike)) and str(v)}

    def write_case(self, case: str, *, model: str | None = None, **extra: Any) -> Path:
        """``case.json``, written last: a folder with it is complete (``extra``: image, ground truth, ...)."""
        record = {"layout": LAYOUT_VERSION, "case": case, **({"model": model} if model else {}), **extra,
                  "files": sorted(set(self._files)), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return atomic_write_text(self.path / CASE_FILE, json.dumps(record, indent=2, default=str) + "\n")

    # ------------------------------------------------------------------ reading

    @property
    def layout(self) -> str:
        """``"2"``, ``"0.1-explain"`` or ``"0.1-cohort"``.

        Raises:
            Agg2ExpError: the path is not a case folder.
        """
        d = self.path
        if not d.is_dir():
            raise Agg2ExpError(f"case folder not found: {d} -- give the output folder of `agg2exp explain` "
                               "(or a COHORT/cases/<case> folder)")
        if (d / CASE_FILE).is_file():
            return "2"
        if (d / ATTRIBUTION_INFO).is_file():
            return "0.1-explain"
        if (d / _LEGACY_COHORT_INFO).is_file():
            return "0.1-cohort"
        raise Agg2ExpError(f"{d} has no {CASE_FILE} (nor the {ATTRIBUTION_INFO} of version 0.1) -- is it the "
                           "output folder of `agg2exp explain` or a COHORT/cases/<case> folder?")

    def info(self) -> dict:
        """``case.json`` merged with the method information (``attribution_info.json``)."""
        layout = self.layout
        if layout == "0.1-cohort":
            return _read_json(self.path / _LEGACY_COHORT_INFO, "cohort case record")
        info: dict = {}
        if (self.path / ATTRIBUTION_INFO).is_file():
            info.update(_read_json(self.path / ATTRIBUTION_INFO, "attribution record"))
        if layout == "2":
            info.update(_read_json(self.path / CASE_FILE, "case record"))
        return info

    def class_names(self) -> list[str]:
        """Class names by id: ``labels.json``, or for a 0.1 cohort case the cohort's model."""
        if (self.path / LABELS).is_file():
            return read_label_names(self.path / LABELS)
        if self.layout == "0.1-cohort":
            names = _cohort_class_names(self.path.parent.parent)
            if names:
                return names
        raise Agg2ExpError(f"{self.path} has no {LABELS} (class names) -- rerun the command that wrote it")

    def prediction(self) -> Volume:
        for name in (PREDICTION, "prediction.nii"):
            if (self.path / name).is_file():
                pred = load_volume(self.path / name, what="prediction")
                return Volume(as_label_array(pred.array), pred.affine, pred.name)
        raise Agg2ExpError(f"{self.path} has no {PREDICTION} -- rerun the command that wrote it")

    def _map_files(self) -> dict[str, Path]:
        """target -> NIfTI map in ``attributions/`` (sorted by file name)."""
        att = self.path / ATTRIBUTIONS
        return {_stem(p): p for p in sorted(att.iterdir()) if p.name.endswith(_NIFTI)} if att.is_dir() else {}

    def attribution_names(self) -> list[str]:
        """Targets with a stored map (file stems), unordered."""
        if (self.path / ATTRIBUTIONS).is_dir():
            return list(self._map_files())
        if (self.path / _LEGACY_MAPS).is_file():
            with np.load(self.path / _LEGACY_MAPS) as z:
                return [k for k in z.files if k != "affine"]
        return []

    def maps_grid(self) -> Volume | None:
        """The stored maps' grid (shape and affine, read from the first map's header), or None."""
        files = list(self._map_files().values())
        if not files:
            return None
        try:
            img = nib.load(str(files[0]))
            shape, affine = tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, float)
        except (OSError, ValueError, EOFError, zlib.error, ImageFileError) as e:  # what nibabel raises for broken files
            raise Agg2ExpError(f"cannot read {files[0]} ({type(e).__name__}) -- the case folder is damaged") from e
        return grid_volume(shape, affine)

    def attribution(self, target: str, shape: tuple[int, ...] | None = None,
                    files: dict[str, Path] | None = None) -> np.ndarray:
        """One stored map as float32, on the maps' grid (``files``: :meth:`_map_files`, listed once by a caller
        reading many maps)."""
        att = self.path / ATTRIBUTIONS
        if att.is_dir():
            files = self._map_files() if files is None else files
            if target not in files:
                raise Agg2ExpError(f"no attribution map for {target!r} in {att}")
            arr = np.asarray(load_volume(files[target], what=f"attribution map of {target!r}").array, np.float32)
        else:
            with np.load(self.path / _LEGACY_MAPS) as z:
                arr = np.asarray(z[target], np.float32)
        if shape is not None and arr.shape != tuple(shape):
            raise Agg2ExpError(f"the attribution map of {target!r} in {self.path} has shape {arr.shape} but the "
                               f"prediction has shape {tuple(shape)} -- the case folder is inconsistent; rerun")
        return arr

    def local_importance(self) -> pd.DataFrame | None:
        p = self.path / LOCAL_TABLE
        return read_local_table(p) if p.is_file() else None

    def quality(self) -> pd.DataFrame | None:
        p = self.path / QUALITY_TABLE
        return read_quality_table(p) if p.is_file() else None

    def image_path(self, info: Mapping[str, Any] | None = None) -> Path | None:
        img = (self.info() if info is None else info).get("image")
        return None if not img else (Path(img) if Path(img).is_absolute() else self.path / img)

    def load(self, *, load_image: bool = True, lazy: bool = True, targets: Iterable[str] | None = None,
             require_maps: bool = True) -> CaseData:
        """Read the case.

        Args:
            load_image: also read the input scan named in the folder (needed for figures).
            lazy: read attribution maps on access (one at a time) instead of all now.
            targets: only these targets (default: every stored map).
            require_maps: refuse a folder without attribution maps.

        Raises:
            Agg2ExpError: the folder or one of its pieces is missing or unreadable, with what to do.
        """
        info = self.info()
        layout = self.layout
        class_names = self.class_names()
        prediction = self.prediction()
        names = self.attribution_names()
        if not names and require_maps:
            if layout == "0.1-cohort" or (layout == "2" and not (self.path / ATTRIBUTIONS).exists()):
                raise Agg2ExpError(f"{self.path} keeps no attribution maps -- rerun the cohort with --keep-maps "
                                   "(or explain the case with `agg2exp explain`)")
            where = self.path / ATTRIBUTIONS
            raise Agg2ExpError(f"{where} holds no attribution maps (<class>.nii.gz) -- rerun agg2exp explain"
                               if where.is_dir() else f"{self.path} has no {ATTRIBUTIONS}/ folder -- rerun agg2exp explain")
        rank = {safe_file_name(n): i for i, n in enumerate(class_names)}
        ordered = sorted(names, key=lambda t: (rank.get(t, len(rank)), t))
        if targets is not None:
            wanted = list(targets)
            missing = [t for t in wanted if t not in names]
            if missing:
                raise Agg2ExpError(f"no attribution map for {missing} in {self.path} -- available: {', '.join(ordered)}")
            ordered = [t for t in ordered if t in set(wanted)]
        grid, maps_labels = self.maps_grid(), None
        if grid is not None and (grid.shape != prediction.shape or not np.allclose(grid.affine, prediction.affine)):
            if not (self.path / MODEL_PREDICTION).is_file():
                raise Agg2ExpError(f"{self.path} has maps on the model grid but no {MODEL_PREDICTION} -- rerun the "
                                   "command that wrote it")
            mp = load_volume(self.path / MODEL_PREDICTION, what="model-grid prediction")
            maps_labels = Volume(as_label_array(mp.array), mp.affine, mp.name)
        shape = prediction.shape if grid is None else grid.shape
        files = self._map_files()
        maps: Mapping[str, np.ndarray] = _LazyMaps(lambda t: self.attribution(t, shape, files), ordered)
        if not lazy:
            maps = {t: maps[t] for t in ordered}
        image = None
        if load_image:
            img = self.image_path(info)
            if img is None:
                raise Agg2ExpError(f"{self.path} does not name the input image (\"image\") -- rerun the command")
            image = load_volume(img, what="input image (named in the case folder)")
            if image.shape != prediction.shape:
                raise Agg2ExpError(f"input image {img} has shape {image.shape} but the prediction has shape "
                                   f"{prediction.shape} -- the case folder names the wrong image")
        name = str(info.get("case") or self.path.name)
        return CaseData(self.path, name, image, prediction, class_names, maps, info, grid, maps_labels)


def _cohort_class_names(cohort_dir: Path) -> list[str] | None:
    """Class names of a 0.1 cohort from its ``cohort.json`` (labels file or model spec), if readable."""
    p = cohort_dir / "cohort.json"
    if not p.is_file():
        return None
    try:
        fp = _read_json(p, "cohort record").get("fingerprint") or {}
        if fp.get("label_names"):
            return read_label_names(fp["label_names"])
        model = Path(fp.get("model") or "")
        spec = model / "model.json" if model.is_dir() else model
        if spec.is_file() and spec.suffix == ".json":
            return [str(n) for n in _read_json(spec, "model spec").get("class_names", [])] or None
    except Agg2ExpError:
        return None
    return None


def load_case(case_dir: str | os.PathLike, *, load_image: bool = True, lazy: bool = True,
              targets: Iterable[str] | None = None, require_maps: bool = True) -> CaseData:
    """Read a case folder of any layout version (see :meth:`CaseFolder.load`)."""
    return CaseFolder(case_dir).load(load_image=load_image, lazy=lazy, targets=targets, require_maps=require_maps)
