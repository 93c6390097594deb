"""The crash-recovery store (issue 34, point 1): a session's labels, log and points, written
incrementally under new names with the manifest switched last, so that a kill at any moment
leaves the previous complete state or the new one; bounded in size and age."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_simseg.core.session import recovery
from napari_simseg.core.session.autosave import AutosaveWriter
from napari_simseg.core.session.recovery import (
    RecoveryError,
    RecoveryStore,
    Snapshot,
    image_fingerprint,
    slice_digest,
)

SHAPE = (6, 20, 24)


def _image(seed=0):
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _store(tmp_path, **kwargs):
    return RecoveryStore(tmp_path / "store", durable=False, **kwargs)


def _slice(value: int) -> np.ndarray:
    a = np.zeros(SHAPE[1:], np.uint8)
    a[2:9, 3:3 + value % 20] = value % 3 + 1
    return a


def _events(start: int, n: int) -> list:
    return [{"action": "clicks", "slice": (start + i) % SHAPE[0], "round": 1, "time": 0.5,
             "clicks": [{"class": 1, "y": 4.0, "x": 5.25}]} for i in range(n)]


def test_fingerprint_keys_the_content_and_the_file(tmp_path):
    image = _image()
    fp = image_fingerprint([image])
    assert fp == image_fingerprint([image.copy()])
    changed = image.copy()
    changed[3, 7, 11] += 1.0  # a small image is hashed whole
    assert image_fingerprint([changed])["key"] != fp["key"]
    big = np.zeros((4, 512, 512), np.float32)
    big_fp = image_fingerprint([big])
    big[2, 32, 5] = 1.0  # on a summed row, between the sampled values
    assert image_fingerprint([big])["key"] != big_fp["key"]
    assert image_fingerprint([image.astype(np.float64)])["key"] != fp["key"]
    assert image_fingerprint([image, image])["key"] != fp["key"]
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"x" * 10)
    on_file = image_fingerprint([image], path)
    assert on_file["path"] == str(path.resolve()) and on_file["size"] == 10 and on_file["key"] != fp["key"]
    os.utime(path, ns=(1, 1))  # the file was rewritten: another session
    assert image_fingerprint([image], path)["key"] != on_file["key"]


def test_round_trip_restores_labels_log_points_and_digests(tmp_path):
    store = _store(tmp_path)
    fp = image_fingerprint([_image()])
    rec = store.create(fp, SHAPE, np.uint8, {"checkpoint": "demo", "class_names": ["bg", "a", "b"]})
    points = [np.empty((0, 3)), np.array([[1.0, 4.0, 5.25]]), np.array([[2.0, 9.5, 1.0], [2.0, 1.0, 1.0]])]
    clicks = {"layers": points, "rounds": {"2": [[[1, [2.0, 9.5, 1.0]]]]}}
    rec.commit(Snapshot(shown={1: _slice(5), 2: _slice(7)}, written={1: _slice(5), 2: np.zeros(SHAPE[1:])},
                        events=_events(0, 3), clicks=clicks))
    painted = _slice(9)
    painted[0, 0] = 2  # a hand edit: shown differs from what SimSeg wrote
    rec.commit(Snapshot(shown={2: painted, 1: np.zeros(SHAPE[1:], np.uint8)},
                        written={2: _slice(9), 1: np.zeros(SHAPE[1:])},
                        events=_events(3, 2), events_start=3))
    assert store.find(fp) == []  # its session is running: nothing to recover
    rec.release()  # what a kill leaves
    (info,) = store.find(fp)
    assert info.n_events == 5 and info.session["checkpoint"] == "demo" and "5 actions" in info.describe()
    state = store.read(info)
    want = np.zeros(SHAPE, np.uint8)
    want[2] = painted
    np.testing.assert_array_equal(state.labels, want)
    assert state.events == _events(0, 3) + _events(3, 2)
    assert state.clicks == {"layers": [p.tolist() for p in points], "rounds": {"2": [[[1, [2.0, 9.5, 1.0]]]]}}
    replayed = np.zeros(SHAPE, np.uint8)
    replayed[2] = _slice(9)
    assert state.mismatched_slices(replayed) == []
    replayed[4, 0, 0] = 1
    assert state.mismatched_slices(replayed) == [4]
    # only the changed slices were written, each under a new name; empty slices have no file
    assert sorted(p.name[:6] for p in info.folder.glob("L*")) == ["L00002"]


def test_find_offers_only_ended_active_sessions_of_this_image(tmp_path):
    store = _store(tmp_path)
    fp = image_fingerprint([_image()])
    other = image_fingerprint([_image(1)])
    old = store.create(fp, SHAPE, np.uint8)
    old.commit(Snapshot(shown={0: _slice(1)}, events=_events(0, 1)))
    old.release()
    time.sleep(0.01)
    new = store.create(fp, SHAPE, np.uint8)
    new.commit(Snapshot(events=_events(0, 2)))
    new.release()
    saved = store.create(fp, SHAPE, np.uint8)
    saved.commit(Snapshot(events=_events(0, 1), state="saved"))  # its work is in a file
    saved.release()
    empty = store.create(fp, SHAPE, np.uint8)
    empty.commit(Snapshot())  # nothing done: nothing to offer
    empty.release()
    assert store.find(other) == []
    found = store.find(fp)
    assert [i.folder for i in found] == [new.folder, old.folder]  # newest first
    store.set_state(found[0], "declined")
    assert [i.folder for i in store.find(fp)] == [old.folder]
    store.discard(found[1])
    assert store.find(fp) == [] and not old.folder.exists()
    clean = store.create(fp, SHAPE, np.uint8)
    clean.commit(Snapshot(events=_events(0, 1)))
    clean.remove()  # a clean close
    assert not clean.folder.exists() and store.find(fp) == []


def test_an_ended_session_held_a_moment_by_a_prune_is_still_read_and_discarded(tmp_path):
    """Another store's prune locks each ended folder for a moment: reading, declining or
    discarding it then waits for the lock instead of taking the session to run elsewhere."""
    import threading

    store = _store(tmp_path)
    fp = image_fingerprint([_image()])
    rec = store.create(fp, SHAPE, np.uint8)
    rec.commit(Snapshot(shown={1: _slice(2)}, events=_events(0, 3)))
    rec.release()
    (info,) = store.find(fp)
    for use in (store.read, lambda i: store.set_state(i, "declined"), store.discard):
        held, done = threading.Event(), threading.Event()

        def prune_like(held=held, done=done):
            with store._ended(info.folder) as ended:  # what prune does with each ended folder
                assert ended
                held.set()
                done.wait(0.3)

        pruner = threading.Thread(target=prune_like)
        pruner.start()
        held.wait(5)
        try:
            result = use(info)
        finally:
            done.set()
            pruner.join()
        if use is store.read:
            assert len(result.events) == 3 and result.labels[1].max() == 2
    assert not info.folder.exists()  # the discard went through, not skipped as "running"
    running = store.create(fp, SHAPE, np.uint8)
    running.commit(Snapshot(events=_events(0, 1)))
    with pytest.raises(RecoveryError, match="running in another process"):
        store.read(recovery.RecoveryInfo(running.folder, {}))  # a live session is never read
    running.remove()


def _state(store, fp):
    (info,) = store.find(fp)
    state = store.read(info)
    return state.labels.copy(), state.events, state.clicks


class _Killed(BaseException):
    """Stands for a kill: nothing after it runs (not an Exception, so nothing catches it)."""


def test_a_kill_at_every_step_of_a_commit_leaves_the_old_or_the_new_state(tmp_path, monkeypatch):
    fp = image_fingerprint([_image()])
    first = Snapshot(shown={0: _slice(1), 3: _slice(2)}, events=_events(0, 2), clicks={"p": np.zeros((1, 3))})
    second = Snapshot(shown={3: _slice(4), 4: _slice(5), 0: np.zeros(SHAPE[1:], np.uint8)},
                      events=_events(2, 3), events_start=2, clicks={"p": np.ones((2, 3))})
    steps = {"n": 0}
    real = {name: getattr(recovery, name) for name in ("_write_new", "atomic_write_text", "_collect_garbage")}

    def counting(name):
        def step(*args, **kwargs):
            steps["n"] += 1
            if steps["n"] == steps["kill_at"]:
                raise _Killed(name)
            return real[name](*args, **kwargs)
        return step

    for name in real:
        monkeypatch.setattr(recovery, name, counting(name))
    outcomes = set()
    for kill_at in range(1, 20):
        folder_store = RecoveryStore(tmp_path / f"s{kill_at}", durable=False)
        steps.update(n=0, kill_at=10**9)
        rec = folder_store.create(fp, SHAPE, np.uint8)
        rec.commit(first)
        old = _state_of_record(folder_store, rec, fp)
        steps.update(n=0, kill_at=kill_at)
        try:
            rec.commit(second)
            killed = False
        except _Killed:
            killed = True
        rec.release()
        steps["kill_at"] = 10**9
        got = _state(folder_store, fp)
        new_state = (_expected_after(first, second), _events(0, 5), {"p": np.ones((2, 3)).tolist()})
        if _same(got, old):
            outcomes.add("old")
            assert killed
        else:
            assert _same(got, new_state), f"a kill at step {kill_at} left a mix"
            outcomes.add("new")
        # whatever the kill left is gone after the reader's look, and the state reads again
        (info,) = folder_store.find(fp)
        referenced = recovery._referenced(recovery._read_manifest(info.folder)) | {"manifest.json", "lock"}
        assert {p.name for p in info.folder.iterdir()} == referenced
        if not killed:
            break
    assert outcomes == {"old", "new"}, outcomes


def _state_of_record(store, rec, fp):
    rec.release()
    out = _state(store, fp)
    assert rec._lock.acquire()  # the test takes the folder back, as its writer
    return out


def _expected_after(*snaps):
    labels = np.zeros(SHAPE, np.uint8)
    for snap in snaps:
        for z, a in snap.shown.items():
            labels[z] = a
    return labels


def _same(a, b) -> bool:
    return np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


_CHILD = textwrap.dedent("""
    import sys, numpy as np
    from napari_simseg.core.session.recovery import RecoveryStore, Snapshot, image_fingerprint
    store = RecoveryStore(sys.argv[1], durable=False)
    fp = image_fingerprint([np.zeros((6, 20, 24), np.float32)])
    rec = store.create(fp, (6, 20, 24), np.uint8)
    g = 0
    while True:
        g += 1
        slices = {z: np.full((20, 24), g % 250 + 1, np.uint8) for z in range(6) if (g + z) % 2}
        ev = [{"action": "undo", "slice": g % 6, "time": g} for _ in range(3)]
        rec.commit(Snapshot(shown=slices, events=ev, events_start=3 * (g - 1), clicks={"p": np.full((g % 5, 3), g)}))
        print(g, flush=True)
""")


def test_a_writer_killed_at_random_moments_leaves_a_whole_state(tmp_path):
    """A process commits generations as fast as it can and is killed (SIGKILL); the state read
    back is always one whole generation: the last one it reported or the one it was writing."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    fp = image_fingerprint([np.zeros((6, 20, 24), np.float32)])
    rng = np.random.default_rng(0)
    mid_commit = 0
    for trial in range(12):
        if trial >= 4 and mid_commit:
            break
        root = tmp_path / f"store{trial}"
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)], stdout=subprocess.PIPE, text=True)
        reported = 0
        for line in proc.stdout:  # wait for some generations, then kill between two lines' worth
            reported = int(line)
            if reported >= 5 + trial * 7:
                break
        time.sleep(float(rng.uniform(0, 0.01)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (info,) = RecoveryStore(root).find(fp)
        names = {p.name for p in info.folder.iterdir()}
        mid_commit += bool(names - recovery._referenced(info.manifest) - {"manifest.json", "lock"})
        state = RecoveryStore(root).read(info)
        g = info.manifest["generation"]
        assert g >= reported
        for z in range(6):  # every slice of generation g: the last one written at or before g
            last = max((h for h in range(1, g + 1) if (h + z) % 2), default=None)
            want = 0 if last is None else last % 250 + 1
            assert np.all(state.labels[z] == want), (trial, z, g)
        assert len(state.events) == 3 * g and state.events[-1]["time"] == g
        assert len(state.clicks["p"]) == g % 5 and np.all(np.asarray(state.clicks["p"]) == g)
    assert mid_commit, "no kill landed inside a commit: the test proves nothing"


def test_log_segments_are_merged_and_stay_in_order(tmp_path):
    store = _store(tmp_path)
    fp = image_fingerprint([_image()])
    rec = store.create(fp, SHAPE, np.uint8)
    for i in range(150):
        rec.commit(Snapshot(events=_events(i, 1), events_start=i))
    assert len(rec.manifest["log"]) <= recovery._MAX_SEGMENTS
    rec.commit(Snapshot(events=_events(0, 4), reset_log=True))  # the session was replaced
    rec.commit(Snapshot(events=_events(4, 1), events_start=4))
    with pytest.raises(RecoveryError, match="do not follow"):
        rec.commit(Snapshot(events=_events(9, 1), events_start=9))
    rec.release()
    (info,) = store.find(fp)
    assert store.read(info).events == _events(0, 5)


def test_damaged_data_is_refused_by_name(tmp_path):
    store = _store(tmp_path)
    fp = image_fingerprint([_image()])
    rec = store.create(fp, SHAPE, np.uint8)
    rec.commit(Snapshot(shown={2: _slice(3)}, events=_events(0, 1)))
    rec.release()
    (info,) = store.find(fp)
    (labels_file,) = info.folder.glob("L00002.*")
    labels_file.write_bytes(labels_file.read_bytes()[:-3])
    with pytest.raises(RecoveryError, match=labels_file.name):
        store.read(info)
    (info.folder / "manifest.json").write_text('{"format": "napari-simseg-recovery", "version": 99}')
    with pytest.raises(RecoveryError, match="newer than supported"):
        recovery._read_manifest(info.folder)


def test_prune_expires_old_sessions_and_caps_the_size(tmp_path):
    store = _store(tmp_path, max_bytes=10**9)
    fp = image_fingerprint([_image()])
    noise = np.random.default_rng(0).integers(0, 3, SHAPE[1:], dtype=np.uint8)  # compresses badly
    records = []
    for _ in range(4):
        rec = store.create(fp, SHAPE, np.uint8)
        rec.commit(Snapshot(shown={z: noise for z in range(SHAPE[0])}, events=_events(0, 1)))
        records.append(rec)
        time.sleep(0.01)
    for rec in records[:3]:
        rec.release()  # records[3] runs on
    size = recovery._folder_size(records[0].folder)
    orphan = store.root / "0000-killed-before-its-first-commit"
    orphan.mkdir()
    young_orphan = store.root / "0001-starting"
    young_orphan.mkdir()
    os.utime(orphan, (time.time() - 600, time.time() - 600))
    # nothing expired yet, all fit: only the orphan goes
    assert store.prune() == [orphan] and young_orphan.exists()
    # in 15 days every ended session has expired; the running one stays
    later = time.time() + 15 * 86400
    store.max_bytes = 10**9
    assert set(store.prune(now=later)) == {r.folder for r in records[:3]} | {young_orphan}
    assert records[3].folder.exists()
    # the size cap: the oldest ended sessions go first, the running one never
    store2 = RecoveryStore(tmp_path / "capped", durable=False, max_bytes=int(2.5 * size))
    recs = []
    for _ in range(4):
        rec = store2.create(fp, SHAPE, np.uint8)
        rec.commit(Snapshot(shown={z: noise for z in range(SHAPE[0])}, events=_events(0, 1)))
        recs.append(rec)
        time.sleep(0.01)
    for rec in recs[1:]:
        rec.release()  # recs[0], the oldest, still runs
    removed = store2.prune()
    assert removed == [recs[1].folder, recs[2].folder]
    assert recs[0].folder.exists() and recs[3].folder.exists()


def test_writer_merges_waiting_snapshots_and_retries_a_failed_commit(tmp_path, monkeypatch):
    store = _store(tmp_path)
    fp = image_fingerprint([_image()])
    rec = store.create(fp, SHAPE, np.uint8)
    real_commit = rec.commit
    gate = {"fail": True}

    def flaky(snap):
        if gate["fail"]:
            raise OSError("No space left on device")
        return real_commit(snap)

    monkeypatch.setattr(rec, "commit", flaky)
    writer = AutosaveWriter(rec, store)
    done = []
    writer.submit(Snapshot(shown={1: _slice(1)}, events=_events(0, 2)), on_committed=lambda: done.append(1))
    assert writer.flush(10)
    assert isinstance(writer.error, OSError) and writer.commits == 0 and done == []
    gate["fail"] = False
    for i in range(2, 40):  # faster than it writes: merged while it is busy
        writer.submit(Snapshot(shown={i % SHAPE[0]: _slice(i)}, events=_events(i, 1), events_start=i))
    assert writer.flush(10) and writer.error is None
    assert 1 <= writer.commits <= 38 and done == [1]  # run once its snapshot was on disk
    writer.close(remove=False)
    state = store.read(store.find(fp)[0])
    assert state.events == _events(0, 2) + [e for i in range(2, 40) for e in _events(i, 1)]
    want = np.zeros(SHAPE, np.uint8)
    want[1] = _slice(1)
    for i in range(2, 40):
        want[i % SHAPE[0]] = _slice(i)
    np.testing.assert_array_equal(state.labels, want)
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(Snapshot())


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMSEG_RECOVERY_DIR", str(tmp_path / "r"))
    assert recovery.default_root() == tmp_path / "r"
    monkeypatch.delenv("SIMSEG_RECOVERY_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if sys.platform.startswith("linux"):
        assert recovery.default_root() == tmp_path / "cache" / "napari-simseg" / "recovery"
    assert recovery.default_root().name == "recovery"


def test_digest_tells_shape_and_type_apart():
    a = np.zeros((2, 3), np.uint8)
    assert slice_digest(a) != slice_digest(a.reshape(3, 2)) and slice_digest(a) != slice_digest(a.astype(np.uint16))
    assert json.loads(json.dumps(slice_digest(a))) == slice_digest(a.copy())
