#!/usr/bin/env bash
# What clicks do (issue 32): every data set's checkpoint under the evaluation user, 0-10 clicks per
# class per slice and NoC with 20 rounds, once with the rounds as the network gives them (before the
# refinement: --locality none --no-follow-clicks) and once as the session shows them without focus
# views (refined: --zoom 1); HOWS="network refined zoomed" adds the rounds with focus views finer than
# the working grid (--zoom $ZOOM, default 4; only images larger than the working size gain anything);
# HOWS="... chosen" adds the checkpoint after `simseg calibrate --no-offsets` chose, on its training
# split, whether a slice's first rounds show the network's own labels (written to $OUT/SET.chosen.safetensors);
# then the table (training/clicks_table.py -> docs/results/clicks.json).
#
#   DATA_<SET>=... CKPT_<SET>=... SPLIT_<SET>=... bash training/clicks_results.sh hippocampus ct2d ...
#
# Defaults: hippocampus = the bundled model on its 40 unseen volumes (DATA: the Task04_Hippocampus
# folder); ct2d, mr2d, cxr, colour = the default recipe's runs of training/recipe_results.sh under
# $RUNS (runs/recipe), evaluated on their held-out cases (the run's split.json).
set -euo pipefail
RUNS=${RUNS:-runs/recipe}
OUT=${OUT:-runs/clicks}
MAXV=${MAX_VOLUMES:-}
mkdir -p "$OUT"
pairs=()
for set in "$@"; do
  case $set in
    hippocampus)
      data=${DATA_HIPPOCAMPUS:-../shared/data/Task04_Hippocampus}; ckpt=${CKPT_HIPPOCAMPUS:-demo}
      split=${SPLIT_HIPPOCAMPUS:-$OUT/demo_split.json}
      [ -f "$split" ] || python - "$split" <<'PY'
import sys
from napari_simseg.core.data.splits import save_split
from napari_simseg.core.io.resources import DEMO_CHECKPOINT
from napari_simseg.core.network.checkpoint import read_checkpoint_meta
t = read_checkpoint_meta(DEMO_CHECKPOINT).training
save_split(sys.argv[1], {"train": t["train_volumes"], "val": t["val_volumes"], "test": []})
PY
      ;;
    ct2d|mr2d|cxr|colour)
      up=$(echo "$set" | tr a-z A-Z)
      dv="DATA_$up"; cv="CKPT_$up"; sv="SPLIT_$up"
      data=${!dv:-/tmp/ts_$set}; [ "$set" = cxr ] && data=${!dv:-/tmp/cxr200}; [ "$set" = colour ] && data=${!dv:-/tmp/colour60}
      ckpt=${!cv:-$RUNS/$set/best.safetensors}; split=${!sv:-$(dirname "$ckpt")/split.json} ;;
    *) echo "unknown data set $set" >&2; exit 2 ;;
  esac
  for how in ${HOWS:-network refined}; do
    flags=(); [ "$how" = network ] && flags=(--locality none --no-follow-clicks --min-lead 0)
    [ "$how" = refined ] && flags=(--zoom 1)
    [ "$how" = zoomed ] && flags=(--zoom "${ZOOM:-4}")
    use=$ckpt
    if [ "$how" = chosen ]; then
      use=$OUT/$set.chosen.safetensors; flags=(--zoom 1)
      /usr/bin/time -f "$set: calibrate wall %e s" simseg calibrate --checkpoint "$ckpt" --data "$data" --split train \
        --split-file "$split" --no-offsets --device cpu --output "$use" | grep "network rounds"
    fi
    /usr/bin/time -f "$set $how: evaluate wall %e s" simseg evaluate --checkpoint "$use" --data "$data" --split val \
      --split-file "$split" --clicks 0,1,2,3,5,10 --noc-clicks 20 --device cpu ${MAXV:+--max-volumes $MAXV} \
      "${flags[@]}" --name "$set $how" --json "$OUT/$set.$how.json" | tail -n 6
    pairs+=("$set, $how=$OUT/$set.$how.json")
  done
done
python training/clicks_table.py "${TABLE:-docs/results/clicks.json}" "${pairs[@]}"
