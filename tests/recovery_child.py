"""A napari session that a test kills (``kill -9``) mid-way: ``python recovery_child.py STORE CHECKPOINT OUT``.

It opens a synthetic image in a headless viewer (napari's ``ViewerModel``), starts a
``ViewerSession`` autosaving to STORE, and runs a fixed list of actions (rounds, undo, redo,
a paint stroke, a pending point, an automatic run, a propagation). After each completed
action it writes the session's state (``recovery_helpers.session_state``) to
``OUT/expect-<i>.json`` and only then lets the autosave write that action (the writer
waits for it), then prints ``i``: whatever moment the kill lands, the recovery data on disk
is the state of some action whose expectation is already written.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from recovery_helpers import session_state  # noqa: E402


def image() -> np.ndarray:
    """The synthetic image both processes open: ``(5, 40, 48)``, a bright box in noise."""
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(5, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 80
    return vol


def actions(vs):
    """The session's actions, in order (each one completed when it returns)."""
    layer = vs.labels_layer
    return [
        lambda: vs.add_clicks(1, [(1, 15, 20)]),
        lambda: vs.add_clicks(1, [(2, 30, 40), (0, 2, 2)]),
        lambda: vs.add_clicks(3, [(1, 12, 14)]),
        lambda: vs.undo(1),
        lambda: vs.click_layers[2].add(np.array([[4.0, 33.0, 9.0]])),  # pending: no round ran
        lambda: layer.paint((2, 20, 20), 2, refresh=True),  # a hand edit (napari's paint event)
        lambda: vs.auto(0),
        lambda: vs.propagate(3),
        lambda: vs.redo(1),
        lambda: vs.add_clicks(1, [(1, 22, 25)]),
    ]


def main(store_root: str, checkpoint: str, out: str) -> None:
    from napari.components import ViewerModel

    from napari_simseg.annotator.viewer_session import ViewerSession
    from napari_simseg.core.session import recovery
    from napari_simseg.core.session.recovery import RecoveryStore

    allowed = threading.Event()  # the writer commits only once the expectation is on disk
    commit = recovery.RecoveryRecord.commit

    def gated(self, snap):
        allowed.wait()
        return commit(self, snap)

    recovery.RecoveryRecord.commit = gated
    viewer = ViewerModel()
    viewer.add_image(image(), name="ct")
    vs = ViewerSession(viewer, "ct", checkpoint=checkpoint, device="cpu",
                       autosave=RecoveryStore(store_root, durable=False))
    out = Path(out)
    for i, action in enumerate(actions(vs)):
        allowed.clear()
        action()
        vs.autosave()  # a paint or a point outside any job: what the widget's timer does
        state = json.dumps(session_state(vs))
        tmp = out / f".expect-{i}.json"
        tmp.write_text(state)
        tmp.replace(out / f"expect-{i}.json")
        allowed.set()
        vs.recovery.flush()
        print(i, flush=True)
    print("done", flush=True)
    threading.Event().wait()  # stay alive until killed


if __name__ == "__main__":
    main(*sys.argv[1:4])
