#!/usr/bin/env bash
# The paper's five-row ablation (section 5.2.1): Auto, SDG-base, SDG-CIM, DDG-CIM, DDG-SIM.
# Trains four networks with the same data split and budget, evaluates all five systems with
# the same virtual user on the validation volumes, and writes JSON, a table and a plot.
#
#   DATA=/path/to/Task04_Hippocampus OUT=runs/ablation bash training/ablation.sh [extra train flags]
#
# DATA is the MSD Task04_Hippocampus folder (or any data set folder).
#
# Extra flags go to every `simseg train` (e.g. --encoder resnet18 --epochs 3 --steps-per-epoch 150).
set -euo pipefail
DATA=${DATA:?set DATA to a dataset folder}
OUT=${OUT:-runs/ablation}
DEVICE=${DEVICE:-auto}
CLICKS=${CLICKS:-0,1,2,3,6}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
for row in auto sdg_base ddg_cim ddg_sim; do
  if [ ! -f "$OUT/$row/best.safetensors" ]; then
    simseg train --config "$HERE/configs/$row.yaml" --data "$DATA" --out "$OUT/$row" --device "$DEVICE" "$@" | tail -n 1
  fi
done
# the paper's systems: the network alone (no flip averaging, clicks not forced)
ev() {  # name checkpoint-folder [extra evaluate flags]
  local name=$1 dir=$2; shift 2
  simseg evaluate --checkpoint "$OUT/$dir/best.safetensors" --data "$DATA" --split val --clicks "$CLICKS" \
    --noc-clicks "${NOC:-0}" --device "$DEVICE" --no-tta --no-honour-clicks --name "$name" --json "$OUT/$name.json" "$@"
}
ev Auto auto --clicks 0
ev SDG-base sdg_base
ev SDG-CIM sdg_base --memory cim
ev DDG-CIM ddg_cim
ev DDG-SIM ddg_sim
simseg report --json "$OUT"/{Auto,SDG-base,SDG-CIM,DDG-CIM,DDG-SIM}.json \
  --table "$OUT/ablation.md" --plot "$OUT/ablation.png" --clicks 3 --title "Ablation, Dice per class"
