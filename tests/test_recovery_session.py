"""Autosave and recovery of a viewer session (issue 34, point 1): through the recovery store's
files, in a headless napari viewer model; and a napari process killed mid-session, recovered in
a new one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_simseg.core.session.recovery import RecoveryStore
from recovery_helpers import session_state

CLASSES = ("background", "a", "b")


def _image():
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(5, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 80
    return vol


@pytest.fixture
def ckpt(make_checkpoint):
    return make_checkpoint(class_names=CLASSES)


@pytest.fixture
def store(tmp_path):
    return RecoveryStore(tmp_path / "recovery", durable=False)


def _session(ckpt, store, image=None, **kwargs):
    from napari.components import ViewerModel

    from napari_simseg import ViewerSession

    viewer = ViewerModel()
    viewer.add_image(_image() if image is None else image, name="ct")
    return ViewerSession(viewer, "ct", checkpoint=ckpt, device="cpu", autosave=store, overwrite_policy="always",
                         **kwargs)


def _crash(vs):
    """What a kill leaves: the recovery folder as last written, its lock released."""
    assert vs.recovery.flush(30)
    vs.recovery.close(remove=False)


def _work(vs):
    vs.add_clicks(1, [(1, 15, 20)])
    vs.add_clicks(1, [(2, 30, 40), (0, 2, 2)])
    vs.add_clicks(3, [(1, 12, 14)])
    vs.add_clicks(3, [(2, 33, 40)])
    vs.undo(3)  # slice 3 can redo
    vs.click_layers[2].add(np.array([[4.0, 33.0, 9.0]]))  # a pending point: no round used it
    vs.labels_layer.paint((2, 20, 20), 2, refresh=True)  # a hand edit (napari's paint event)
    vs.auto(0)
    vs.propagate(1)


def test_a_killed_sessions_work_comes_back_exactly(ckpt, store):
    vs = _session(ckpt, store)
    assert vs.recoverable() is None
    _work(vs)
    assert vs.recovery.error is None and vs.recovery.last_ms > 0
    before = session_state(vs)
    assert before["hand_edited"] == [2] and before["memory"]["3"]["redo"]
    _crash(vs)

    again = _session(ckpt, store)
    info = again.recoverable()
    assert info is not None and info.n_events == len(vs.session.log)
    message = again.recover()
    assert "restored the unsaved work" in message and "differently" not in message
    assert session_state(again) == before  # labels, hand edits, points, rounds, redo, memories, log
    # the recovered folder went once this session's own held the work; nothing is offered now
    assert again.recovery.flush(30) and not info.folder.exists()
    assert again.recoverable() is None and _session(ckpt, store).recoverable() is None


def test_recovered_undo_redo_and_next_round_match_the_original(ckpt, store):
    vs = _session(ckpt, store)
    _work(vs)
    _crash(vs)
    twin = _session(ckpt, store)
    twin.recover()
    for s in (vs, twin):  # the same next steps in both
        s.redo(3)
        s.add_clicks(3, [(1, 20, 20)])
        s.undo(1)
        s.undo(1)
    assert session_state(twin) == session_state(vs)


def test_save_marks_the_work_saved_and_a_clean_close_removes_it(ckpt, store, tmp_path):
    vs = _session(ckpt, store)
    vs.add_clicks(1, [(1, 15, 20)])
    vs.save(tmp_path / "case.nii.gz")
    _crash(vs)
    assert _session(ckpt, store).recoverable() is None  # the work is in files
    vs = _session(ckpt, store)
    vs.add_clicks(2, [(1, 15, 20)])
    assert vs.recovery.flush(30) and vs.recovery.folder.exists()
    folder = vs.recovery.folder
    vs.close()
    assert not folder.exists()
    # painting after a save is unsaved work again
    vs = _session(ckpt, store)
    vs.add_clicks(2, [(1, 15, 20)])
    vs.save(tmp_path / "case.nii.gz")
    vs.labels_layer.paint((2, 5, 5), 1, refresh=True)
    _crash(vs)
    assert _session(ckpt, store).recoverable() is not None


def test_a_load_is_autosaved_as_saved_work_and_what_follows_as_unsaved(ckpt, store, tmp_path):
    vs = _session(ckpt, store)
    vs.add_clicks(1, [(1, 15, 20)])
    vs.save(tmp_path / "case.nii.gz")
    vs.close()
    loaded = _session(ckpt, store)
    loaded.load(tmp_path / "case.nii.gz")
    _crash(loaded)
    assert _session(ckpt, store).recoverable() is None  # the loaded work is in its file
    loaded = _session(ckpt, store)
    loaded.load(tmp_path / "case.nii.gz")
    loaded.add_clicks(1, [(2, 30, 40)])
    loaded.labels_layer.paint((3, 5, 5), 2, refresh=True)
    loaded.autosave()  # a stroke's autosave (the widget defers it)
    before = session_state(loaded)
    _crash(loaded)
    again = _session(ckpt, store)
    info = again.recoverable()
    assert info is not None and info.n_events == len(loaded.session.log)
    again.recover()
    assert session_state(again) == before  # the loaded rounds, the new one and the stroke


def test_nothing_done_leaves_no_folder_and_other_images_are_not_offered(ckpt, store):
    vs = _session(ckpt, store)
    assert vs.recovery.flush(30) and vs.recovery.folder is None  # started, nothing done
    vs.add_clicks(1, [(1, 15, 20)])
    _crash(vs)
    other = _image()
    other[2, 3, 4] += 1.0
    assert _session(ckpt, store, image=other).recoverable() is None
    assert _session(ckpt, store).recoverable() is not None


def test_declined_work_is_not_offered_again_and_discard_deletes_it(ckpt, store):
    vs = _session(ckpt, store)
    vs.add_clicks(1, [(1, 15, 20)])
    _crash(vs)
    second = _session(ckpt, store)
    info = second.recoverable()
    second.recovery.decline(second.recoverable())
    assert second.recoverable() is None and _session(ckpt, store).recoverable() is None
    assert info.folder.exists()  # kept until it expires
    vs = _session(ckpt, store)
    vs.add_clicks(2, [(1, 15, 20)])
    _crash(vs)
    third = _session(ckpt, store)
    info = third.recoverable()
    third.discard_recovery()
    assert not info.folder.exists()
    with pytest.raises(RuntimeError, match="no unsaved work"):
        third.recover()


def test_work_of_another_checkpoint_is_refused_by_name(ckpt, store, make_checkpoint):
    vs = _session(ckpt, store)
    vs.add_clicks(1, [(1, 15, 20)])
    _crash(vs)
    other = make_checkpoint(class_names=CLASSES, seed=3)
    vs2 = _session(other, store)
    with pytest.raises(RuntimeError, match=f"made with checkpoint {ckpt}"):
        vs2.recover()
    assert vs2.recoverable() is not None  # still there for a session with that checkpoint


def test_recovery_replaces_rounds_only_when_allowed(ckpt, store):
    vs = _session(ckpt, store)
    vs.add_clicks(1, [(1, 15, 20)])
    _crash(vs)
    busy = _session(ckpt, store)
    busy.add_clicks(2, [(1, 15, 20)])
    with pytest.raises(RuntimeError, match="Save first"):
        busy.recover()
    assert "restored" in busy.recover(discard=True)


def test_autosave_off_and_a_broken_store_leave_the_session_working(ckpt, tmp_path):
    vs = _session(ckpt, False)
    vs.add_clicks(1, [(1, 15, 20)])
    assert vs.recovery is None and vs.recoverable() is None and not vs.autosave()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    vs = _session(ckpt, RecoveryStore(blocked / "recovery"))
    vs.add_clicks(1, [(1, 15, 20)])  # the round works; autosave says why it does not
    assert "autosave failed" in vs.recovery.error


# ---------------------------------------------------------------------- a real kill
def test_a_napari_process_killed_mid_session_is_recovered_in_a_new_one(ckpt, tmp_path):
    """A process runs a session (``recovery_child.py``) and is killed (SIGKILL) at a random
    moment after some completed action; a new session on the same image restores exactly the
    state the process recorded after its last completed action (or the one it was finishing)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import recovery_child

    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    seed = int(os.environ.get("SIMSEG_KILL_SEED") or int.from_bytes(os.urandom(4), "little"))
    rng = np.random.default_rng(seed)
    n_actions = 10
    kill_after = int(rng.integers(1, n_actions))  # the last action reported before the kill
    out, root = tmp_path / "out", tmp_path / "store"
    out.mkdir()
    child = Path(recovery_child.__file__)
    proc = subprocess.Popen([sys.executable, str(child), str(root), str(ckpt), str(out)], stdout=subprocess.PIPE,
                            text=True)
    try:
        seen = -1
        for line in proc.stdout:
            if line.strip().isdigit():
                seen = int(line)
                if seen >= kill_after - 1:
                    break
        assert seen == kill_after - 1, f"the child ended early (seed {seed})"
        time.sleep(float(rng.uniform(0, 0.5)))  # somewhere in the next action, its save or after
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from napari.components import ViewerModel

    from napari_simseg import ViewerSession

    viewer = ViewerModel()
    viewer.add_image(recovery_child.image(), name="ct")
    vs = ViewerSession(viewer, "ct", checkpoint=ckpt, device="cpu", autosave=RecoveryStore(root, durable=False))
    info = vs.recoverable()
    assert info is not None, f"nothing to recover (seed {seed})"
    vs.recover()
    got = json.loads(json.dumps(session_state(vs)))
    # each action's expectation is written before its autosave may commit: the data on disk are
    # those of the last expectation written, or of the one before when its commit did not land
    last = max(int(p.stem.split("-")[1]) for p in out.glob("expect-*.json"))
    assert last >= seen
    candidates = [i for i in (last - 1, last) if i >= 0]
    matches = [i for i in candidates if json.loads((out / f"expect-{i}.json").read_text()) == got]
    assert matches, f"the recovered state is none of actions {candidates} (seed {seed})"
