"""Dice of a model on held-out phantoms (issue 2 item 8): mean over the 16 foreground classes and per class.

Run: ``.venv/bin/python scripts/eval_bundled_model.py [--model DIR] [--cases 20] [--seed 2000]``
The training phantoms use cohort seed 1000 (scripts/train_bundled_model.sh); seed 2000 gives fresh cases.
Prints a Markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    from napari_agg2exp.models.prepared import segment
    from napari_agg2exp.models.loading import load_model
    from napari_agg2exp.data.phantom.cases import case_seed, make_phantom
    from napari_agg2exp.data.dice import dice_iou

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    model = load_model(args.model, device=args.device)
    dices = []
    t0 = time.perf_counter()
    for i in range(args.cases):
        case = make_phantom(case_seed(args.seed, i))
        image, labels, _ = case.volumes()
        pred = segment(model, image).prediction.array
        d, _ = dice_iou(pred, labels.array, model.num_classes)
        dices.append(d)
    dices = np.array(dices)
    mean = np.nanmean(dices, axis=0)
    per_case_fg = np.nanmean(dices[:, 1:], axis=1)
    print(f"{args.cases} held-out phantoms (cohort seed {args.seed}), {time.perf_counter() - t0:.0f}s on {model.device}\n")
    print("| class | mean Dice | min Dice |")
    print("|---|---|---|")
    for name, m, lo in zip(model.class_names[1:], mean[1:], np.nanmin(dices, axis=0)[1:]):
        print(f"| {name} | {m:.3f} | {lo:.3f} |")
    print(f"| **mean of 16 foreground classes** | **{mean[1:].mean():.3f}** | per-case min {per_case_fg.min():.3f} |")
    ok = mean[1:].mean() >= 0.85 and mean[1:].min() >= 0.6
    print(f"\ntargets (mean >= 0.85, every class >= 0.6): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
