"""What a full-size run costs (issue 12 items 4, 5, 6): one table, everything measured side by side in one run.

Parts (``--part``, repeatable; default all):

- ``phantom``: a full-size phantom (512x512x300 at 0.8x0.8x1.5 mm) with the bundled model: windows, seconds
  and peak RSS for segmentation, VG (all predicted classes) and SmoothGrad (n=20, a subset of the classes),
  per class, and a whole case written to a case folder (``run_case(out=CaseFolder)``).
- ``classes``: the 105-class SegResNet bundle (width 8, random weights) explaining 20 classes, then every
  predicted class, with VG, maps streamed to a case folder: peak RSS of each and their ratio (target <= 1.3x
  and < 8 GB). Random weights predict only about half of the 105 classes, so the last layer's biases are
  first balanced on the phantom (:func:`stage_balance`) until every class is predicted; the number of classes
  actually explained is printed.
- ``swin``: a SwinUNETR bundle (feature size 48, random weights) on a 2x2x2-window crop of the phantom on the
  CPU: segmentation, VG per class; and VG for 3 classes ours vs by hand (captum ``Saliency(abs=False)`` over
  MONAI ``sliding_window_inference``, one class at a time) on the largest crop where the by-hand version fits
  in memory, as a ratio.
- ``write``: item 5, a 0.75 mm input (384x320x192) with the bundled model, VG for every class: compute time
  (``run_case`` without output) vs the whole run writing a case folder (target <= 2x).

Every measured stage runs in its own subprocess, so ``ru_maxrss`` (peak RSS) is that stage's alone; a sampling
thread gives the peak of the step inside the stage (e.g. VG after the segmentation). Images are drawn once into
``--work`` and read by the stages (drawing a full-size phantom takes ~5 GB of its own).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--part phantom|classes|swin|write] [--quick] [--work DIR]``
(on 2 CPU cores: ``classes`` about 1.5 hours -- VG of 105 classes over 64 windows -- the other parts about
15 minutes; ``--quick`` is a smoke test on small grids, its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("phantom", "classes", "swin", "write")
GB = 1 << 30

# grids: (shape, spacing) of the full run and of --quick
FULL = {"phantom": ((512, 512, 300), (0.8, 0.8, 1.5)), "write": ((384, 320, 192), (0.75, 0.75, 0.75))}
QUICK = {"phantom": ((112, 112, 64), (1.6, 1.6, 2.4)), "write": ((128, 106, 64), (2.25, 2.25, 2.25)),
         "classes": ((40, 40, 32), (3.0, 3.0, 3.0))}


class Rows(list):
    """The table's rows; each is also printed as it comes (a run cut short still shows what it measured)."""

    def append(self, row) -> None:
        super().append(row)
        print("[bench_scale] | " + " | ".join(str(v) for v in row) + " |", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- measuring

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """Peak RSS (bytes) inside a ``with`` block, sampled every 20 ms by a thread; ``.seconds`` its duration."""

    def __enter__(self) -> Peak:
        self.peak, self._stop = _rss(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self._t0 = time.perf_counter()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def _trim() -> None:
    """Give freed heap back to the OS between steps, so one step's peak is not the previous step's leftovers."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# ------------------------------------------------------------------------------------------ models, images

def _bundles():
    """``tests/bundles.py`` (the bundle builders of the test suite) if it is there, else ``None``."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import bundles
    except ImportError:
        return None
    return bundles


def _wholebody_model(work: Path, roi: int, note: list, balanced: bool = False):
    """The 105-class SegResNet (width 8, random weights) as a MONAI bundle, or built directly.

    ``balanced``: the bundle written by :func:`stage_balance` (same weights, last-layer biases balanced).
    """
    from napari_agg2exp.models.loading import load_model

    bundles = _bundles()
    if bundles is not None:
        path = work / f"wholebody_w8_{roi}"
        if not (path / "configs" / "inference.json").exists():
            bundles.write_bundle("wholebody_ct", path, width=8, roi_size=roi, seed=0)
        if balanced and (work / f"wholebody_w8_{roi}_balanced" / "models" / "model.pt").exists():
            path = work / f"wholebody_w8_{roi}_balanced"
            note.append("105-class model: the tests/bundles.py bundle (seed 0) with its last-layer biases balanced on "
                        "the phantom so that every class is predicted (stage_balance)")
        note.append("105-class model: MONAI bundle from tests/bundles.py, load_model(BUNDLE, trust_bundle=True)")
        return load_model(path, trust_bundle=True, device="cpu")
    import torch
    from monai.networks.nets import SegResNet

    from napari_agg2exp.data.preprocessing import PreprocessingSpec
    from napari_agg2exp.models.model import SegmentationModel

    note.append("105-class model: tests/bundles.py absent -- SegResNet(init_filters=8, out_channels=105) built "
                "directly, PreprocessingSpec at 1.5 mm (not a bundle)")
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=8, blocks_down=(1, 2, 2, 4),
                    blocks_up=(1, 1, 1)).eval()
    return SegmentationModel(net, [f"class_{i}" for i in range(105)], PreprocessingSpec(spacing=(1.5, 1.5, 1.5)),
                             (roi,) * 3, torch.device("cpu"), "segresnet-w8", overlap=0.25, blend="gaussian")


def _swin_model(work: Path, width: int, roi: int, note: list):
    from napari_agg2exp.models.loading import load_model

    bundles = _bundles()
    if bundles is not None:
        path = work / f"swin_{width}_{roi}"
        if not (path / "configs" / "inference.json").exists():
            bundles.write_bundle("swin_unetr_btcv", path, width=width, roi_size=roi, seed=0)
        note.append(f"SwinUNETR: MONAI bundle (feature size {width}) from tests/bundles.py")
        return load_model(path, device="cpu")
    import torch
    from monai.networks.nets import SwinUNETR

    from napari_agg2exp.data.preprocessing import PreprocessingSpec
    from napari_agg2exp.models.model import SegmentationModel

    note.append(f"SwinUNETR: tests/bundles.py absent -- built directly (feature size {width}, 14 classes)")
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=width).eval()
    spec = PreprocessingSpec(spacing=(1.5, 1.5, 2.0), a_min=-175, a_max=250)
    return SegmentationModel(net, [f"class_{i}" for i in range(14)], spec, (roi,) * 3, torch.device("cpu"),
                             "swin", overlap=0.5)


def _image(path: str):
    from napari_agg2exp.data.volume import load_volume

    return load_volume(path)


def _crop(image, shape):
    """The centre ``shape`` voxels of ``image`` (affine moved to the crop)."""
    import numpy as np

    from napari_agg2exp.data.volume import Volume

    lo = [max(0, (n - s) // 2) for n, s in zip(image.shape, shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(lo, shape))
    aff = image.affine.copy()
    aff[:3, 3] = image.affine[:3, :3] @ np.array(lo, dtype=float) + image.affine[:3, 3]
    return Volume(np.ascontiguousarray(image.array[sl]), aff, "crop")


# ------------------------------------------------------------------------------------- stages (subprocess)

def stage_draw(p: dict) -> dict:
    from napari_agg2exp.data.phantom import make_phantom
    from napari_agg2exp.data.volume import save_volume

    import numpy as np

    with Peak() as pk:
        case = make_phantom(0, shape=tuple(p["shape"]), spacing=tuple(p["spacing"]))
    with Peak() as wr:
        save_volume(np.asarray(case.image, dtype=np.int16), p["path"], case.affine)
    return {"draw_s": pk.seconds, "draw_peak": pk.peak, "save_s": wr.seconds}


def _prepare(model, image, out: dict, key: str = "seg"):
    from napari_agg2exp.models.prepared import prepare_case

    _trim()
    with Peak() as pk:
        prepared = prepare_case(model, image)
    out.update({f"{key}_s": pk.seconds, f"{key}_peak": pk.peak, "windows": len(prepared.plan),
                "model_grid": list(prepared.plan.shape), "present": len(prepared.present)})
    return prepared


def stage_bundled(p: dict) -> dict:
    """Bundled model on an image: segmentation, then one of VG / SG / a written case folder."""
    from napari_agg2exp.attribution.explainer import Explainer
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.workflows.case import run_case
    from napari_agg2exp.workflows.case_folder import CaseFolder

    out: dict = {}
    model = load_model(device="cpu")
    image = _image(p["image"])
    prepared = _prepare(model, image, out)
    ids = prepared.present
    _trim()
    if p["what"] == "vg":
        with Peak() as pk:
            Explainer("vg").attribute(prepared, ids)
        out.update(classes=len(ids), vg_s=pk.seconds, vg_peak=pk.peak)
    elif p["what"] == "sg":
        sub = [c for c in ids if c != 0][: p["sg_classes"]]
        with Peak() as pk:
            Explainer("sg", nt_samples=p["sg_n"]).attribute(prepared, sub)
        out.update(classes=len(sub), sg_s=pk.seconds, sg_peak=pk.peak, sg_n=p["sg_n"])
    else:  # a whole case written: segmentation reused, VG every class, maps streamed to the folder
        folder = Path(p["folder"])
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with Peak() as pk:
            run_case(model, image, prepared=prepared, explainer=Explainer("vg"), out=CaseFolder(folder),
                     maps_on=p.get("maps_on", "model"))
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        out.update(classes=len(ids), case_s=pk.seconds, case_peak=pk.peak, written_bytes=size)
    return out


def _progress_log(path: Path):
    """A progress callback that appends ``done/total, elapsed, ETA, RSS, message`` to ``path`` (long stages)."""
    t0, last = time.perf_counter(), [0.0]

    def progress(done: int, total: int, message: str = "") -> None:
        now = time.perf_counter() - t0
        if now - last[0] < 30 and done < total:
            return
        last[0] = now
        eta = now / done * (total - done) if done else float("nan")
        with open(path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {done}/{total} elapsed {now:.0f}s eta {eta:.0f}s "
                    f"rss {_rss() / GB:.2f} GB {message}\n")

    return progress


def stage_balance(p: dict) -> dict:
    """Balance the 105-class bundle's last-layer biases on the phantom so that every class is predicted.

    Random weights predict about half of the 105 classes, and a class that is not predicted has nothing to
    explain. The weights stay as they are; only the final 1x1x1 convolution's biases move: its inputs (the
    8 feature channels) are sampled at 4096 voxels of every window during one segmentation, and the biases
    are raised for rare classes and lowered for common ones until every class wins on at least 0.3/C of the
    samples. The result is written as a copy of the bundle (``wholebody_w8_<roi>_balanced``).
    """
    import torch

    from napari_agg2exp.models.prepared import prepare_case

    work, roi, note = Path(p["work"]), p["roi"], []
    model = _wholebody_model(work, roi, note)
    src = work / f"wholebody_w8_{roi}"
    name, last = [(n, m) for n, m in model.network.named_modules() if isinstance(m, torch.nn.Conv3d)][-1]
    gen, samples = torch.Generator().manual_seed(0), []

    def sample(_module, inputs):
        h = inputs[0].detach().flatten(2)  # (B, F, voxels)
        idx = torch.randint(h.shape[-1], (4096,), generator=gen)
        samples.append(h[..., idx].permute(0, 2, 1).reshape(-1, h.shape[1]))

    handle = last.register_forward_pre_hook(sample)
    try:
        before = len(prepare_case(model, _image(p["image"])).present)
    finally:
        handle.remove()
    feats = torch.cat(samples).double()
    logits = feats @ last.weight.detach().double().flatten(1).T
    bias = last.bias.detach().double().clone()
    n_cls, step = logits.shape[1], 0.05 * float(logits.std())
    for it in range(5000):
        freq = torch.bincount((logits + bias).argmax(1), minlength=n_cls).double() / len(feats)
        if float(freq.min()) >= 0.3 / n_cls:
            break
        bias += step * torch.clamp(1 - freq * n_cls, -1, 1)
    dst = work / f"wholebody_w8_{roi}_balanced"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    state = torch.load(src / "models" / "model.pt", weights_only=True)
    key = next(k for k in state if k.endswith(".bias") and (name.endswith(k[:-5]) or k[:-5].endswith(name)))
    state[key] = bias.to(state[key].dtype)
    torch.save(state, dst / "models" / "model.pt")
    return {"before": before, "sampled": len(feats), "iterations": it + 1,
            "classes_in_sample": int((freq > 0).sum()), "min_share": float(freq.min()) * n_cls,
            "note": note}


def stage_run_case(p: dict) -> dict:
    """One ``run_case`` from the image (segmentation included), with or without a case folder."""
    from napari_agg2exp.attribution.explainer import Explainer
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.workflows.case import run_case
    from napari_agg2exp.workflows.case_folder import CaseFolder

    note: list = []
    if p["model"] == "bundled":
        model = load_model(device="cpu")
    else:
        model = _wholebody_model(Path(p["work"]), p["roi"], note, balanced=p.get("balanced", False))
    image = _image(p["image"])
    folder = None
    if p.get("folder"):
        folder = Path(p["folder"])
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    targets, seg_peak = None, None
    if p.get("n_targets") is not None:  # the first n predicted classes (0: all): segment once here, apart
        from napari_agg2exp.models.prepared import prepare_case

        with Peak() as sp:
            prepared = prepare_case(model, image)
        seg_s, seg_peak = sp.seconds, sp.peak
        targets = prepared.present[: p["n_targets"]] if p["n_targets"] else prepared.present
    else:
        prepared, seg_s = None, None
    _trim()
    with Peak() as pk:
        res = run_case(model, image, prepared=prepared, explainer=Explainer("vg"), targets=targets,
                       out=CaseFolder(folder) if folder else None, maps_on=p.get("maps_on", "model"),
                       progress=_progress_log(Path(p["log"])) if p.get("log") else None)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder else 0
    return {"run_s": pk.seconds, "run_peak": pk.peak, "seg_s": seg_s, "seg_peak": seg_peak,
            "windows": len(res.prepared.plan),
            "classes": len(res.explanation.targets) if res.explanation is not None else 0,
            "present": len(res.prepared.present), "written_bytes": size, "note": note}


def stage_swin_ours(p: dict) -> dict:
    from napari_agg2exp.attribution.explainer import Explainer

    note: list = []
    model = _swin_model(Path(p["work"]), p["width"], p["roi"], note)
    image = _crop(_image(p["image"]), p["crop"])
    out: dict = {"note": note}
    prepared = _prepare(model, image, out)
    ids = [c for c in prepared.present if c != 0][: p["classes"]] or prepared.present[: p["classes"]]
    _trim()
    with Peak() as pk:
        Explainer("vg").attribute(prepared, ids)
    out.update(classes=len(ids), vg_s=pk.seconds, vg_peak=pk.peak)
    return out


def stage_swin_hand(p: dict) -> dict:
    """VG by hand: captum ``Saliency(abs=False)`` over MONAI ``sliding_window_inference``, one class at a time."""
    import torch
    from captum.attr import Saliency
    from monai.inferers import sliding_window_inference

    from napari_agg2exp.models.prepared import prepare_case

    note: list = []
    model = _swin_model(Path(p["work"]), p["width"], p["roi"], note)
    image = _crop(_image(p["image"]), p["crop"])
    prepared = prepare_case(model, image)  # (untimed: the masks M_c)
    ids = [c for c in prepared.present if c != 0][: p["classes"]] or prepared.present[: p["classes"]]
    net, roi = model.network, model.window_size
    for q in net.parameters():
        q.requires_grad_(False)
    labels = torch.as_tensor(prepared.labels).long()
    x = prepared.inputs[None, None].clone()
    _trim()
    with Peak() as pk:
        for c in ids:
            m = (labels == c).float()

            def f(inp, c=c, m=m):
                z = sliding_window_inference(inp, roi, 1, net, overlap=prepared.plan.overlap, mode=prepared.plan.blend)
                return (z[:, c] * m).flatten(1).sum(1)

            Saliency(f).attribute(x, abs=False)
    return {"classes": len(ids), "hand_s": pk.seconds, "hand_peak": pk.peak, "windows": len(prepared.plan),
            "note": note}


STAGES = {"draw": stage_draw, "bundled": stage_bundled, "balance": stage_balance, "run_case": stage_run_case, "swin_ours": stage_swin_ours,
          "swin_hand": stage_swin_hand}


def _child(stage: str, params: dict) -> None:
    import torch

    from napari_agg2exp.malloc_tuning import tune_malloc

    tune_malloc()  # as the agg2exp CLI does
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    out = STAGES[stage](params)
    out["max_rss"] = _max_rss()
    print("RESULT " + json.dumps(out))


def run_stage(stage: str, params: dict, label: str) -> dict:
    """Run a stage in a fresh process; its result with ``max_rss`` (peak RSS of that process)."""
    t0 = time.perf_counter()
    print(f"[bench_scale] {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--params", json.dumps(params)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"[bench_scale] {label} FAILED (exit {proc.returncode}): {' | '.join(tail)}", file=sys.stderr)
        return {"failed": " | ".join(tail)[-300:]}
    res = json.loads(lines[-1][len("RESULT "):])
    print(f"[bench_scale] {label} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return res


# -------------------------------------------------------------------------------------------------- parts

def _gb(b) -> str:
    return "-" if b is None else f"{b / GB:.2f} GB"


def _s(s) -> str:
    return "-" if s is None else f"{s:.1f} s"


def _phantom_file(work: Path, grid, name: str, threads) -> str:
    path = work / f"{name}_{'x'.join(map(str, grid[0]))}.nii.gz"
    if not path.exists():
        r = run_stage("draw", {"shape": grid[0], "spacing": grid[1], "path": str(path), "threads": threads},
                      f"draw phantom {grid[0]}")
        if "failed" in r:
            raise SystemExit(f"could not draw the phantom: {r['failed']}")
        return str(path), r
    return str(path), None


def part_phantom(a, rows: list, notes: list) -> None:
    grid = (QUICK if a.quick else FULL)["phantom"]
    img, drawn = _phantom_file(a.work, grid, "phantom", a.threads)
    tag = f"phantom {grid[0][0]}x{grid[0][1]}x{grid[0][2]} @ {'x'.join(map(str, grid[1]))} mm, bundled model"
    if drawn:
        rows.append((tag, "draw phantom (make_phantom)", _s(drawn["draw_s"]), _gb(drawn["max_rss"])))
    sg_classes, sg_n = (1, 2) if a.quick else (2, 20)
    vg = run_stage("bundled", {"image": img, "what": "vg", "threads": a.threads}, "phantom: segmentation + VG")
    sg = run_stage("bundled", {"image": img, "what": "sg", "sg_classes": sg_classes, "sg_n": sg_n,
                               "threads": a.threads}, "phantom: SmoothGrad")
    wr = run_stage("bundled", {"image": img, "what": "case", "folder": str(a.work / "case_phantom"),
                               "threads": a.threads}, "phantom: case folder")
    if "failed" not in vg:
        rows.append((tag, f"segmentation ({vg['windows']} windows, model grid {vg['model_grid']})", _s(vg["seg_s"]),
                     _gb(vg["seg_peak"])))
        rows.append((tag, f"VG, {vg['classes']} classes: per class", _s(vg["vg_s"] / vg["classes"]),
                     f"{_gb(vg['vg_peak'])} (process {_gb(vg['max_rss'])})"))
    if "failed" not in sg:
        rows.append((tag, f"SmoothGrad n={sg['sg_n']}, {sg['classes']} class(es): per class",
                     _s(sg["sg_s"] / sg["classes"]), f"{_gb(sg['sg_peak'])} (process {_gb(sg['max_rss'])})"))
    if "failed" not in wr:
        vg_s = vg.get("vg_s")
        extra = f", writing ~ {wr['case_s'] - vg_s:.1f} s" if vg_s is not None else ""
        rows.append((tag, f"case folder: VG {wr['classes']} classes + maps + tables "
                          f"({wr['written_bytes'] / 1e6:.0f} MB){extra}", _s(wr["case_s"]),
                     f"{_gb(wr['case_peak'])} (process {_gb(wr['max_rss'])})"))
    for name, r in (("VG", vg), ("SG", sg), ("case", wr)):
        if "failed" in r:
            rows.append((tag, f"{name} FAILED", r["failed"], "-"))


def part_classes(a, rows: list, notes: list) -> None:
    grid = QUICK["classes"] if a.quick else FULL["phantom"]
    img, _ = _phantom_file(a.work, grid, "classes" if a.quick else "phantom", a.threads)
    roi = 64 if a.quick else 96
    few = 3 if a.quick else 20
    tag = f"105-class SegResNet w8, VG, phantom {grid[0][0]}x{grid[0][1]}x{grid[0][2]}"
    bal = run_stage("balance", {"image": img, "roi": roi, "work": str(a.work), "threads": a.threads},
                    "classes: balance the last-layer biases so that every class is predicted")
    if "failed" in bal:
        rows.append((tag, "balancing the biases FAILED (the unbalanced bundle is used)", bal["failed"], "-"))
    else:
        notes.append(f"105-class model: random weights predict {bal['before']} of 105 classes on this phantom; the last "
                     f"layer's biases were balanced on {bal['sampled']} sampled voxels ({bal['iterations']} steps, "
                     f"{bal['classes_in_sample']} classes in the sample, rarest at {bal['min_share']:.2f}/C)")
    res = {}
    for n in (few, 0):
        label = f"classes: {n or 'all predicted'}"
        log = a.work / f"progress_classes_{n}.log"
        print(f"[bench_scale] progress with ETA: {log}", file=sys.stderr, flush=True)
        res[n] = run_stage("run_case", {"image": img, "model": "wholebody", "roi": roi, "work": str(a.work),
                                        "n_targets": n, "folder": str(a.work / f"case_classes_{n}"),
                                        "threads": a.threads, "log": str(log), "balanced": "failed" not in bal},
                           label)
        r = res[n]
        if "failed" in r:
            rows.append((tag, f"{label} FAILED", r["failed"], "-"))
            continue
        notes.extend(x for x in r["note"] if x not in notes)
        rows.append((tag, f"segmentation ({r['present']} classes predicted, {r['windows']} windows), "
                          "streamed", _s(r["seg_s"]), _gb(r["seg_peak"])))
        rows.append((tag, f"VG {r['classes']} classes + maps + local importance, streamed to the case folder "
                          f"(maps {r['written_bytes'] / 1e6:.0f} MB)", _s(r["run_s"]),
                     f"{_gb(r['run_peak'])} (process {_gb(r['max_rss'])})"))
    if all("failed" not in r for r in res.values()):
        for what, key in (("explanation", "run_peak"), ("process", "max_rss")):
            ratio = res[0][key] / res[few][key]
            ok = ratio <= 1.3 and res[0][key] < 8 * GB
            rows.append((tag, f"peak RSS ratio all/{few}, {what} (target <= 1.3, < 8 GB)", f"{ratio:.2f}x",
                         "OK" if ok else "OVER TARGET"))


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * GB


def part_swin(a, rows: list, notes: list) -> None:
    grid = (QUICK if a.quick else FULL)["phantom"]
    img, _ = _phantom_file(a.work, grid, "phantom", a.threads)
    width, roi = (12, 64) if a.quick else (48, 96)
    model_sp, in_sp = (1.5, 1.5, 2.0), grid[1]

    def crop(nx, ny, nz):  # input voxels whose model grid is nx x ny x nz windows at overlap 0.5
        return [int(round((roi + (n - 1) * roi // 2) * m / s)) for n, m, s in zip((nx, ny, nz), model_sp, in_sp)]

    tag = f"SwinUNETR fs{width} (random), {roi}^3 windows, CPU"
    base = {"image": img, "width": width, "roi": roi, "work": str(a.work), "threads": a.threads}
    ours = run_stage("swin_ours", {**base, "crop": crop(2, 2, 2), "classes": 1}, "swin: ours on 2x2x2 windows")
    if "failed" in ours:
        rows.append((tag, "FAILED", ours["failed"], "-"))
        return
    notes.extend(x for x in ours["note"] if x not in notes)
    rows.append((tag, f"segmentation, {ours['windows']} windows (model grid {ours['model_grid']})", _s(ours["seg_s"]),
                 _gb(ours["seg_peak"])))
    rows.append((tag, "VG per class (one window graph at a time)", _s(ours["vg_s"] / ours["classes"]),
                 f"{_gb(ours['vg_peak'])} (process {_gb(ours['max_rss'])})"))
    # by hand: MONAI keeps every window's graph until the backward -> pick the largest crop that fits
    # one window's graph: VG's peak holds one window's graph (plus the model and the inputs); the
    # segmentation's peak is no baseline (SwinUNETR's no-grad forward peaks higher than one graph)
    graph = max(0.8 * ours["vg_peak"], 0.5 * GB)
    avail = _mem_available()
    for n in ((2, 2, 2), (1, 2, 2), (1, 1, 2), (1, 1, 1)):
        if n[0] * n[1] * n[2] * graph < 0.6 * avail:
            break
    else:
        n = None
    if n is None:
        rows.append((tag, "by hand: does not fit in memory even on one window", "-", _gb(avail)))
        return
    p3 = {**base, "crop": crop(*n), "classes": 3}
    o3 = run_stage("swin_ours", p3, f"swin: ours, 3 classes on {n}")
    h3 = run_stage("swin_hand", p3, f"swin: by hand, 3 classes on {n}")
    where = f"{'x'.join(map(str, n))} windows"
    if n != (2, 2, 2):
        rows.append((tag, f"by hand on 2x2x2 windows: needs ~{_gb(8 * graph)}, {_gb(avail)} available: "
                          f"compared on {where}", "-", "-"))
    if "failed" in o3 or "failed" in h3:
        rows.append((tag, "ours vs by hand FAILED", (o3.get("failed") or h3.get("failed")), "-"))
        return
    rows.append((tag, f"VG {o3['classes']} classes on {where}: ours", _s(o3["vg_s"]), _gb(o3["vg_peak"])))
    rows.append((tag, f"VG {h3['classes']} classes on {where}: by hand (captum over MONAI)", _s(h3["hand_s"]),
                 _gb(h3["hand_peak"])))
    rows.append((tag, "by hand / ours (time, peak memory)", f"{h3['hand_s'] / o3['vg_s']:.2f}x",
                 f"{h3['hand_peak'] / o3['vg_peak']:.2f}x"))


def part_write(a, rows: list, notes: list) -> None:
    grid = (QUICK if a.quick else FULL)["write"]
    img, _ = _phantom_file(a.work, grid, "write", a.threads)
    tag = f"{grid[0][0]}x{grid[0][1]}x{grid[0][2]} @ {grid[1][0]} mm, bundled model, VG all classes"
    base = {"image": img, "model": "bundled", "work": str(a.work), "threads": a.threads}
    comp = run_stage("run_case", base, "write: compute only")
    runs = {"model": run_stage("run_case", {**base, "folder": str(a.work / "case_write_model")},
                               "write: case folder, maps on the model grid")}
    if not a.quick:
        runs["input"] = run_stage("run_case", {**base, "folder": str(a.work / "case_write_input"), "maps_on": "input"},
                                  "write: case folder, maps on the input grid")
    if "failed" in comp:
        rows.append((tag, "compute FAILED", comp["failed"], "-"))
        return
    rows.append((tag, f"compute: segmentation + VG {comp['classes']} classes, no output", _s(comp["run_s"]),
                 _gb(comp["max_rss"])))
    for on, r in runs.items():
        if "failed" in r:
            rows.append((tag, f"maps on {on} grid FAILED", r["failed"], "-"))
            continue
        ratio = r["run_s"] / comp["run_s"]
        rows.append((tag, f"whole run writing the case folder, maps on the {on} grid "
                          f"({r['written_bytes'] / 1e6:.0f} MB): total / compute = {ratio:.2f}x "
                          f"(target <= 2){'' if on == 'model' else ' (--maps-on input)'}",
                     _s(r["run_s"]), _gb(r["max_rss"])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", action="append", choices=PARTS, help="part to run (repeatable; default all)")
    ap.add_argument("--quick", action="store_true", help="smoke test on small grids (numbers mean nothing)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/agg2exp_bench_scale"),
                    help="folder for the phantoms, bundles and case folders (kept between runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per stage (default: torch's)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage:
        _child(a.stage, json.loads(a.params))
        return 0
    a.work = a.work / ("quick" if a.quick else "full")
    a.work.mkdir(parents=True, exist_ok=True)
    rows: list = Rows()
    notes: list = []
    t0 = time.perf_counter()
    funcs = {"phantom": part_phantom, "classes": part_classes, "swin": part_swin, "write": part_write}
    for part in a.part or PARTS:
        funcs[part](a, rows, notes)
    import torch

    print(f"\nbench_scale ({'QUICK smoke test, numbers mean nothing' if a.quick else 'full'}): "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print("| setting | measurement | seconds | peak RSS |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r) + " |")
    for n in notes:
        print(f"\nnote: {n}")
    (a.work / "bench_scale.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
