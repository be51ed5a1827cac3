#!/usr/bin/env bash
# The paper's explanation-quality benchmark (appendix B.2) on our data: every attribution method x every
# metric on a small cohort of held-out synthetic phantoms, with the bundled model, through the CLI.
#
#   scripts/paper_benchmark.sh                # reduced settings below: about 15 min on 2 CPU cores
#   PAPER=1 DEVICE=cuda scripts/paper_benchmark.sh   # the paper's settings (needs a GPU)
#
# Writes $OUT/results/metrics.csv (case,method,target,metric,value), metrics.md (mean ± sd per method
# and metric, also printed), evaluation_info.json (settings, timings) and quality.csv (Dice of the model
# on the same cases). Every setting can be overridden from the environment, e.g. CASES=5 CLASSES=all.
#
# Reduced settings (default) vs the paper (PAPER=1):
#   cases 2 vs 5; target classes heart,aorta,lung_lower_lobe_left vs every predicted class;
#   faithfulness 50 vs 100 subsets of 224² voxels; sensitivity 3 noise samples in [-0.1, 0.1] (as paper);
#   complexity θ = 0.1 (as paper); IG 8 vs 20 steps; SG 8 vs 20 samples;
#   KernelSHAP 64 vs 1000 coalitions (512 cubes), 32 vs 200 coalitions (semantic).
set -euo pipefail
cd "$(dirname "$0")/.."
AGG=${AGG:-.venv/bin/agg2exp}
OUT=${OUT:-runs/paper_benchmark}
MODEL=${MODEL:-}                 # empty: the bundled model
DEVICE=${DEVICE:-auto}
SEED=${SEED:-2000}               # phantom cohort seed: held out (the bundled model trained on seed 1000)
METHODS=${METHODS:-vg,ig,sg,kernelshap-cubes,kernelshap-semantic}
METRICS=${METRICS:-faithfulness,sensitivity,complexity,randomisation}
if [[ -n "${PAPER:-}" ]]; then
  CASES=${CASES:-5}; CLASSES=${CLASSES:-all}; SUBSETS=${SUBSETS:-100}; NOISE=${NOISE:-3}
  STEPS=${STEPS:-20}; SAMPLES=${SAMPLES:-sg=20,kernelshap-cubes=1000,kernelshap-semantic=200}
else
  CASES=${CASES:-2}; CLASSES=${CLASSES:-heart,aorta,lung_lower_lobe_left}; SUBSETS=${SUBSETS:-50}; NOISE=${NOISE:-3}
  STEPS=${STEPS:-8}; SAMPLES=${SAMPLES:-sg=8,kernelshap-cubes=64,kernelshap-semantic=32}
fi
SUBSET_SIZE=${SUBSET_SIZE:-50176}

mkdir -p "$OUT"
$AGG phantom --out "$OUT/phantoms" --cases "$CASES" --seed "$SEED" --overwrite
{
  echo "case,image,labels"
  for d in "$OUT"/phantoms/case_*; do
    n=$(basename "$d")
    echo "$n,phantoms/$n/image.nii.gz,phantoms/$n/labels.nii.gz"
  done
} > "$OUT/cases.csv"

start=$(date +%s)
$AGG evaluate --manifest "$OUT/cases.csv" ${MODEL:+--model "$MODEL"} --device "$DEVICE" \
  --methods "$METHODS" --metrics "$METRICS" --classes "$CLASSES" \
  --subsets "$SUBSETS" --subset-size "$SUBSET_SIZE" --noise-samples "$NOISE" --noise-bound 0.1 --threshold 0.1 \
  --steps "$STEPS" --samples "$SAMPLES" --seed 0 \
  --out "$OUT/results" --overwrite
echo "paper benchmark: ${CASES} case(s) in $(( $(date +%s) - start ))s; table in $OUT/results/metrics.md"
