"""Crash recovery: a session's work, kept after every action in the user's cache folder.

A :class:`RecoveryStore` is a folder (:func:`default_root`: ``napari-simseg/recovery`` in the
user's cache directory, ``$SIMSEG_RECOVERY_DIR`` when set) holding one folder per session,
named after the image's key (:func:`image_fingerprint`: its file's path, size and time, its
shape, type and a hash of a strided sample and of each slice's sum over every 16th row) and
when and by which process the session started. :meth:`RecoveryStore.create` makes one for a running session;
the returned :class:`RecoveryRecord` takes a :class:`Snapshot` per completed action
(:meth:`RecoveryRecord.commit`, normally on :class:`~napari_simseg.core.session.autosave.AutosaveWriter`'s
thread) and writes only what changed:

* ``L<slice>.<generation>``: a slice's labels as shown, zlib-compressed (empty slices have
  no file);
* ``E<first>-<end>.<generation>.json``: the interaction log's new events (the log only
  grows; the segments are merged when there are many);
* ``P.<generation>.json``: the click layers' points and which rounds used them, when they
  changed;
* ``manifest.json``: which of those files make up the state, with the digests of every
  stored slice and of SimSeg's own labels (what a replayed log must give back). It is
  replaced atomically, last: a kill at any moment leaves the previous complete state or
  the new one; files the manifest no longer names are removed after the switch (or by
  the next writer or reader).

The writing process holds a lock on the folder's ``lock`` file (released by the system
when the process dies): a folder whose lock can be taken belongs to a session that ended
without closing (killed, crashed) and, while its state is ``"active"``, is offered by
:meth:`RecoveryStore.find`; :meth:`RecoveryStore.read` gives its :class:`RecoveredSession`.
The store stays bounded: folders older than ``max_age_days`` (14) go, and the oldest go
while all of them together exceed ``max_bytes``; a running session's folder is never
removed by another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_simseg.core.io.atomic import atomic_write_text

__all__ = ["DEFAULT_MAX_AGE_DAYS", "DEFAULT_MAX_BYTES", "RECOVERY_FORMAT", "RecoveredSession", "RecoveryError",
           "RecoveryInfo", "RecoveryRecord", "RecoveryStore", "Snapshot", "default_root", "image_fingerprint",
           "slice_digest"]

RECOVERY_FORMAT = "napari-simseg-recovery"
RECOVERY_VERSION = 1
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_AGE_DAYS = 14.0
MANIFEST = "manifest.json"
LOCK = "lock"
#: a folder without a manifest this old was left by a process killed before its first commit
_ORPHAN_SECONDS = 120.0
# a pruning store holds an ended session's lock for a moment: how long finding it (at Start)
# and reading, marking or removing it wait for that before taking it to run elsewhere
_FIND_WAIT_SECONDS = 0.25
_USE_WAIT_SECONDS = 2.0
_LOCK_POLL_SECONDS = 0.01
_MAX_SEGMENTS = 64  # log segments before they are merged into one
# what of an image is hashed for its key: about 2**18 values spread over it, and each slice's
# sum over every 16th row (a 300 x 512 x 512 volume: ~15 ms, the whole of it would take ~0.5 s)
_SAMPLE = 1 << 18
_ROW_STEP = 16


class RecoveryError(ValueError):
    """Recovery data that cannot be used; the message names the folder and what is wrong."""


def default_root() -> Path:
    """The store's folder: ``$SIMSEG_RECOVERY_DIR``, else ``<user cache>/napari-simseg/recovery``
    (``~/.cache`` or ``$XDG_CACHE_HOME`` on Linux, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows)."""
    env = os.environ.get("SIMSEG_RECOVERY_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-simseg", appauthor=False)) / "recovery"


def slice_digest(array: np.ndarray) -> str:
    """A short digest of an array's bytes (its shape and type included)."""
    a = np.ascontiguousarray(array)
    h = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=12)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def image_fingerprint(channels: Sequence[np.ndarray], path=None) -> dict:
    """What identifies an image cheaply but robustly: the key of its recovery folders.

    Parameters
    ----------
    channels : sequence of ndarray
        The image's channels (one array for a single-channel image).
    path : str or Path, optional
        The file it was read from; its resolved path, size and modification time join
        the key (the same pixels opened from another file are another session).

    Returns
    -------
    dict
        ``{"key", "path", "size", "mtime_ns", "shape", "dtype", "content"}``: ``content``
        hashes each channel's shape, type, a strided sample of about 2**18 values and
        every slice's sum over every 16th row (an image of up to 2**18 values is hashed
        whole).
    """
    h = hashlib.blake2b(digest_size=16)
    shapes, dtypes = [], []
    for channel in channels:
        a = np.asarray(channel)
        shapes.append(list(a.shape))
        dtypes.append(a.dtype.str)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        flat = a.reshape(-1)
        h.update(np.ascontiguousarray(flat[:: max(1, flat.size // _SAMPLE)]).tobytes())
        rows = a.reshape(-1, *a.shape[-2:])[:, ::_ROW_STEP]  # every slice's sum over every 16th row
        h.update(rows.sum(axis=(1, 2), dtype=np.float64).tobytes())
    fp = {"path": None, "size": None, "mtime_ns": None, "shape": shapes, "dtype": dtypes, "content": h.hexdigest()}
    if path is not None:
        p = Path(path)
        with contextlib.suppress(OSError):
            st = p.stat()
            fp.update(path=str(p.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    key_source = json.dumps({k: fp[k] for k in ("path", "size", "mtime_ns", "content")}, sort_keys=True)
    fp["key"] = hashlib.blake2b(key_source.encode(), digest_size=10).hexdigest()
    return fp


class _FolderLock:
    """An exclusive, non-blocking lock on a file; the system drops it when the holder dies."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the lock (flock and msvcrt alike)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


@dataclass
class Snapshot:
    """What changed with one completed action (taken on the GUI thread, cheap to take).

    Attributes
    ----------
    shown : dict of int -> ndarray
        The changed slices, as the labels layer shows them (hand edits included).
    written : dict of int -> ndarray
        The changed slices as SimSeg last wrote them (only their digests are kept:
        what a replayed log must give back).
    events : list of dict
        The interaction log's events from index ``events_start`` on.
    events_start : int
        Where ``events`` start in the session's log; 0 with ``reset_log`` replaces it.
    reset_log : bool
        The session was replaced (load, recovery): ``events`` is the whole log.
    clicks : dict, optional
        The click layers' state (points, which rounds used them), when it may have
        changed: anything JSON can hold, numpy arrays included (kept as lists).
    info : dict
        Session facts for the manifest (checkpoint, classes, saved events ...).
    state : str, optional
        ``"active"`` (offered after a crash) or ``"saved"`` (the work is in a file).
    """

    shown: dict = field(default_factory=dict)
    written: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    events_start: int = 0
    reset_log: bool = False
    clicks: dict | None = None
    info: dict = field(default_factory=dict)
    state: str | None = None

    def then(self, later: Snapshot) -> Snapshot:
        """This snapshot followed by ``later``, as one (the writer merges what waits)."""
        if later.reset_log:
            events, start, reset = list(later.events), later.events_start, True
        elif later.events_start == self.events_start + len(self.events) or not later.events:
            events, start, reset = self.events + later.events, self.events_start, self.reset_log
        else:
            raise ValueError(f"log events {later.events_start}.. do not follow "
                             f"{self.events_start}..{self.events_start + len(self.events)}")
        return Snapshot({**self.shown, **later.shown}, {**self.written, **later.written}, events, start, reset,
                        later.clicks if later.clicks is not None else self.clicks, {**self.info, **later.info},
                        later.state or self.state)


@dataclass
class RecoveryInfo:
    """A recoverable session, as its manifest describes it (nothing else read)."""

    folder: Path
    manifest: dict

    @property
    def updated(self) -> float:
        return float(self.manifest.get("updated", 0.0))

    @property
    def n_events(self) -> int:
        return int(self.manifest.get("n_events", 0))

    @property
    def session(self) -> dict:
        return dict(self.manifest.get("session", {}))

    def describe(self) -> str:
        """One line for a question to the user."""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated))
        n = self.n_events
        slices = len(self.manifest.get("slices", {}))
        return (f"unsaved work from {when}: {n} action{'s' * (n != 1)}, labels on {slices} "
                f"slice{'s' * (slices != 1)}")


@dataclass
class RecoveredSession:
    """A session's state as last committed: everything needed to restore it exactly."""

    info: RecoveryInfo
    labels: np.ndarray  # (Z, H, W) as shown
    events: list  # the whole interaction log
    clicks: dict | None  # as committed (numpy arrays as lists), or None when never stored
    written_digests: dict  # slice -> digest of SimSeg's labels there (absent: empty slice)

    def mismatched_slices(self, written: np.ndarray) -> list[int]:
        """Slices where ``written`` (labels a replayed log gave, ``(Z, H, W)``) differ from
        what SimSeg had written when the state was committed."""
        empty = slice_digest(np.zeros(written.shape[1:], written.dtype))
        return [z for z in range(written.shape[0])
                if slice_digest(written[z]) != self.written_digests.get(z, empty)]


def _read_manifest(folder: Path) -> dict:
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecoveryError(f"{folder}: no {MANIFEST} (the session wrote nothing yet)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecoveryError(f"{folder / MANIFEST}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != RECOVERY_FORMAT:
        raise RecoveryError(f"{folder / MANIFEST} is not napari-simseg recovery data")
    if not isinstance(doc.get("version"), int) or doc["version"] > RECOVERY_VERSION:
        raise RecoveryError(f"{folder / MANIFEST}: version {doc.get('version')!r} is newer than supported")
    return doc


def _referenced(manifest: dict) -> set[str]:
    names = {entry["file"] for entry in manifest.get("slices", {}).values()}
    names |= {seg["file"] for seg in manifest.get("log", ())}
    if manifest.get("clicks"):
        names.add(manifest["clicks"])
    return names


def _collect_garbage(folder: Path, manifest: dict | None) -> None:
    """Remove the files ``manifest`` does not name (written by a step that did not finish)."""
    keep = {MANIFEST, LOCK} | (_referenced(manifest) if manifest else set())
    for entry in folder.iterdir():
        if entry.name not in keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _jsonable(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} cannot be kept in recovery data")


def _write_new(path: Path, data: bytes, durable: bool) -> None:
    """Write a file under a name nothing refers to yet (a kill leaves garbage, never a wrong state)."""
    with open(path, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def _folder_size(folder: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total


class RecoveryRecord:
    """One running session's recovery folder, owned (locked) by this process.

    Made by :meth:`RecoveryStore.create`. Not thread-safe: one thread commits.

    Parameters
    ----------
    folder : Path
    lock : _FolderLock
        Held.
    manifest : dict
        The first manifest (written at the first commit).
    durable : bool
        Flush every file to the disk before the manifest names it (a power cut, not
        only a kill, then leaves a whole state).
    """

    def __init__(self, folder: Path, lock: _FolderLock, manifest: dict, durable: bool = True):
        self.folder = folder
        self._lock = lock
        self.manifest = manifest
        self.durable = durable
        self._segments_events: list = []  # every committed event, for merging segments
        self._clicks: str | None = None  # the click state last written, as JSON

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    def commit(self, snap: Snapshot) -> int:
        """Write what ``snap`` changed, then switch the manifest; returns the new generation.

        A failure (or a kill) before the switch leaves the previous state; the files the
        failed step wrote are removed by the next commit.
        """
        if not self._lock.held:
            raise RecoveryError(f"{self.folder}: this record was closed")
        old = self.manifest
        gen = self.generation + 1
        new = json.loads(json.dumps(old))  # a deep copy, still JSON
        slices, written = new.setdefault("slices", {}), new.setdefault("written", {})
        for z, arr in sorted(snap.shown.items()):
            arr = np.ascontiguousarray(arr, dtype=np.dtype(new["dtype"]))
            if tuple(arr.shape) != tuple(new["shape"][1:]):
                raise ValueError(f"slice {z} has shape {arr.shape}, the session's slices {new['shape'][1:]}")
            if not arr.any():
                slices.pop(str(z), None)
                continue
            name = f"L{int(z):05d}.{gen:08x}"
            _write_new(self.folder / name, zlib.compress(arr.tobytes(), 1), self.durable)
            slices[str(z)] = {"file": name, "digest": slice_digest(arr)}
        for z, arr in snap.written.items():
            arr = np.asarray(arr, dtype=np.dtype(new["dtype"]))
            if arr.any():
                written[str(z)] = slice_digest(arr)
            else:
                written.pop(str(z), None)
        self._commit_log(new, snap, gen)
        if snap.clicks is not None:
            text = json.dumps(snap.clicks, default=_jsonable)
            if text != self._clicks:
                name = f"P.{gen:08x}.json"
                _write_new(self.folder / name, text.encode(), self.durable)
                new["clicks"], self._clicks = name, text
        new["session"] = {**new.get("session", {}), **snap.info}
        new["state"] = snap.state or new.get("state", "active")
        new["generation"], new["updated"] = gen, time.time()
        atomic_write_text(self.folder / MANIFEST, json.dumps(new))  # the switch
        self.manifest = new
        _collect_garbage(self.folder, new)
        return gen

    def _commit_log(self, new: dict, snap: Snapshot, gen: int) -> None:
        """Write ``snap``'s events as a new segment (all of them, merged, when there are many)."""
        n = 0 if snap.reset_log else int(new.get("n_events", 0))
        if not snap.reset_log and snap.events and snap.events_start != n:
            raise RecoveryError(f"{self.folder}: log events {snap.events_start}.. do not follow the {n} stored")
        if snap.reset_log:
            new["log"], self._segments_events = [], []
        if not snap.events and not snap.reset_log:
            return
        self._segments_events = self._segments_events + list(snap.events)
        segments = list(new.get("log", []))
        if len(segments) >= _MAX_SEGMENTS:
            segments, first, events = [], 0, self._segments_events
        else:
            first, events = n, list(snap.events)
        end = first + len(events)
        if events:
            name = f"E{first:07d}-{end:07d}.{gen:08x}.json"
            _write_new(self.folder / name, json.dumps(events).encode(), self.durable)
            segments.append({"file": name, "start": first, "end": end})
        new["log"], new["n_events"] = segments, len(self._segments_events)

    def release(self) -> None:
        """Let go of the folder, keeping it (what a crash leaves, as a clean ending does not)."""
        self._lock.release()

    def remove(self) -> None:
        """Remove the folder (the work was saved, or the session closed cleanly)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._lock.release()


class RecoveryStore:
    """The recovery folders of every session of this user (see the module's docstring).

    Parameters
    ----------
    root : str or Path, optional
        Default :func:`default_root`.
    max_bytes : int
        The store's size cap; the oldest folders of ended sessions go first.
    max_age_days : float
        Folders not updated for this long go.
    durable : bool
        See :class:`RecoveryRecord`.
    """

    def __init__(self, root=None, max_bytes: int = DEFAULT_MAX_BYTES, max_age_days: float = DEFAULT_MAX_AGE_DAYS,
                 durable: bool = True):
        self.root = Path(root) if root is not None else default_root()
        self.max_bytes = int(max_bytes)
        self.max_age_days = float(max_age_days)
        self.durable = durable

    # ------------------------------------------------------------------ writing
    def create(self, fingerprint: dict, shape: Sequence[int], dtype, info: dict | None = None) -> RecoveryRecord:
        """A new, locked folder for a session on the image of ``fingerprint``.

        Parameters
        ----------
        fingerprint : dict
            :func:`image_fingerprint` of the image.
        shape : (Z, H, W)
            The labels' shape (``Z == 1`` for a 2D image).
        dtype : numpy dtype
            The labels' type.
        info : dict, optional
            Session facts kept in the manifest (checkpoint, classes ...).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for n in range(1000):
            folder = self.root / f"{fingerprint['key']}-{stamp}-{os.getpid()}{'' if n == 0 else f'-{n}'}"
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - a thousand sessions of one image in one second
            raise RecoveryError(f"{self.root}: cannot make a recovery folder")
        lock = _FolderLock(folder / LOCK)
        if not lock.acquire():  # pragma: no cover - the folder is new
            raise RecoveryError(f"{folder}: cannot lock a new recovery folder")
        now = time.time()
        manifest = {"format": RECOVERY_FORMAT, "version": RECOVERY_VERSION, "generation": 0, "key": fingerprint["key"],
                    "image": fingerprint, "created": now, "updated": now, "state": "active",
                    "shape": [int(s) for s in shape], "dtype": np.dtype(dtype).str, "slices": {}, "written": {},
                    "log": [], "n_events": 0, "clicks": None, "session": dict(info or {})}
        return RecoveryRecord(folder, lock, manifest, self.durable)

    # ------------------------------------------------------------------ finding
    def _folders(self, key: str | None = None) -> list[Path]:
        try:
            entries = [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return []
        return [p for p in entries if key is None or p.name.startswith(key + "-")]

    @contextlib.contextmanager
    def _ended(self, folder: Path, wait: float = 0.0) -> Iterator[bool]:
        """Holds ``folder``'s lock when its session has ended (yields whether it has); tries for
        ``wait`` seconds, since another store's :meth:`prune` holds an ended session's lock
        for a moment."""
        lock = _FolderLock(folder / LOCK)
        deadline = time.monotonic() + wait
        ended = lock.acquire()
        while not ended and time.monotonic() < deadline:
            time.sleep(_LOCK_POLL_SECONDS)
            ended = lock.acquire()
        try:
            yield ended
        finally:
            lock.release()

    def find(self, fingerprint: dict) -> list[RecoveryInfo]:
        """The recoverable sessions of this image: ended without closing, state ``"active"``,
        newest first."""
        found = []
        for folder in self._folders(fingerprint["key"]):
            with self._ended(folder, _FIND_WAIT_SECONDS) as ended:
                if not ended:
                    continue
                try:
                    manifest = _read_manifest(folder)
                except RecoveryError:
                    continue
            if manifest.get("state") == "active" and manifest.get("image") == fingerprint \
                    and manifest.get("n_events", 0) + len(manifest.get("slices", {})) > 0:
                found.append(RecoveryInfo(folder, manifest))
        return sorted(found, key=lambda info: info.updated, reverse=True)

    def read(self, info: RecoveryInfo) -> RecoveredSession:
        """The labels, log and clicks of a recoverable session, as last committed.

        Raises
        ------
        RecoveryError
            When the session runs again elsewhere, or a file is missing or damaged
            (named, with its folder).
        """
        folder = info.folder
        with self._ended(folder, _USE_WAIT_SECONDS) as ended:
            if not ended:
                raise RecoveryError(f"{folder}: its session is running in another process")
            manifest = _read_manifest(folder)
            _collect_garbage(folder, manifest)
            return _load_state(info, manifest)

    def set_state(self, info: RecoveryInfo, state: str) -> None:
        """Mark an ended session (``"declined"``: not offered again; removed when it expires)."""
        with self._ended(info.folder, _USE_WAIT_SECONDS) as ended:
            if ended:
                manifest = _read_manifest(info.folder)
                manifest["state"] = state
                atomic_write_text(info.folder / MANIFEST, json.dumps(manifest))

    def discard(self, info: RecoveryInfo) -> None:
        """Remove an ended session's folder."""
        with self._ended(info.folder, _USE_WAIT_SECONDS) as ended:
            if ended:
                shutil.rmtree(info.folder, ignore_errors=True)

    # ------------------------------------------------------------------ bounds
    def prune(self, now: float | None = None) -> list[Path]:
        """Remove expired folders, folders killed before their first commit, then the oldest
        ended sessions while the store exceeds ``max_bytes``; returns what was removed."""
        now = time.time() if now is None else now
        removed, kept = [], []
        for folder in self._folders():
            try:
                made = folder.stat().st_mtime  # before locking: the lock file may be new
            except OSError:
                continue
            with self._ended(folder) as ended:
                if not ended:
                    kept.append((float("inf"), _folder_size(folder), None))
                    continue
                try:
                    updated = float(_read_manifest(folder).get("updated", 0.0))
                except RecoveryError:
                    updated = None
                age = now - (updated if updated is not None else made)
                if age > self.max_age_days * 86400 or (updated is None and age > _ORPHAN_SECONDS):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                else:
                    kept.append((updated or 0.0, _folder_size(folder), folder))
        total = sum(size for _, size, _ in kept)
        for _, size, folder in sorted(kept, key=lambda k: k[0]):
            if total <= self.max_bytes:
                break
            if folder is None:
                continue  # a running session
            with self._ended(folder) as ended:
                if ended:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                    total -= size
        return removed


def _load_state(info: RecoveryInfo, manifest: dict) -> RecoveredSession:
    folder = info.folder
    try:
        shape = tuple(int(s) for s in manifest["shape"])
        dtype = np.dtype(manifest["dtype"])
        labels = np.zeros(shape, dtype)
        for key, entry in manifest["slices"].items():
            z, path = int(key), folder / entry["file"]
            try:
                raw = zlib.decompress(path.read_bytes())
            except (OSError, zlib.error) as exc:
                raise RecoveryError(f"{path}: unreadable ({exc})") from None
            if len(raw) != labels[z].nbytes:
                raise RecoveryError(f"{path}: {len(raw)} bytes, slice {z} needs {labels[z].nbytes}")
            labels[z] = np.frombuffer(raw, dtype).reshape(shape[1:])
            if slice_digest(labels[z]) != entry["digest"]:
                raise RecoveryError(f"{path}: its content does not match its digest")
        events = []
        for seg in manifest["log"]:
            part = json.loads((folder / seg["file"]).read_text(encoding="utf-8"))
            if not isinstance(part, list) or len(part) != seg["end"] - seg["start"] or seg["start"] != len(events):
                raise RecoveryError(f"{folder / seg['file']}: not events {seg['start']}..{seg['end']}")
            events.extend(part)
        clicks = None
        if manifest.get("clicks"):
            clicks = json.loads((folder / manifest["clicks"]).read_text(encoding="utf-8"))
        written = {int(z): d for z, d in manifest.get("written", {}).items()}
    except RecoveryError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise RecoveryError(f"{folder}: damaged recovery data ({type(exc).__name__}: {exc})") from None
    return RecoveredSession(info, labels, events, clicks, written)
