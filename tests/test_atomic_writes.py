"""Atomic saves (issue 18, point 3): every writer goes through ``core.io.atomic``; a kill or a
failure at any moment leaves the old file or the new one, whole, and killed writes'
temporary files are cleaned up by the next write in their folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_simseg.core.io import atomic
from napari_simseg.core.io.atomic import TMP_PREFIX, atomic_path, atomic_write_text, remove_stale_temporaries
from napari_simseg.core.io.images import ImageWriteError, read_image, write_image


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_path_replaces_whole_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "old")
    os.chmod(target, 0o640)
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(TMP_PREFIX)
        assert tmp.name.endswith("-report.json")  # writers that pick the format by suffix still do
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing changes before the rename
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert _leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "labels.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed_others_kept(tmp_path):
    host = atomic._host_tag()
    dead = tmp_path / f"{TMP_PREFIX}{_dead_pid()}.{host}-abc123-labels.nii.gz"
    alive = tmp_path / f"{TMP_PREFIX}{os.getpid()}.{host}-def456-labels.nii.gz"
    elsewhere = tmp_path / f"{TMP_PREFIX}{_dead_pid()}.ffffff-ghi789-labels.nii.gz"  # another machine's
    folder = tmp_path / f"{TMP_PREFIX}{_dead_pid()}.{host}-jkl012"  # a detached-header write
    for p in (dead, alive, elsewhere):
        p.write_bytes(b"partial")
    folder.mkdir()
    (folder / "x.mhd").write_text("partial")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, folder.name])
    assert alive.exists() and elsewhere.exists() and not dead.exists() and not folder.exists()
    # every atomic write cleans its folder
    dead.write_bytes(b"partial")
    atomic_write_text(tmp_path / "other.txt", "x")
    assert not dead.exists()


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr", ".tif"])
def test_write_image_replaces_an_existing_file_atomically(tmp_path, ext, monkeypatch):
    target = tmp_path / f"labels{ext}"
    old = np.arange(4 * 8 * 9, dtype=np.uint8).reshape(4, 8, 9)
    write_image(target, old)
    new = old[::-1].copy()
    write_image(target, new)
    np.testing.assert_array_equal(read_image(target).array, new)
    assert _leftovers(tmp_path) == []
    # a write that fails at the rename leaves the previous file whole and no temporary file
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(target.name):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(ImageWriteError, match="No space left on device"):
        write_image(target, old)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(target).array, new)  # a detached pair too: one transaction
    assert _leftovers(tmp_path) == []
    assert len(list(tmp_path.iterdir())) == (2 if ext in (".mhd", ".nhdr") else 1)  # no orphaned data file


def _checkpoint_writer(path, text):
    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import save_checkpoint

    meta, model = tiny_meta_and_model()
    meta.training = {"note": text}
    save_checkpoint(path, model, meta)


def _read_checkpoint(path):
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    return read_checkpoint_meta(path).training["note"]


def _writers():
    from napari_simseg.core.data.splits import load_split, save_split
    from napari_simseg.core.jobs.evaluation import write_table
    from napari_simseg.core.session.interaction_log import load_log, write_log

    def table(path, text):
        result = {"name": text, "classes": ["background", "a"],
                  "results": [{"clicks": 0, "iou": {"background": 0.9, "a": 0.5},
                               "dice": {"background": 0.9, "a": 0.6}}]}
        write_table([result], path)

    return {
        "log": (
            lambda p, t: write_log(p, [4, 8, 8], ["background", t], "ck", []),
            lambda p: load_log(p)["class_names"][1],
            "case.simseg.json",
        ),
        "split": (
            lambda p, t: save_split(p, {"train": [t], "val": [], "test": []}),
            lambda p: load_split(p)["train"][0],
            "split.json",
        ),
        "table": (table, lambda p: p.read_text().splitlines()[2].split("|")[1].strip(), "table.md"),
        "checkpoint": (_checkpoint_writer, _read_checkpoint, "model.safetensors"),
    }


@pytest.mark.parametrize("kind", ["log", "split", "table", "checkpoint"])
def test_every_writer_is_atomic(tmp_path, kind, monkeypatch):
    write, read, name = _writers()[kind]
    target = tmp_path / name
    write(target, "old")
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        write(target, "new")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert read(target) == "old"
    assert _leftovers(tmp_path) == []
    write(target, "new")
    assert read(target) == "new"


def test_evaluation_plot_and_cli_json_are_written_atomically(tmp_path, monkeypatch):
    from napari_simseg.core.jobs.evaluation import write_plot

    result = {
        "name": "r",
        "classes": ["background", "a"],
        "results": [{"clicks": k, "dice": {"background": 0.9, "a": 0.5 + k / 10}} for k in (0, 1)],
    }
    plot = write_plot([result], tmp_path / "r.png")
    assert plot.read_bytes()[:4] == b"\x89PNG" and _leftovers(tmp_path) == []
    # check-data's --json goes through the same helper
    from napari_simseg.cli import main
    from napari_simseg.core.data.phantom import make_phantom_dataset

    data = tmp_path / "data"
    make_phantom_dataset(data, n_volumes=2, seed=0, shape=(4, 32, 32))
    out = tmp_path / "check.json"
    out.write_text("old")
    assert main(["check-data", str(data), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n_cases"] == 2 and _leftovers(tmp_path) == []


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_simseg.core.io.images import write_image
    value = int(sys.argv[2])
    array = np.random.default_rng(value).integers(0, 2000, size=(48, 256, 256)).astype(np.int16)
    array[0, 0, 0] = value
    print("ready", flush=True)
    write_image(sys.argv[1], array)
    print("done", flush=True)
    """
)


def _kill_writer(target, value: int, delay: float) -> bool:
    """Start a writer of ``value``'s array over ``target``, SIGKILL it after ``delay`` s;
    returns whether it finished first."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(value)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = "done" in proc.stdout.read()
    proc.stdout.close()
    return finished


def test_a_writer_killed_at_any_moment_leaves_the_old_or_the_new_file_whole(tmp_path):
    """A subprocess writes a large NIfTI over an existing one and is killed (SIGKILL) after
    varying delays: the target always reads back whole, the old file or the new one."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    target = tmp_path / "labels.nii.gz"
    shape = (48, 256, 256)
    old = np.random.default_rng(1).integers(0, 2000, size=shape).astype(np.int16)
    old[0, 0, 0] = 1
    write_image(target, old)
    delays = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0, 2.0]
    before, after = 0.0, None  # the last delay that killed before the rename, the first after
    mid_write, value = 0, 1
    for k in range(len(delays) + 8):
        if k < len(delays):
            delay = delays[k]
        elif mid_write or after is None:
            break
        else:  # no kill landed inside the write yet (a faster or slower machine): look between
            delay = (before + after) / 2
        value += 1
        finished = _kill_writer(target, value, delay)
        back = read_image(target).array  # a truncated file raises here
        got = int(back[0, 0, 0])
        expected = old
        if got != 1:
            expected = np.random.default_rng(got).integers(0, 2000, size=shape).astype(np.int16)
            expected[0, 0, 0] = got
        np.testing.assert_array_equal(back, expected)
        assert got == value or not finished  # a finished write is the new file
        left = _leftovers(tmp_path)
        mid_write += bool(left) and not finished
        if got == value:
            after = delay if after is None else min(after, delay)
        else:
            before = max(before, delay)
        if left:  # what a killed write leaves, the next write removes
            remove_stale_temporaries(tmp_path)
    assert mid_write >= 1, "no kill landed during a write: the test proves nothing"
    write_image(tmp_path / "other.nii.gz", old[:2])
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------- detached pairs (issue 34, point 9)
_PAIR_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from napari_simseg.core.io import atomic
    from napari_simseg.core.io.images import write_image

    target, value, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if mode == "die-before-data" and len(calls) == 1:
            os._exit(9)
        if mode == "die-before-header" and len(calls) == 2:
            os._exit(9)
        real_replace(src, dst)
        if mode == "die-after-header" and len(calls) == 2:
            os._exit(9)  # the switch is done, the old data file not yet removed
        if mode == "loop":
            print("replaced", len(calls) % 2, flush=True)
            time.sleep(0.05)  # widens the moments between the renames for the kills to land in

    atomic.os.replace = replace
    array = lambda v: np.full((6, 32, 40), v, np.int16) + np.arange(40, dtype=np.int16)
    if mode == "loop":
        while True:
            value += 1
            write_image(target, array(value))
    write_image(target, array(value))
    print("done", flush=True)
    """
)


def _pair_value(target) -> int:
    """The value a pair holds; reading a header whose data file is not its own raises."""
    back = read_image(target).array
    value = int(back[0, 0, 0])
    np.testing.assert_array_equal(back, np.full(back.shape, value, np.int16) + np.arange(40, dtype=np.int16))
    return value


def _run_pair_writer(target, value: int, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PAIR_WRITER, str(target), str(value), mode],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ext", [".mhd", ".nhdr"])
@pytest.mark.parametrize("mode,survivor", [("die-before-data", "old"), ("die-before-header", "old"),
                                           ("die-after-header", "new")])
@pytest.mark.parametrize("writes_before", [1, 2])  # the old pair under the plain data name, or ours
def test_a_detached_pair_killed_at_each_step_reads_as_the_old_or_the_new_pair(tmp_path, ext, mode, survivor,
                                                                              writes_before):
    """A .mhd/.nhdr header and its data file are one transaction: a process that dies before
    moving the data file, before renaming the header, or after the switch but before removing
    the old data file leaves a pair that reads whole; the next write leaves one pair, nothing else."""
    target = tmp_path / f"labels{ext}"
    for value in range(1, writes_before + 1):
        assert _run_pair_writer(target, value, "plain").returncode == 0
    old = writes_before
    killed = _run_pair_writer(target, 10, mode)
    assert killed.returncode == 9 and "done" not in killed.stdout
    assert _pair_value(target) == (old if survivor == "old" else 10)
    write_image(target, np.full((6, 32, 40), 11, np.int16) + np.arange(40, dtype=np.int16))
    assert _pair_value(target) == 11
    assert len(list(tmp_path.iterdir())) == 2, sorted(p.name for p in tmp_path.iterdir())


def test_a_detached_pair_killed_at_random_moments_always_reads_whole(tmp_path):
    """A real SIGKILL of a process writing a .mhd pair in a loop, at varying moments: the header
    always names a whole data file of its own write, and kills land between the two renames."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    target = tmp_path / "labels.mhd"
    write_image(target, np.full((6, 32, 40), 1, np.int16) + np.arange(40, dtype=np.int16))
    between, last = 0, 1
    for k in range(10):
        proc = subprocess.Popen([sys.executable, "-c", _PAIR_WRITER, str(target), str(last), "loop"],
                                stdout=subprocess.PIPE, text=True)
        # wait for the data file of a write to be moved (the first rename of a pair), then
        # kill at once (header not yet renamed) or a moment later
        while proc.stdout.readline().strip() != "replaced 1":
            pass
        if k % 2:
            time.sleep(0.03 + 0.01 * k)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        value = _pair_value(target)
        assert value >= last
        between += value == last and k % 2 == 0  # killed with a new data file moved, the old header kept
        last = value
    assert between >= 1, "no kill landed between the renames: the test proves nothing"
    write_image(target, np.full((6, 32, 40), 99, np.int16) + np.arange(40, dtype=np.int16))
    assert _pair_value(target) == 99 and len(list(tmp_path.iterdir())) == 2


_CHECKPOINT_WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from napari_simseg.core.network.checkpoint import write_tensors
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_meta_and_model
    meta, _ = tiny_meta_and_model()
    tensors = {"t%d" % k: torch.zeros(4_000_000) for k in range(8)}  # 128 MB: a write takes a while
    print("ready", flush=True)
    while True:
        write_tensors(sys.argv[1], tensors, meta)
    """
)


def _safetensors_temporary_in_subfolder(folder) -> bool:
    try:
        return any(any(q.name.startswith(".tmp") for q in p.iterdir())
                   for p in Path(folder).iterdir() if p.is_dir())
    except OSError:  # a folder removed while we looked
        return False


def test_a_checkpoint_write_killed_leaves_no_temporary_outside_our_own(tmp_path):
    """safetensors makes a ``.tmpXXXXXX`` of its own beside the path it writes: a checkpoint
    write killed (SIGKILL) at varying moments leaves it only inside our temporary folder,
    which the next write in that folder removes; the checkpoint stays whole."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    target = tmp_path / "last.safetensors"
    tests = os.path.dirname(__file__)
    inside = 0
    for delay in (None, 0.3, 0.8, None):
        proc = subprocess.Popen([sys.executable, "-c", _CHECKPOINT_WRITER, str(target), tests],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        if delay is None:  # kill as soon as safetensors' own temporary shows: a kill inside its write
            deadline = time.monotonic() + 60
            while not _safetensors_temporary_in_subfolder(tmp_path) and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        names = [p.name for p in tmp_path.iterdir()]
        assert not [n for n in names if n.startswith(".tmp")], names  # nothing of safetensors' own at the top
        inside += _safetensors_temporary_in_subfolder(tmp_path)
        if target.exists():
            read_checkpoint_meta(target)  # whole
    assert inside >= 1, "no kill landed inside safetensors' write: the test proves nothing"
    atomic_write_text(tmp_path / "other.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"other.txt", *(["last.safetensors"]
                                                                             if target.exists() else [])})


@pytest.mark.parametrize("ext, data", [(".mhd", "labels.zraw"), (".nhdr", "labels.raw.gz")])
def test_a_header_without_its_data_file_names_it(tmp_path, ext, data):
    from napari_simseg.core.io.images import ImageReadError

    target = tmp_path / f"labels{ext}"
    write_image(target, np.zeros((3, 8, 9), np.uint8))
    (tmp_path / data).unlink()
    with pytest.raises(ImageReadError, match=f"its header names the data file {data}, which is not beside it"):
        read_image(target)
