"""Attribution engine benchmark (issue 3): prints one table, everything measured side by side in one run.

1. VG for all classes of a phantom with the bundled model:
   - ours (one forward per window, one VJP per present (window, class)),
   - what a user writes by hand: captum ``Saliency`` over MONAI ``sliding_window_inference``, one class at a time,
   - the floor: one no-grad forward per window + one backward per present (window, class), timed here.
2. KernelSHAP semantic for all C classes vs captum ``KernelShap`` run once per class (same samples).
3. Peak memory (max RSS of a fresh process) of VG for all classes on a 256³ volume.
4. On CUDA: batched-class VJPs (``is_grads_batched``) vs sequential per-class backward.

Run: ``.venv/bin/python benchmarks/bench_attribution.py [--model DIR] [--shap-samples 40] [--skip-memory]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _setup(model_path, device):
    from napari_agg2exp.models.inference import SlidingWindow, sliding_window_logits
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.data.phantom.cases import make_phantom
    from napari_agg2exp.data.preprocessing import preprocess

    model = load_model(model_path, device=device)
    for p in model.network.parameters():
        p.requires_grad_(False)
    image = make_phantom(4242).volumes()[0]
    pre = preprocess(image, model.preprocessing, model.window_size)
    x = torch.from_numpy(pre.array).to(model.device)
    plan = SlidingWindow.plan(pre.array.shape, model.window_size, 0.25, "constant", device=model.device)
    labels = sliding_window_logits(model.network, x[None], plan).argmax(0)
    classes = sorted(torch.unique(labels).tolist())
    return model, x, plan, labels, classes


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_vg(model, x, plan, labels, classes):
    from captum.attr import Saliency as CaptumSaliency
    from monai.inferers import sliding_window_inference

    from napari_agg2exp.attribution import Saliency, SlidingWindowTarget

    net, dev = model.network, model.device
    # warm-up (untimed): oneDNN primitives and the allocator's heap, so that nobody pays for them
    Saliency(SlidingWindowTarget(net, plan, labels, classes[:2], batch_classes=False)).attribute(x)
    # ours
    _sync(dev)
    t0 = time.perf_counter()
    fwd = SlidingWindowTarget(net, plan, labels, classes, batch_classes=False)
    ours = Saliency(fwd).attribute(x)
    _sync(dev)
    t_ours = time.perf_counter() - t0
    # by hand: captum Saliency over MONAI sliding_window_inference, one class at a time
    t0 = time.perf_counter()
    ref = []
    for c in classes:
        m = (labels == c).float()

        def f(inp, c=c, m=m):
            z = sliding_window_inference(inp, model.window_size, 1, net, overlap=0.25, mode="constant")
            return (z[:, c] * m).flatten(1).sum(1)

        ref.append(CaptumSaliency(f).attribute(x[None, None].clone(), abs=False)[0, 0])
    _sync(dev)
    t_hand = time.perf_counter() - t0
    rel = max(float((ours[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)) for k in range(len(classes)))
    # floor: no-grad forward per window + backward per present (window, class)
    t_fwd = t_bwd = 0.0
    for wt in fwd.windows:
        if not wt.class_rows:
            continue
        xw = x[wt.slices][None, None]
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            net(xw)
        _sync(dev)
        t_fwd += time.perf_counter() - t0
        xg = xw.clone().requires_grad_(True)
        z = net(xg)
        w = fwd.window_weights(wt)
        for j, k in enumerate(wt.class_rows):
            gz = torch.zeros_like(z)  # the cheapest VJP: straight into the logits, one channel non-zero
            gz[:, fwd.classes[k]] = w[j]
            _sync(dev)
            t0 = time.perf_counter()
            torch.autograd.grad(z, xg, grad_outputs=gz, retain_graph=j < len(wt.class_rows) - 1)
            _sync(dev)
            t_bwd += time.perf_counter() - t0
    return {"ours_s": t_ours, "by_hand_s": t_hand, "floor_s": t_fwd + t_bwd, "max_rel_diff": rel,
            "windows": len(plan), "classes": len(classes)}


def bench_shap(model, x, plan, labels, classes, n_samples):
    from captum.attr import KernelShap as CaptumKernelShap
    from monai.inferers import sliding_window_inference

    from napari_agg2exp.attribution import KernelShap, SlidingWindowTarget

    net, dev = model.network, model.device
    t0 = time.perf_counter()
    fwd = SlidingWindowTarget(net, plan, labels, classes)
    KernelShap(fwd).attribute(x, feature_mask=labels.cpu().numpy(), n_samples=n_samples, perturbations_per_eval=4)
    _sync(dev)
    t_ours = time.perf_counter() - t0
    fm = labels[None, None].long()
    t0 = time.perf_counter()
    for c in classes:
        m = (labels == c).float()

        def f(inp, c=c, m=m):
            with torch.no_grad():
                z = sliding_window_inference(inp, model.window_size, 1, net, overlap=0.25, mode="constant")
            return (z[:, c] * m).flatten(1).sum(1)

        CaptumKernelShap(f).attribute(x[None, None], baselines=0.0, feature_mask=fm, n_samples=n_samples,
                                      perturbations_per_eval=4)
    _sync(dev)
    t_captum = time.perf_counter() - t0
    return {"ours_s": t_ours, "captum_per_class_s": t_captum, "classes": len(classes), "samples": n_samples}


def memory_child(model_path, device, size):
    """Run in a fresh process: VG for all classes on a size³ volume; print peak RSS."""
    from napari_agg2exp.attribution import explain
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.data.phantom.cases import make_phantom
    from napari_agg2exp.data.volume import Volume

    model = load_model(model_path, device=device)
    sp = model.preprocessing.spacing or (1.0, 1.0, 1.0)
    case = make_phantom(7, shape=(size, size, size), spacing=sp[0])
    vol = Volume(case.image, case.affine)
    t0 = time.perf_counter()
    e = explain(model, vol, "vg")
    out = {"seconds": time.perf_counter() - t0, "classes": len(e.targets), "shape": list(e.pre.array.shape),
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if torch.cuda.is_available() and model.device.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    print(json.dumps(out))


def bench_batched_classes(model, x, plan, labels, classes):
    from napari_agg2exp.attribution import Saliency, SlidingWindowTarget

    res = {}
    for flag in (False, True):
        fwd = SlidingWindowTarget(model.network, plan, labels, classes, batch_classes=flag)
        Saliency(fwd).attribute(x)  # warm-up
        _sync(model.device)
        t0 = time.perf_counter()
        Saliency(fwd).attribute(x)
        _sync(model.device)
        res["batched_s" if flag else "sequential_s"] = time.perf_counter() - t0
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: bundled)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shap-samples", type=int, default=40)
    ap.add_argument("--memory-size", type=int, default=256)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.model, args.device, args.memory_size)
        return 0
    model, x, plan, labels, classes = _setup(args.model, args.device)
    print(f"device {model.device}, torch threads {torch.get_num_threads()}, volume {tuple(x.shape)}, "
          f"{len(plan)} window(s), {len(classes)} classes")
    vg = bench_vg(model, x, plan, labels, classes)
    shap = bench_shap(model, x, plan, labels, classes, args.shap_samples)
    rows = [
        ("VG all classes: ours", f"{vg['ours_s']:.2f} s", ""),
        ("VG by hand (captum Saliency + MONAI SWI, per class)", f"{vg['by_hand_s']:.2f} s",
         f"ours {vg['by_hand_s'] / vg['ours_s']:.2f}x faster (target >= 1.5x)"),
        ("VG floor (no-grad fwd/window + bwd/(window,class))", f"{vg['floor_s']:.2f} s",
         f"ours / floor = {vg['ours_s'] / vg['floor_s']:.2f} (target <= 1.15); by hand / floor = {vg['by_hand_s'] / vg['floor_s']:.2f}"),
        ("VG max relative difference ours vs by hand", f"{vg['max_rel_diff']:.1e}", ""),
        (f"KernelSHAP semantic, all {shap['classes']} classes, {shap['samples']} samples: ours", f"{shap['ours_s']:.2f} s", ""),
        ("KernelSHAP semantic, captum once per class", f"{shap['captum_per_class_s']:.2f} s",
         f"ours {shap['captum_per_class_s'] / shap['ours_s']:.1f}x faster (target >= 0.8*C = {0.8 * shap['classes']:.1f}x)"),
    ]
    if model.device.type == "cuda":
        bc = bench_batched_classes(model, x, plan, labels, classes)
        rows.append(("VG batched classes (is_grads_batched) vs sequential", f"{bc['batched_s']:.2f} s vs {bc['sequential_s']:.2f} s",
                     f"{bc['sequential_s'] / bc['batched_s']:.2f}x"))
    if not args.skip_memory:
        cmd = [sys.executable, __file__, "--memory-child", "--memory-size", str(args.memory_size), "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            mem = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((f"VG all {mem['classes']} classes on {args.memory_size}^3 (model grid {mem['shape']})",
                         f"{mem['seconds']:.1f} s", f"peak RSS {mem['peak_rss_gb']:.2f} GB (target < 6 GB)"
                         + (f", peak CUDA {mem['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in mem else "")))
        else:
            rows.append(("memory run failed", "", r.stderr.strip().splitlines()[-1] if r.stderr else ""))
    w = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{w}}  {'time':>12}  note")
    for name, t, note in rows:
        print(f"{name:<{w}}  {t:>12}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
