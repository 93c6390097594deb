#!/usr/bin/env bash
# The demo model figures of the README (evaluation, 60-volume timing, round latency,
# headless demo). Run from the repository root beside ../shared/data.
set -e
D=../shared/data/Task04_Hippocampus
/usr/bin/time -f "demo_val wall %e s" simseg evaluate --checkpoint demo --data $D --split val --split-file runs/demo_hippocampus/split.json \
  --clicks 0,1,2,3,6 --noc-clicks 20 --device cpu --name "DDG-SIM demo" \
  --json docs/results/demo_val.json --plot docs/results/demo_val.png --table docs/results/demo_val.md 2>&1 | grep -v "evaluate:"
# the network alone: one forward per round, clicked pixels not forced to their class
simseg evaluate --checkpoint demo --data $D --split val --split-file runs/demo_hippocampus/split.json \
  --clicks 0,1,2,3,6 --noc-clicks 0 --device cpu --name "DDG-SIM demo, network alone" --no-tta --no-honour-clicks --no-decision-offsets \
  --json docs/results/demo_val_network_alone.json 2>&1 | grep -v "evaluate:"
/usr/bin/time -f "eval60 wall %e s" simseg evaluate --checkpoint demo --data $D --split all --max-volumes 60 \
  --clicks 0,1,2,3 --noc-clicks 0 --device cpu --json runs/eval60.json 2>&1 | grep -v "evaluate:" | tail -3
python training/round_latency.py 2
simseg demo --headless 2>&1 | tail -12
