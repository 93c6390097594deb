"""Teaching from a viewer: a :class:`~napari_simseg.annotator.viewer_session.ViewerSession`'s labelled
slices to a :class:`~napari_simseg.core.session.teaching.TeachJob`, and the switch to the new
checkpoint once it is done (``ViewerSession.teach``). Qt-free, like the viewer session.

Taught checkpoints go to a folder of the user's: beside the image when that folder is the
user's and writable, never inside the installed package (whose bundled sample is read-only
to SimSeg) or the Python installation; otherwise to :func:`user_checkpoint_dir`.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_simseg.core.io.images import split_extension
from napari_simseg.core.session.teaching import TeachCase, TeachTask, accepted_slices, layout_of, start_teaching

__all__ = ["TeachRequest", "ViewerTeachJob", "image_source_path", "is_user_folder", "start_viewer_teaching",
           "taught_checkpoint_path", "user_checkpoint_dir"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass
class TeachRequest:
    """What to teach (``ViewerSession.teach``'s arguments).

    Attributes
    ----------
    max_minutes : float
        The time budget, until the new checkpoint is written.
    slices : {"accepted", "edited"} or sequence of int
        Which labelled slices (``core.session.teaching.accepted_slices``), or the slices.
    base : "current", "demo", path or None
        Where teaching starts: the session's network, the bundled model, a checkpoint,
        or a fresh network.
    output : str or Path, optional
        The new checkpoint's file or folder (default: :func:`taught_checkpoint_path`).
    options : dict, optional
        Training options that override the teaching recipe.
    """

    max_minutes: float = 3.0
    slices: str | Sequence[int] = "accepted"
    base: object = "current"
    output: str | Path | None = None
    options: dict | None = None


def user_checkpoint_dir() -> Path:
    """The user's folder for taught checkpoints: ``checkpoints`` in napari-simseg's user data
    folder (``$XDG_DATA_HOME/napari-simseg`` or ``~/.local/share/napari-simseg`` on Linux,
    ``~/Library/Application Support/napari-simseg`` on macOS, ``%LOCALAPPDATA%\\napari-simseg``
    on Windows; platformdirs, which napari depends on)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-simseg", appauthor=False)) / "checkpoints"


def _installation_folders() -> list[Path]:
    """Folders that belong to the installation, not the user: the package and Python's own."""
    folders = {PACKAGE_DIR, Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    for key in ("purelib", "platlib", "stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            folders.add(Path(path))
    return [f.resolve() for f in folders]


def is_user_folder(folder) -> bool:
    """Whether SimSeg may write into ``folder``: an existing, writable folder outside the
    installed package and the Python installation (site-packages, the environment)."""
    folder = Path(folder).expanduser()
    if not (folder.is_dir() and os.access(folder, os.W_OK)):
        return False
    resolved = folder.resolve()
    return not any(resolved == f or f in resolved.parents for f in _installation_folders())


def image_source_path(layer) -> Path | None:
    """The file (or DICOM folder) an image layer was read from, or None."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        path = ((getattr(layer, "metadata", None) or {}).get("simseg_io") or {}).get("path")
    return Path(path) if path else None


def taught_checkpoint_path(layer, output=None) -> Path:
    """Where a checkpoint taught on ``layer`` goes.

    ``output`` when it names a ``.safetensors`` file; else ``<image stem>.taught-<time>.safetensors``
    in ``output``, or beside the image file when its folder is the user's
    (:func:`is_user_folder`), else in :func:`user_checkpoint_dir` (made if missing).

    Raises
    ------
    ValueError
        For an ``output`` inside the installed package or the Python installation.
    OSError
        When the user's data folder cannot be made.
    """
    if output is not None:
        path = Path(output).expanduser()
        target = path.parent if str(output).endswith(".safetensors") else path
        resolved = target.resolve()
        if any(resolved == f or f in resolved.parents for f in _installation_folders()):
            raise ValueError(f"{path} lies inside the napari-simseg installation; choose a folder of your own")
        if str(output).endswith(".safetensors"):
            return path
    source = image_source_path(layer)
    stem = split_extension(source)[0] if source else re.sub(r"[^\w.-]+", "_", str(layer.name)) or "image"
    if output is not None:
        folder = Path(output).expanduser()
    elif source is not None and is_user_folder(source.parent):
        folder = source.parent
    else:
        folder = user_checkpoint_dir()
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}.taught-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"


class ViewerTeachJob:
    """A viewer session's teaching job: the process's :class:`~napari_simseg.core.session.teaching.TeachJob`,
    and the session switched to the new checkpoint once it is done.

    The new network is loaded on a thread of its own (the event loop never waits for it)
    and the switch happens in :meth:`poll` (and so :meth:`done` and :meth:`result`), on
    the calling thread, when the session is not running another job (it waits for that).

    Attributes
    ----------
    job : TeachJob
    slices : list of int
        The labelled slices sent (trained on or held back).
    base : str or None
        The checkpoint teaching started from.
    switched : bool
        Whether the session now runs the new checkpoint.
    switch_error : str or None
        Why switching failed (the checkpoint stays on disk).
    """

    def __init__(self, viewer_session, job, slices, base):
        self.viewer_session = viewer_session
        self.job = job
        self.slices = list(slices)
        self.base = base
        self.switched = False
        self.switch_error: str | None = None
        self._loader: threading.Thread | None = None
        self._loaded = None  # the new Predictor, or the exception loading it raised

    @property
    def state(self) -> dict:
        return self.job.state

    @property
    def fraction(self) -> float:
        return self.job.fraction

    @property
    def process(self):
        return self.job.process

    def poll(self) -> dict:
        """Read the process's progress; switch the session once the job is done."""
        state = self.job.poll()
        if state["status"] == "done" and not self.switched and self.switch_error is None:
            self._switch(state["checkpoint"])
        return state

    def _switch(self, path) -> None:
        vs = self.viewer_session
        if self._loader is None:
            predictor = vs.session.predictor
            self._loader = threading.Thread(target=self._load, args=(path, str(predictor.device), predictor.tta),
                                            daemon=True, name="simseg-teach-load")
            self._loader.start()
        if self._loader.is_alive() or vs.busy:
            return  # the next poll switches
        if isinstance(self._loaded, BaseException):
            self.switch_error = str(self._loaded)
            return
        try:
            vs.set_checkpoint(self._loaded)
            self.switched = True
        except (ValueError, RuntimeError, OSError) as exc:
            self.switch_error = str(exc)

    def _load(self, path, device: str, tta: bool) -> None:
        from napari_simseg.core.network.predictor import Predictor

        try:
            self._loaded = Predictor(path, device=device, tta=tta,
                                     expected_classes=self.viewer_session.class_names)
        except Exception as exc:  # noqa: BLE001 - reported as switch_error
            self._loaded = exc

    def done(self) -> bool:
        """Whether the job ended and, when it succeeded, the session switched (or could not)."""
        state = self.poll()
        if state["status"] == "done":
            return self.switched or self.switch_error is not None
        return state["status"] in ("failed", "cancelled")

    def result(self, timeout: float | None = None) -> Path:
        """Wait for the new checkpoint (see ``TeachJob.result``); the session switches to it."""
        path = self.job.result(timeout)
        self.poll()
        if self._loader is not None:
            self._loader.join()
            self.poll()  # switches unless the session runs another job (then a later poll does)
        return path

    def cancel(self) -> bool:
        """Stop teaching (the process and its temporaries go); the session keeps its network."""
        return self.job.cancel()

    def describe(self) -> str:
        """One line on where the job is (the widget's progress text and status)."""
        st = self.state
        where = "held-back slices" if st["held_back"] else "the taught slices"
        clicks = st.get("clicks")
        if st["status"] == "done":
            text = f"taught on {len(self.slices)} slice{'s' * (len(self.slices) != 1)}"
            text += f" in {self.job.elapsed / 60:.1f} min"
            text += _before_after(st, clicks, where)
            if self.switched:
                return text + f"; now using {Path(st['checkpoint']).name}"
            return text + (f"; not switched: {self.switch_error}" if self.switch_error else "; switching ...")
        if st["status"] in ("failed", "cancelled"):
            return st["message"]
        if not st["epoch"]:
            return f"teaching: {st['message']} ..."
        text = f"teaching: epoch {st['epoch']}/{st['epochs']}"
        if st["loss"] is not None:
            text += f", loss {st['loss']:.3f}"
        if st["dice"] is not None:
            text += f", Dice {st['dice']:.3f} on {where}"
        return text


def _before_after(state: dict, clicks, where: str) -> str:
    after = state.get("after") or {}
    key = str(clicks) if str(clicks) in after else next(iter(after), None)
    if key is None or after.get(key) is None:
        return ""
    before = (state.get("before") or {}).get(key)
    shown = f"{before:.3f} -> {after[key]:.3f}" if before is not None else f"{after[key]:.3f}"
    return f": Dice at {key} clicks on {where} {shown}"


def start_viewer_teaching(vs, request: TeachRequest) -> ViewerTeachJob:
    """Start teaching a viewer session's labelled slices (``ViewerSession.teach``)."""
    session = vs.session
    if isinstance(request.slices, str):
        chosen = accepted_slices(session, vs.hand_edited, request.slices)
    else:
        chosen = sorted({session.check_slice(0 if vs.is_2d else z) for z in request.slices})
    if not chosen:
        raise ValueError("nothing to teach yet: click, propagate or paint some slices first")
    labels = np.asarray(vs.labels_layer.data)
    labels = labels[None] if vs.is_2d else labels
    predictor = session.predictor
    checkpoint = request.base
    base = predictor.checkpoint.path if isinstance(checkpoint, str) and checkpoint == "current" else checkpoint
    source = image_source_path(vs.image_layer)
    job = start_teaching(TeachTask(
        [TeachCase(vs.image_layer.name, session.volume, labels, chosen)], session.class_names,
        predictor.channel_names, base, request.max_minutes, taught_checkpoint_path(vs.image_layer, request.output),
        layout=layout_of(predictor.meta), normalization=dict(predictor.meta.normalization),
        options=request.options, provenance={"image": str(source) if source else vs.image_layer.name},
        device=str(predictor.device)))
    return ViewerTeachJob(vs, job, chosen, None if base is None else str(base))
