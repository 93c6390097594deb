#!/usr/bin/env bash
# The default recipe's published figures (docs/results/README.md, "The default recipe on
# own data"): train with `simseg train --data DIR --out OUT --max-minutes 20` (no config:
# the default recipe), then evaluate on the held-out cases of the run's split at 0-3 clicks per class
# per slice. Run from the repository root on a quiet machine (the recipe sizes itself to
# the time budget: a busy machine does fewer steps). DATA overrides each set's folder:
# hippocampus needs the MSD Task04_Hippocampus folder; ct2d and mr2d are made from
# TotalSegmentator's example files (TOTALSEG_EXAMPLES, see training/make_totalseg_2d.py);
# cxr and colour are synthetic, made here.
#
#   bash training/recipe_results.sh hippocampus|ct2d|mr2d|cxr|colour [MINUTES]
set -euo pipefail
WHICH=${1:?hippocampus, ct2d, mr2d, cxr or colour}
MINUTES=${2:-20}
OUT=${OUT:-runs/recipe}
case "$WHICH" in
  hippocampus) DATA=${DATA:-../shared/data/Task04_Hippocampus} ;;
  ct2d) DATA=${DATA:-/tmp/ts_ct2d}; [ -d "$DATA" ] || python training/make_totalseg_2d.py ct "$DATA" ;;
  mr2d) DATA=${DATA:-/tmp/ts_mr2d}; [ -d "$DATA" ] || python training/make_totalseg_2d.py mr "$DATA" ;;
  cxr) DATA=${DATA:-/tmp/cxr200}; [ -d "$DATA" ] || python training/make_cxr_phantom.py "$DATA" 200 2048 ;;
  colour) DATA=${DATA:-/tmp/colour60}; [ -d "$DATA" ] || python training/make_colour_phantom.py "$DATA" 60 512 ;;
  *) echo "unknown data set $WHICH" >&2; exit 2 ;;
esac
RUN="$OUT/$WHICH"
simseg check-data "$DATA" --json "$RUN.check.json" | tail -n 3
/usr/bin/time -f "train wall %e s" simseg train --data "$DATA" --out "$RUN" --max-minutes "$MINUTES" --no-progress
/usr/bin/time -f "evaluate wall %e s" simseg evaluate --checkpoint "$RUN/best.safetensors" --data "$DATA" \
  --split val --split-file "$RUN/split.json" --clicks 0,1,2,3 --device cpu --name "recipe $WHICH" \
  --json "$RUN.eval.json"
