"""Atomic file writes: a temporary file in the target's folder, then a rename over it.

Every file napari-simseg writes (labels and images, interaction logs, checkpoints,
training logs and state, configs, splits, evaluation reports) goes through
:func:`atomic_path`, so a process killed at any moment leaves either the old file or
the new one, whole, never a truncated mix.

Temporary files are named ``.simseg-tmp-<pid>.<host>-<random>-<target name>``: hidden,
recognisable, and ending with the target's name so that writers that choose the
format by extension (SimpleITK, matplotlib) still do. A kill leaves its temporary file
behind; :func:`remove_stale_temporaries` removes those whose process (on this host)
is gone, which every later atomic write does in its folder and a training run does in
its output folder when it starts.

A detached header (``.mhd`` naming a ``.raw``/``.zraw``, ``.nhdr`` naming a
``.raw``/``.raw.gz``) is one transaction of several files: the new data file is moved
beside the target under a name no header uses yet (``<stem>.<ext>`` when free, else
``<stem>.simseg-<pid>.<host>-<random>.<ext>``), then the new header is renamed over the
target (the one pointer a reader follows), and only then is the old data file removed.
A kill at any moment leaves the old pair or the new pair, never a header naming the
other write's data; an orphaned data file of a killed write is removed by the next
write of that target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DETACHED_EXTENSIONS", "TMP_PREFIX", "atomic_path", "atomic_write_text", "detached_data_file",
           "process_running", "remove_stale_temporaries"]

#: The prefix of every temporary file (or folder) an atomic write makes.
TMP_PREFIX = ".simseg-tmp-"


def _host_tag() -> str:
    # a short tag of this machine: a shared folder may be written from several hosts,
    # and a process id means nothing on another one
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _owner_tag() -> str:
    return f"{os.getpid()}.{_host_tag()}-"


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (on Windows: always assumed)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files (and folders) left in ``folder`` by killed writers.

    Only entries named by :func:`atomic_path` on this host whose process no longer
    runs are removed; a write in progress, here or on another machine, is left alone.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed = []
    host = _host_tag()
    try:
        entries = list(Path(folder).glob(TMP_PREFIX + "*"))
    except OSError:
        return removed
    for entry in entries:
        owner = entry.name[len(TMP_PREFIX):].split("-", 1)[0]
        pid, _, tag = owner.partition(".")
        if tag != host or not pid.isdigit() or process_running(int(pid)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # removed meanwhile, or not ours to remove
    return removed


def _permissions(target: Path) -> int:
    """The mode a new file gets: the target's own if it exists, else the umask's default."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync(path: Path) -> None:
    # the data reach the disk before the rename makes them the target (power loss)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target, detached: bool = False, own_folder: bool = False) -> Iterator[Path]:
    """A temporary path to write ``target`` to; renamed over ``target`` on success.

    Parameters
    ----------
    target : str or os.PathLike
        The file to (re)write. Its folder is created when missing.
    detached : bool
        The writer makes a detached header (``.mhd``, ``.nhdr``) that names its data file
        beside it: the path is then ``<temporary folder>/<data stem><header extension>``,
        and the pair is switched as one transaction (see the module docstring).
    own_folder : bool
        The path is ``<temporary folder>/<target name>``: for writers that make temporary
        files of their own beside the path they are given (safetensors writes a
        ``.tmpXXXXXX`` first), so that a kill leaves them in our folder, which
        :func:`remove_stale_temporaries` removes.

    Yields
    ------
    pathlib.Path
        Where to write. Nothing is left there when the block raises.

    Examples
    --------
    >>> with atomic_path("runs/a/log.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    target = Path(target)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    mode = _permissions(target)
    prefix = TMP_PREFIX + _owner_tag()
    if detached or own_folder:
        holder = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        tmp = holder / (_free_data_stem(target) + _header_extension(target) if detached else target.name)
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix="-" + target.name, dir=folder)
        os.close(fd)
        holder = tmp = Path(name)
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"nothing was written to {target}")
        if detached:
            _switch_detached(holder, tmp, target, mode)
        else:
            os.chmod(tmp, mode)  # mkstemp makes 0600 files; keep the target's permissions
            _fsync(tmp)
            os.replace(tmp, target)
    finally:
        if holder.is_dir():
            shutil.rmtree(holder, ignore_errors=True)
        elif holder.exists():
            holder.unlink()


# ---------------------------------------------------------------------- detached headers
#: The line of a detached header that names its data file: MetaImage's and NRRD's.
_DATA_FILE_LINE = re.compile(r"^(?:ElementDataFile\s*=|data file\s*:)\s*(.+?)\s*$", re.MULTILINE)
#: The header extensions a detached write knows (lower case).
DETACHED_EXTENSIONS = (".mhd", ".nhdr")


def _header_extension(target: Path) -> str:
    ext = target.suffix
    if ext.lower() not in DETACHED_EXTENSIONS:
        raise ValueError(f"{target}: a detached write needs a header ending in {' or '.join(DETACHED_EXTENSIONS)}")
    return ext


def detached_data_file(header: Path) -> str | None:
    """The data file name ``header`` refers to, when it is a plain name in its folder (not
    ``LOCAL``, a list or a pattern); ``None`` otherwise or when it cannot be read."""
    try:
        with open(header, "rb") as f:
            text = f.read(65536).decode("latin-1")
    except OSError:
        return None
    match = _DATA_FILE_LINE.search(text)
    if match is None:
        return None
    name = match.group(1)
    if not name or name.upper() in ("LOCAL", "LIST") or "/" in name or "\\" in name or " " in name \
            or "%" in name or name in (".", ".."):
        return None
    return name


def _ours_name(stem: str) -> re.Pattern:
    """Data file names a detached write of ``<stem>.<ext>`` gives when ``<stem>.*`` is taken."""
    return re.compile(re.escape(stem) + r"\.simseg-(\d+)\.([0-9a-f]{6})-[a-z0-9_]+\.")


def _free_data_stem(target: Path) -> str:
    """The stem of the new data file: the target's own unless the current header uses it."""
    stem = target.name[: -len(target.suffix)]
    current = detached_data_file(target) if target.is_file() else None
    if current is None or not current.startswith(stem + ".") or _ours_name(stem).match(current):
        return stem  # the header names another file: the plain name is free
    return f"{stem}.simseg-{_owner_tag()}{os.urandom(3).hex()}"


def _switch_detached(holder: Path, header: Path, target: Path, mode: int) -> None:
    """Move the data file(s) of ``holder`` beside ``target``, then the header over it
    (the switch), then remove the old pair's data file and orphans of killed writes."""
    folder = target.parent
    stem = target.name[: -len(target.suffix)]
    old_data = detached_data_file(target) if target.is_file() else None
    new_data = detached_data_file(header)
    companions = [p for p in holder.iterdir() if p != header]
    moved = []
    try:
        for path in companions:
            os.chmod(path, mode)
            _fsync(path)
            os.replace(path, folder / path.name)  # a name no header uses yet
            moved.append(folder / path.name)
        os.chmod(header, mode)
        _fsync(header)
        os.replace(header, target)  # the switch: readers now follow the new header
    except BaseException:
        for path in moved:  # the old header still names the old data file
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    stale = [old_data] if old_data and old_data != new_data and (
        old_data.startswith(stem + ".") or _ours_name(stem).match(old_data)) else []
    stale += _orphans(folder, stem)
    if stale:  # a data file another header of the folder still names stays
        named = {new_data} | {detached_data_file(h) for h in _headers(folder) if h.name != target.name}
        for name in stale:
            if name not in named:
                with contextlib.suppress(OSError):
                    (folder / name).unlink()


def _headers(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.suffix.lower() in DETACHED_EXTENSIONS and p.is_file()]
    except OSError:
        return []


def _orphans(folder: Path, stem: str) -> list[str]:
    """Data files of killed detached writes of ``<stem>``: our naming, a dead writer on this host."""
    pattern, host = _ours_name(stem), _host_tag()
    found = []
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return found
    for name in names:
        match = pattern.match(name)
        if match is not None and match.group(2) == host and not process_running(int(match.group(1))):
            found.append(name)
    return found


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path
