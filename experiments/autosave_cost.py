"""What autosave costs napari's GUI thread on a large volume (issue 34: under 50 ms per round).

A headless viewer (napari's ``ViewerModel``) holds a synthetic ``Z x N x N`` volume (default
300 x 512 x 512); a ``ViewerSession`` autosaving to a temporary store runs rounds on random
slices, paint strokes, an automatic run, then a save and a load, and the script reports what
the autosave of each action cost the calling thread in total (its snapshots: copies of the
changed slices, the new log events and the click layers; ``SessionRecovery.last_ms`` summed
over the action) and what the background writer then took to commit it, plus the image
fingerprint computed at *Start* (on the worker thread). Run from the repository root::

    python experiments/autosave_cost.py                       # the bundled model, on the CPU
    python experiments/autosave_cost.py --slices 40 --rounds 5  # a quick look

Measured (2-core shared machine, load average ~7, bundled model on the CPU, 300 x 512 x 512,
``python experiments/autosave_cost.py``): GUI thread per round median 0.38 ms, max 4.8 ms
(20 rounds); per paint stroke median 0.36 ms, max 0.41 ms; the automatic run of 8 slices
1.6 ms; a load (every labelled slice and the whole log) 20.7 ms; the writer's commits
median 22 ms, max 312 ms (the load's, off the GUI thread); fingerprint 13.6 ms; the store
held 45 kB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _volume(slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(slices, size, size)).astype(np.float32)
    vol[:, size // 4 : size // 2, size // 4 : size // 2] += 80
    return vol


def _summary(values) -> dict:
    values = list(values)
    return {"n": len(values), "median_ms": round(statistics.median(values), 2), "max_ms": round(max(values), 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--strokes", type=int, default=10)
    parser.add_argument("--auto-slices", type=int, default=8, help="slices of one automatic run")
    parser.add_argument("--checkpoint", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from napari.components import ViewerModel

    from napari_simseg import ViewerSession
    from napari_simseg.core.session.recovery import RecoveryStore, image_fingerprint

    vol = _volume(args.slices, args.size)
    t0 = time.perf_counter()
    image_fingerprint([vol])
    fingerprint_ms = (time.perf_counter() - t0) * 1000
    viewer = ViewerModel()
    viewer.add_image(vol, name="ct")
    rng = np.random.default_rng(1)
    gui, commit = {"round": [], "stroke": [], "auto": [], "load": []}, []
    with tempfile.TemporaryDirectory() as tmp:
        store = RecoveryStore(Path(tmp) / "recovery")
        vs = ViewerSession(viewer, "ct", checkpoint=args.checkpoint, device=args.device, autosave=store,
                           overwrite_policy="always")

        spent = []  # what each snapshot of the current action cost this thread
        snapshot = vs.recovery.snapshot

        def counted(*args, **kwargs):
            done = snapshot(*args, **kwargs)
            spent.append(vs.recovery.last_ms)
            return done

        vs.recovery.snapshot = counted

        def timed(kind, action):
            spent.clear()
            action()  # a completed action hands its snapshot(s) over on this thread
            gui[kind].append(sum(spent))
            t = time.perf_counter()
            vs.recovery.flush()  # only to time the writer: the GUI never waits for it
            commit.append((time.perf_counter() - t) * 1000)

        lo, hi = args.size // 4, args.size // 2
        for _ in range(args.rounds):
            z = int(rng.integers(args.slices))
            y, x = (int(v) for v in rng.integers(lo, hi, 2))
            timed("round", lambda z=z, y=y, x=x: vs.add_clicks(z, [(1, y, x)]))
        for _ in range(args.strokes):
            z = int(rng.integers(args.slices))
            timed("stroke", lambda z=z: vs.labels_layer.paint((z, lo, lo), 2, refresh=False))
        free = [z for z in range(args.slices) if vs.session.n_rounds(z) == 0][: args.auto_slices]
        timed("auto", lambda: vs.auto(free))
        saved = Path(tmp) / "case.nii.gz"
        vs.save(saved)
        vs.recovery.flush()
        timed("load", lambda: vs.load(saved))  # a new session: every labelled slice and the whole log
        folder = vs.recovery.folder
        size = sum(p.stat().st_size for p in folder.iterdir())
        vs.close()
    out = {
        "volume": [args.slices, args.size, args.size], "checkpoint": args.checkpoint,
        "fingerprint_ms": round(fingerprint_ms, 1),
        "gui_thread": {k: _summary(v) for k, v in gui.items()},
        "writer_commit": _summary(commit),
        "store_bytes": size,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
