#!/usr/bin/env bash
# The bundled model under both evaluation protocols (issue 17, point 4; docs/results/README.md
# "The bundled model: both protocols"): on the 40 hippocampus volumes it never trained on (its
# checkpoint header's val_volumes), the per-slice protocol (every slice gets its own rounds) and
# the volume protocol (each round corrects the worst slice and propagates it), with Dice against
# the user's clicks per volume in one plot. Run from the repository root;
# DATA is the MSD Task04_Hippocampus folder.
set -euo pipefail
DATA=${DATA:-../shared/data/Task04_Hippocampus}
OUT=${OUT:-docs/results}
mkdir -p runs
python - <<'PY'
from napari_simseg.core.network.checkpoint import read_checkpoint_meta
from napari_simseg.core.io.resources import DEMO_CHECKPOINT
from napari_simseg.core.data.splits import save_split

t = read_checkpoint_meta(DEMO_CHECKPOINT).training
save_split("runs/demo_split.json", {"train": t["train_volumes"], "val": t["val_volumes"], "test": []})
PY
common=(--checkpoint demo --data "$DATA" --split val --split-file runs/demo_split.json --device cpu)
/usr/bin/time -f "volume protocol wall %e s" simseg evaluate "${common[@]}" --protocol volume --clicks 0,1,2,3,5,10 \
  --name "volume protocol" --json "$OUT/protocol_volume.json"
/usr/bin/time -f "slice protocol wall %e s" simseg evaluate "${common[@]}" --protocol slice --clicks 0,1,2,3 \
  --name "slice protocol" --json "$OUT/protocol_slice.json"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from napari_simseg.core.jobs.evaluation import write_clicks_plot

out = Path(sys.argv[1])
results = [json.loads((out / f"protocol_{p}.json").read_text()) for p in ("volume", "slice")]
write_clicks_plot(results, out / "protocols.png", title="bundled model, 40 unseen hippocampus volumes")
for res in results:
    for r in res["results"]:
        dice = {c: round(v, 3) for c, v in r["dice"].items() if c != "background" and v is not None}
        print(f"{res['name']:16s} {r['clicks']:>3} rounds  {r['clicks_per_volume']:7.1f} clicks/volume  {dice}")
PY
