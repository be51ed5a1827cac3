#!/usr/bin/env bash
# Trains the bundled default model with the project's own CLI, exactly as shipped.
# On a GPU machine add `--device cuda`; on 2 CPU cores it takes about an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
AGG=${AGG:-.venv/bin/agg2exp}
WORK=${WORK:-runs}
$AGG phantom --out "$WORK/train_phantoms" --cases 40 --seed 1000 --overwrite
$AGG train "$WORK/train_phantoms" --arch UNet \
  --arguments '{"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 0, "norm": "batch"}' \
  --spacing 3.0 --window-size 96 --patch-size 64 --batch-size 4 --iterations ${ITERATIONS:-1500} --val-every 150 \
  --lr 2e-3 --seed 0 --threads 2 --out "$WORK/bundled_model" ${RESUME:+--resume}
mkdir -p src/napari_agg2exp/bundled/default_model
cp "$WORK/bundled_model/model.json" "$WORK/bundled_model/weights.safetensors" src/napari_agg2exp/bundled/default_model/
echo "bundled model updated: src/napari_agg2exp/bundled/default_model"
