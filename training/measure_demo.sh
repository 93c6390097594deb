#!/usr/bin/env bash
# The bundled demo model's figures (docs/demo_model.md, docs/results/README.md): the evaluation
# on its 40 validation volumes with NoC, the 60-volume timing, the round latency on a
# hippocampus-sized slice and the headless demo. Run from the repository root after
# training/demo_model.sh (it reads runs/demo_hippocampus/split.json).
#
#   DATA=/path/to/Task04_Hippocampus bash training/measure_demo.sh   (the MSD Task04_Hippocampus folder)
set -e
D=${DATA:-../shared/data/Task04_Hippocampus}
/usr/bin/time -f "demo_val wall %e s" simseg evaluate --checkpoint demo --data $D --split val --split-file runs/demo_hippocampus/split.json \
  --clicks 0,1,2,3,6 --noc-clicks 20 --device cpu --name "DDG-SIM demo" \
  --json docs/results/demo_val.json --plot docs/results/demo_val.png --table docs/results/demo_val.md 2>&1 | grep -v "evaluate:"
# the network alone: one forward per round, clicked pixels not forced to their class
simseg evaluate --checkpoint demo --data $D --split val --split-file runs/demo_hippocampus/split.json \
  --clicks 0,1,2,3,6 --noc-clicks 0 --device cpu --name "DDG-SIM demo, network alone" --no-tta --no-honour-clicks --no-decision-offsets \
  --json runs/demo_val_network_alone.json 2>&1 | grep -v "evaluate:"
/usr/bin/time -f "eval60 wall %e s" simseg evaluate --checkpoint demo --data $D --split all --max-volumes 60 \
  --clicks 0,1,2,3 --noc-clicks 0 --device cpu --json runs/eval60.json 2>&1 | grep -v "evaluate:" | tail -3
simseg benchmark --round --sizes 64 --auto-volume "" --device cpu
simseg demo --headless 2>&1 | tail -12
