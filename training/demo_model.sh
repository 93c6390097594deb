#!/usr/bin/env bash
# How the bundled demo model was made: DDG-SIM on Task04_Hippocampus on a 2-core CPU,
# in ten training stages, a weight average and a calibration; the average, calibrated, is
# stored in the package as float16 (under 30 MB).
# Stage configs are in training/configs/demo/.
#   stage 1: demo_hippocampus.yaml from random weights (published stride-2 stem)
#   stage 2: demo_hippocampus_fullres.yaml from stage 1's best epoch, encoder stem at
#            stride 1, cosine lr decay planned over 26 epochs, stopped after epoch 10
#   stage 3: demo_hippocampus_clicks.yaml from stage 2's best epoch: denser training
#            clicks (30 % dropped instead of 80 %) and 20 % automatic (0-click) batches
#   stage 4: demo_hippocampus_context.yaml from stage 3's best epoch: 2.5D input (the two
#            slices on each side as extra channels, started at zero weight)
#   stage 6: demo_hippocampus_dice.yaml from stage 4's best epoch: a soft Dice term added
#            to the focal loss (dice_loss_weight 0.1), cosine lr from 1e-4, 8 epochs
#   stage 7: demo_hippocampus_dice2.yaml from stage 6's best epoch: Dice weight 0.3,
#            cosine lr from 5e-5, 5 epochs
#   stages 8-11, each from stage 7's best epoch: demo_hippocampus_ema.yaml (weights
#            averaged during training), demo_hippocampus_rounds.yaml (a click per class
#            in every round), demo_hippocampus_long.yaml (14 epochs at a higher lr) and
#            demo_hippocampus_planes.yaml (slices along all three axes)
#   stage 12: `simseg average`: the uniform mean of the weights of the best epochs of
#            stages 7 to 11 (a "model soup": five fine-tunes from one starting point)
#   (tried and not part of the recipe: stage 5, experiments/configs/demo_hippocampus_spatial.yaml,
#   from stage 4)
#   calibration: `simseg calibrate` fits per-class decision offsets on 40 training
#            volumes (never the validation ones) and writes calibrated.safetensors,
#            the file that is bundled
#
#   DATA=/path/to/Task04_Hippocampus bash training/demo_model.sh   (the MSD Task04_Hippocampus folder)
#
# All stages use the same seeded split by volume (split_seed 0, 20 % validation), so the
# validation volumes are never trained on. --max-minutes stops a stage early; append
# --resume to that stage's `simseg train` to continue it.
set -euo pipefail
DATA=${DATA:?set DATA to the Task04_Hippocampus folder}
OUT=${OUT:-runs/demo_hippocampus}
DEVICE=${DEVICE:-auto}
HERE=$(cd "$(dirname "$0")" && pwd)
simseg train --config "$HERE/configs/demo/demo_hippocampus.yaml" --data "$DATA" --out "$OUT" \
  --device "$DEVICE" --max-minutes "${MINUTES:-60}" | tail -n 1
# fine_tune CONFIG OUT_DIR FROM_DIR [more simseg train options]: a stage from FROM_DIR's best epoch
fine_tune() {
  simseg train --config "$HERE/configs/demo/$1" --data "$DATA" --out "$2" \
    --init-from "$3/best.safetensors" --device "$DEVICE" "${@:4}" | tail -n 1
}
fine_tune demo_hippocampus_fullres.yaml "${OUT}_fullres" "$OUT" --stop-after-epoch 10
fine_tune demo_hippocampus_clicks.yaml "${OUT}_clicks" "${OUT}_fullres"
fine_tune demo_hippocampus_context.yaml "${OUT}_context" "${OUT}_clicks"
fine_tune demo_hippocampus_dice.yaml "${OUT}_dice" "${OUT}_context"
fine_tune demo_hippocampus_dice2.yaml "${OUT}_dice2" "${OUT}_dice"
fine_tune demo_hippocampus_ema.yaml "${OUT}_ema" "${OUT}_dice2"
fine_tune demo_hippocampus_rounds.yaml "${OUT}_rounds" "${OUT}_dice2"
fine_tune demo_hippocampus_long.yaml "${OUT}_long" "${OUT}_dice2"
fine_tune demo_hippocampus_planes.yaml "${OUT}_planes" "${OUT}_dice2"
mkdir -p "${OUT}_soup"
cp "${OUT}_dice2/split.json" "${OUT}_soup/split.json"
simseg average "${OUT}_dice2/best.safetensors" "${OUT}_ema/best.safetensors" \
  "${OUT}_rounds/best.safetensors" "${OUT}_long/best.safetensors" \
  "${OUT}_planes/best.safetensors" --output "${OUT}_soup/soup.safetensors"
simseg calibrate --checkpoint "${OUT}_soup/soup.safetensors" --data "$DATA" --split train \
  --output "${OUT}_soup/calibrated.safetensors" --device "$DEVICE" | tail -n 1
python "$HERE/bundle_demo.py" "${OUT}_soup" calibrated.safetensors
