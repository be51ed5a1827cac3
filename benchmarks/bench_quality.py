"""Explanation-quality benchmark (issue 5): what sharing the perturbations saves, and where the time goes.

1. Faithfulness score drops ``f_c(x) − f_c(x_S)``: ours, one batched pass over the subsets giving all K
   classes (and shared by every method), vs the per-(class, method) loop of a generic metric library
   (Quantus evaluates one class of one explanation at a time), timed on the first class and scaled.
2. Per method: seconds for the clean maps and for one recomputation (sensitivity / randomisation use
   ``1 + n_noise + 1`` of them per case).

Run: ``.venv/bin/python benchmarks/bench_quality.py [--model DIR] [--classes heart,aorta] [--subsets 20]``
"""

from __future__ import annotations

import argparse
import sys
import time



def main(argv=None) -> int:
    from napari_agg2exp.attribution import Explainer, SlidingWindowTarget
    from napari_agg2exp.data.phantom.cases import make_phantom
    from napari_agg2exp.evaluation.metrics import random_subsets, score_drops
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.models.prepared import prepare_case

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--classes", default="heart,aorta,lung_lower_lobe_left")
    ap.add_argument("--subsets", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4, help="IG steps / SG samples")
    ap.add_argument("--shap-samples", type=int, default=16)
    args = ap.parse_args(argv)

    model = load_model(args.model, device=args.device)
    for p in model.network.parameters():
        p.requires_grad_(False)
    prepared = prepare_case(model, make_phantom(4242).volumes()[0], sw_batch_size=4)
    x, plan, labels = prepared.inputs, prepared.plan, prepared.labels
    ids = [model.class_index(c) for c in args.classes.split(",")]
    subsets = random_subsets(x.shape, args.subsets)
    methods = ["vg", "ig", "sg", "kernelshap-cubes", "kernelshap-semantic"]

    fwd = SlidingWindowTarget(model.network, plan, labels, ids, sw_batch_size=4)
    t0 = time.perf_counter()
    score_drops(fwd, x, subsets, batch_size=4)
    ours = time.perf_counter() - t0
    one = SlidingWindowTarget(model.network, plan, labels, ids[:1], sw_batch_size=1)
    t0 = time.perf_counter()
    score_drops(one, x, subsets, batch_size=1)
    per_class = time.perf_counter() - t0
    print(f"model grid {tuple(x.shape)}, {len(plan)} window(s), {len(ids)} classes, {args.subsets} subsets, "
          f"device {model.device}\n")
    print("| faithfulness drops | seconds |")
    print("|---|---|")
    print(f"| ours: all classes, shared by {len(methods)} methods | {ours:.1f} |")
    print(f"| per class and method (one class timed: {per_class:.1f}s) | {per_class * len(ids) * len(methods):.1f} |")

    params = {"ig": {"n_steps": args.steps}, "sg": {"nt_samples": args.steps},
              "kernelshap-cubes": {"n_samples": args.shap_samples}, "kernelshap-semantic": {"n_samples": args.shap_samples}}
    print("\n| method | clean maps (s) | one noisy recomputation (s) |")
    print("|---|---|---|")
    for m in methods:
        explainer = Explainer(m, **params.get(m, {}))
        t0 = time.perf_counter()
        explainer.attribute(prepared, ids)
        t1 = time.perf_counter()
        explainer.attribute(prepared, ids, inputs=x + 0.05)
        t2 = time.perf_counter()
        print(f"| {m} | {t1 - t0:.1f} | {t2 - t1:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
