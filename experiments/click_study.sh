#!/usr/bin/env bash
# The paper's click-number study (section 5.2.3), DDG-SIM throughout:
#  setup 1: trained with at most 3 clicks, tested at 0/1/2/3/6 clicks;
#  setup 2: trained with at most k clicks, tested at k clicks (k = 1, 2, 3, 6; 0 = Auto);
#  setup 3: 0 clicks at test: Auto, default DDG-SIM, DDG-SIM with rules 2-4 disabled.
# Reuses $OUT/auto and $OUT/ddg_sim from ablation.sh when they exist.
#
#   DATA=/path/to/Task04_Hippocampus OUT=runs/ablation bash experiments/click_study.sh [extra train flags]
#
# DATA is the MSD Task04_Hippocampus folder; the configs are the ablation's, in training/configs/.
set -euo pipefail
DATA=${DATA:?set DATA to a dataset folder}
OUT=${OUT:-runs/ablation}
DEVICE=${DEVICE:-auto}
KS=${KS:-1 2 6}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
train() {  # folder config [flags]
  local dir=$1 cfg=$2; shift 2
  [ -f "$OUT/$dir/best.safetensors" ] || \
    simseg train --config "$HERE/../training/configs/$cfg.yaml" --data "$DATA" --out "$OUT/$dir" --device "$DEVICE" "$@" | tail -n 1
}
# the paper's systems: the network alone (no flip averaging, clicks not forced)
ev() {  # name folder clicks [flags]
  local name=$1 dir=$2 clicks=$3; shift 3
  simseg evaluate --checkpoint "$OUT/$dir/best.safetensors" --data "$DATA" --split val --clicks "$clicks" \
    --noc-clicks 0 --device "$DEVICE" --no-tta --no-honour-clicks --name "$name" --json "$OUT/$name.json" "$@"
}
train auto auto "$@"
train ddg_sim ddg_sim "$@"
train ddg_sim_no_rules ddg_sim_no_rules "$@"
# setup 1
ev setup1-DDG-SIM ddg_sim 0,1,2,3,6
simseg report --json "$OUT/setup1-DDG-SIM.json" --plot "$OUT/setup1.png" --table "$OUT/setup1.md" \
  --title "Setup 1: trained with <= 3 clicks"
# setup 2
jsons=()
for k in $KS; do
  [ "$k" = 3 ] && dir=ddg_sim || { dir=ddg_sim_k$k; train "$dir" ddg_sim --max-clicks "$k" "$@"; }
  ev "setup2-k$k" "$dir" "$k"; jsons+=("$OUT/setup2-k$k.json")
done
ev setup2-k3 ddg_sim 3; jsons+=("$OUT/setup2-k3.json")
ev setup2-k0 auto 0; jsons=("$OUT/setup2-k0.json" "${jsons[@]}")
simseg report --json "${jsons[@]}" --table "$OUT/setup2.md"
# setup 3
ev setup3-Auto auto 0
ev setup3-DDG-SIM ddg_sim 0
ev setup3-DDG-SIM-no-rules ddg_sim_no_rules 0
simseg report --json "$OUT"/setup3-{Auto,DDG-SIM,DDG-SIM-no-rules}.json --table "$OUT/setup3.md" --clicks 0
