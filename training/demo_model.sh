#!/usr/bin/env bash
# How the bundled demo model was made: DDG-SIM on Task04_Hippocampus on a 2-core CPU,
# in four stages and a calibration; the last stage's best validation epoch, calibrated,
# is stored in the package as float16 (under 30 MB).
#   stage 1: demo_hippocampus.yaml from random weights (published stride-2 stem)
#   stage 2: demo_hippocampus_fullres.yaml from stage 1's best epoch, encoder stem at
#            stride 1, cosine lr decay planned over 26 epochs, stopped after epoch 10
#   stage 3: demo_hippocampus_clicks.yaml from stage 2's best epoch: denser training
#            clicks (30 % dropped instead of 80 %) and 20 % automatic (0-click) batches
#   stage 4: demo_hippocampus_context.yaml from stage 3's best epoch: 2.5D input (the two
#            slices on each side as extra channels, started at zero weight)
#   calibration: `simseg calibrate` fits per-class decision offsets on 40 training
#            volumes (never the validation ones) and writes calibrated.safetensors,
#            the file that is bundled
#
#   DATA=../shared/data/Task04_Hippocampus bash training/demo_model.sh
#
# All stages use the same seeded split by volume (split_seed 0, 20 % validation), so the
# validation volumes are never trained on. --max-minutes stops a stage early; append
# --resume to that stage's `simseg train` to continue it.
set -euo pipefail
DATA=${DATA:?set DATA to the Task04_Hippocampus folder}
OUT=${OUT:-runs/demo_hippocampus}
DEVICE=${DEVICE:-auto}
HERE=$(cd "$(dirname "$0")" && pwd)
simseg train --config "$HERE/configs/demo_hippocampus.yaml" --data "$DATA" --out "$OUT" \
  --device "$DEVICE" --max-minutes "${MINUTES:-60}" | tail -n 1
simseg train --config "$HERE/configs/demo_hippocampus_fullres.yaml" --data "$DATA" \
  --out "${OUT}_fullres" --init-from "$OUT/best.safetensors" --stop-after-epoch 10 \
  --device "$DEVICE" | tail -n 1
simseg train --config "$HERE/configs/demo_hippocampus_clicks.yaml" --data "$DATA" \
  --out "${OUT}_clicks" --init-from "${OUT}_fullres/best.safetensors" \
  --device "$DEVICE" | tail -n 1
simseg train --config "$HERE/configs/demo_hippocampus_context.yaml" --data "$DATA" \
  --out "${OUT}_context" --init-from "${OUT}_clicks/best.safetensors" \
  --device "$DEVICE" | tail -n 1
simseg calibrate --checkpoint "${OUT}_context/best.safetensors" --data "$DATA" --split train \
  --output "${OUT}_context/calibrated.safetensors" --device "$DEVICE" | tail -n 1
python "$HERE/bundle_demo.py" "${OUT}_context" calibrated.safetensors
