"""Copy a trained checkpoint into the package as the bundled demo model.

    python training/bundle_demo.py runs/demo_hippocampus_soup calibrated.safetensors

The second argument names the checkpoint inside the run folder (default
``best.safetensors``; ``calibrated.safetensors`` is what ``simseg calibrate`` wrote).

Stores the weights as float16 (the package file must stay under 30 MB) and records the
training/validation volumes of the run's split.json in the checkpoint's header, so anyone
can check that the bundled sample volumes were never trained on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_simseg.core.io.resources import DEMO_CHECKPOINT
from napari_simseg.core.network.checkpoint import load_checkpoint, save_checkpoint


def main(run_dir: str, name: str = "best.safetensors") -> Path:
    run = Path(run_dir)
    ck = load_checkpoint(run / name)
    split = json.loads((run / "split.json").read_text())
    ck.meta.training = {
        **ck.meta.training,
        "train_volumes": split["train"],
        "val_volumes": split["val"],
        "bundled_from": str(run / name),
    }
    out = save_checkpoint(DEMO_CHECKPOINT, ck.model, ck.meta, half=True)
    averaged = ck.meta.training.get("averaged_from")
    origin = (f"average of {len(averaged)} checkpoints" if averaged
              else f"epoch {ck.meta.training.get('epoch')}")
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MB), {origin}")
    return out


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) > 1 else ["runs/demo_hippocampus"]))
