"""What a viewer session holds, as comparable values: labels as shown and as SimSeg wrote them,
the click layers and their rounds, every slice's memory (rounds, redo stack, region, LSTM
state) and base labels, the propagations and the log's length. Two sessions with equal
``session_state`` behave alike on the next click, undo or redo."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def _digest(*arrays) -> str:
    h = hashlib.blake2b(digest_size=12)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _payload_arrays(payload) -> list:
    """The tensors of a round's ConvLSTM state, as numpy arrays."""
    if payload is None:
        return []
    if isinstance(payload, (list, tuple)):
        return [a for p in payload for a in _payload_arrays(p)]
    if isinstance(payload, dict):
        return [a for k in sorted(payload) for a in _payload_arrays(payload[k])]
    if hasattr(payload, "detach"):
        return [payload.detach().cpu().float().numpy()]
    return [np.asarray(payload)]


def _round_digest(state) -> str:
    meta = json.dumps(state.meta, sort_keys=True, default=str)
    return _digest(state.clicks, state.probabilities, *_payload_arrays(state.payload)) + meta


def memory_state(session) -> dict:
    """Every slice's memory as digests: its rounds, redo stack and region, and its base labels."""
    out = {}
    for z in range(session.n_slices):
        mem = session._memories.get(z)
        base = session._base_labels.get(z)
        if mem is None and base is None:
            continue
        out[z] = {
            "rounds": [] if mem is None else [_round_digest(s) for s in mem.rounds],
            "redo": [] if mem is None else [_round_digest(s) for s in mem._redo],
            "region": [int(v) for v in session._regions.get(z, ())],
            "base": None if base is None else _digest(base),
            "hand_set": z in session._hand_set,
        }
    out["propagations"] = [(p.source, p.direction, [s for s, _ in p.steps]) for p in session._propagations]
    return out


def session_state(vs) -> dict:
    """A viewer session's state as JSON-able values (see the module)."""
    labels = vs._labels
    return {
        "shown": _digest(np.asarray(labels.live().data)),
        "written": _digest(labels.written),
        "hand_edited": sorted(int(z) for z in vs.hand_edited),
        "points": [np.asarray(layer.data, dtype=float).tolist() for layer in vs.click_layers],
        "clicks": json.loads(json.dumps(vs._clicks.state(), default=lambda a: a.tolist())),
        "memory": json.loads(json.dumps(memory_state(vs.session))),
        "log": len(vs.session.log),
        "unsaved": vs.has_unsaved_rounds(),
    }
