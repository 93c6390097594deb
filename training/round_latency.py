"""Per-round latency of the bundled demo model in an InteractiveSession (one slice, CPU),
with flip averaging (the default) and with one forward per round."""
import statistics
import sys

import numpy as np
import torch

from napari_simseg import InteractiveSession
from napari_simseg.core.io.images import read_image
from napari_simseg.core.io.resources import SAMPLE_DIR
from napari_simseg.core.network.predictor import Predictor

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
path = sorted((SAMPLE_DIR / "images").iterdir())[0]
vol = np.asarray(read_image(path).array, np.float32)
for tta in (True, False):
    s = InteractiveSession(vol, Predictor("demo", device="cpu", tta=tta))
    z, h, w = vol.shape
    total, model = [], []
    for i in range(12):
        r = s.add_clicks(z // 2, [(1 + i % 2, h // 2, w // 2 + i % 3)])
        if i >= 2:
            total.append(r.total_ms)
            model.append(r.model_ms)
        if r.round >= 3:
            s.reset_slice(z // 2)
    print(f"{path.name} {vol.shape}, tta={tta}: round {statistics.median(total):.1f} ms median "
          f"(network {statistics.median(model):.1f} ms), {len(total)} rounds, {torch.get_num_threads()} threads")
