"""One click round on a GPU: float32, float16 and bfloat16 autocast, and bfloat16 with
``torch.compile(mode="reduce-overhead")`` (CUDA graphs), with the bundled model.

A session on a synthetic ``size`` x ``size`` slice gets the same three clicks round
after round (so the region, and with it every tensor shape, stays the same and a
captured graph is replayed); the first rounds warm up (and compile). Printed and
written as JSON per mode: the round's median wall time (everything the session does:
click encoding, region, network, decision) and the network's own share. The target
of the "real sizes" issue is a 512² round in 10 ms or less on an H100/H200.

    python experiments/gpu_round.py --device cuda --json gpu_round.json
    python experiments/gpu_round.py --device cpu --size 256 --modes fp32,bf16 --repeats 3   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import InteractiveSession

MODES = ("fp32", "fp16", "bf16", "bf16-graphs")


def _image(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 8) ** 2
    return (disc * 200 + rng.normal(0, 20, (size, size))).astype(np.float32)


def time_mode(mode: str, device: str, size: int, repeats: int, warmup: int) -> dict:
    """Median round and network times of one precision mode."""
    predictor = Predictor("demo", device=device)
    dev = predictor.device
    if mode == "fp32":
        predictor.amp = False
    elif mode in ("bf16", "bf16-graphs"):
        predictor._autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)
    elif mode == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 autocast is timed on CUDA only")
    if mode == "bf16-graphs":
        # reduce-overhead: CUDA graphs on CUDA; shapes are fixed by the repeated clicks
        predictor.model = torch.compile(predictor.model, mode="reduce-overhead", dynamic=False)
    session = InteractiveSession(_image(size), predictor)
    c = size / 2
    clicks = [(1, c, c), (2, c + 6, c + 4), (0, c - 12, c + 10)]  # one structure, as `simseg benchmark --round`
    rounds, nets = [], []
    t0 = time.perf_counter()
    for r in range(warmup + repeats):
        res = session.add_clicks(None, clicks)
        if r == warmup - 1:
            warm_s = time.perf_counter() - t0
        if r >= warmup:
            rounds.append(res.total_ms)
            nets.append(predictor.last_forward_ms)
    return {"mode": mode, "size": size, "round_ms_median": round(statistics.median(rounds), 2),
            "network_ms_median": round(statistics.median(nets), 2), "warmup_s": round(warm_s, 1),
            "rounds": repeats, "region": list(res.box)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = {"device": args.device, "torch": torch.__version__, "results": []}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    for mode in args.modes.split(","):
        try:
            res = time_mode(mode, args.device, args.size, args.repeats, args.warmup)
        except Exception as exc:  # one mode failing (e.g. compile) must not lose the others
            res = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
        out["results"].append(res)
        print(json.dumps(res), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
