#!/usr/bin/env bash
# How the bundled demo model was made: DDG-SIM on Task04_Hippocampus on a 2-core CPU,
# best validation epoch stored in the package as float16 (under 30 MB).
#
#   DATA=../shared/data/Task04_Hippocampus bash training/demo_model.sh
set -euo pipefail
DATA=${DATA:?set DATA to the Task04_Hippocampus folder}
OUT=${OUT:-runs/demo_hippocampus}
DEVICE=${DEVICE:-auto}
HERE=$(cd "$(dirname "$0")" && pwd)
simseg train --config "$HERE/configs/demo_hippocampus.yaml" --data "$DATA" --out "$OUT" \
  --device "$DEVICE" --max-minutes "${MINUTES:-60}" | tail -n 1
python "$HERE/bundle_demo.py" "$OUT"
