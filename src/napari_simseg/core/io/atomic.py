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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_PREFIX", "atomic_path", "atomic_write_text", "process_running", "remove_stale_temporaries"]

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
def atomic_path(target, detached: bool = False) -> Iterator[Path]:
    """A temporary path to write ``target`` to; renamed over ``target`` on success.

    Parameters
    ----------
    target : str or os.PathLike
        The file to (re)write. Its folder is created when missing.
    detached : bool
        The writer makes companion files beside ``target`` (a detached header such as
        ``.mhd`` with its ``.raw``/``.zraw`` data file): the path is then
        ``<temporary folder>/<target name>`` and every file written into that folder is
        moved beside ``target``, the companions first and ``target`` last. Each file is
        replaced whole; the pair is replaced one file after the other.

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
    if detached:
        holder = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        tmp = holder / target.name
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix="-" + target.name, dir=folder)
        os.close(fd)
        holder = tmp = Path(name)
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"nothing was written to {target}")
        written = sorted(holder.iterdir(), key=lambda p: p.name == target.name) if detached else [tmp]
        for path in written:
            os.chmod(path, mode)  # mkstemp makes 0600 files; keep the target's permissions
            _fsync(path)
            os.replace(path, folder / (target.name if path == tmp else path.name))
    finally:
        if holder.is_dir():
            shutil.rmtree(holder, ignore_errors=True)
        elif holder.exists():
            holder.unlink()


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path
