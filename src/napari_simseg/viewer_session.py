"""Drive SimSeg in a napari viewer: the actions behind the widget's buttons.

:class:`ViewerSession` binds an :class:`~napari_simseg.core.session.InteractiveSession`
to a viewer's layers: one points layer per class (``"<class> clicks"``, background
included) where the user places clicks, and one labels layer (``"SimSeg labels"``)
where results appear. It is usable as is from napari's console (every call runs
synchronously, on the calling thread)::

    from napari_simseg import ViewerSession
    vs = ViewerSession(viewer, checkpoint="model.safetensors")
    vs.add_clicks(12, [(1, 40, 52), (0, 10, 10)])   # (class, y, x) on slice 12
    vs.undo(12)
    vs.auto()                                        # every slice without clicks

The widget uses the same object and adds threading only. Actions that run the network
are split in three steps so that they can run on a worker thread: ``prepare_*``
(GUI thread: reads the layers, returns a :class:`Job`), ``Job.compute`` (any thread:
touches nothing but the core session) and ``Job.finish`` / ``Job.fail`` /
``Job.cancel`` (GUI thread: updates the layers). A session runs one job at a time.

How clicks are tracked
----------------------
The points themselves are the source of truth: a point that is not part of any
round (matched by class and exact coordinates) is *pending* and goes into the next
round of its slice. Moving a point therefore makes it a new click; deleting an
already used point changes nothing until that round is undone. Napari's per-point
features are not used for this because napari copies the features of selected
points into new ones.

Hand-edited slices
------------------
The session remembers what it last wrote to each slice. A slice whose labels differ
from that was edited by hand (painted, filled, erased, or loaded from a file without
a log) and is never overwritten silently: ``overwrite_policy`` says whether to
``"ask"`` (default; ``confirm`` is called), overwrite ``"always"`` or ``"never"``.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from ._colors import class_colors, labels_layer_kwargs
from ._writer import compact_labels, volume_from_layer
from .core.clicks import Click, as_clicks, validate_click
from .core.io import WRITABLE_EXTENSIONS, read_image, split_extension, write_image

if TYPE_CHECKING:  # pragma: no cover
    from .core.predictor import Predictor
    from .core.session import InteractiveSession, RoundResult

__all__ = [
    "CLICKS_SUFFIX",
    "LABELS_LAYER_NAME",
    "OVERWRITE_POLICIES",
    "Job",
    "ViewerSession",
    "check_image_layer",
    "log_path_for",
]

logger = logging.getLogger(__name__)

LABELS_LAYER_NAME = "SimSeg labels"
CLICKS_SUFFIX = " clicks"
OVERWRITE_POLICIES = ("ask", "always", "never")

# (class index, point coordinates in the points layer's data space)
PointKey = tuple[int, tuple[float, ...]]


@dataclass
class Job:
    """One network computation of a :class:`ViewerSession`, split by thread.

    Attributes
    ----------
    kind : {"round", "auto", "load"}
    description : str
        Human-readable, e.g. ``"round on slice 12"``.
    compute : callable
        ``compute()``; a plain function or a generator function. Touches only the core
        session, never a layer, so it may run on a worker thread.
    finish : callable
        ``finish(result)`` on the GUI thread once ``compute`` returned (generators:
        ``None``); returns what the synchronous API returns.
    fail : callable
        ``fail(exception)`` on the GUI thread if ``compute`` raised; returns a message.
    on_yield : callable, optional
        ``on_yield(value)`` on the GUI thread for each value a generator yields.
    cancel : callable, optional
        ``cancel()`` on the GUI thread when a generator was stopped early; returns a
        message.
    slice : int, optional
        The slice a round works on.
    """

    kind: str
    description: str
    compute: Callable[[], Any]
    finish: Callable[[Any], Any]
    fail: Callable[[BaseException], str]
    on_yield: Optional[Callable[[Any], None]] = None
    cancel: Optional[Callable[[], str]] = None
    slice: Optional[int] = None

    @property
    def is_generator(self) -> bool:
        return inspect.isgeneratorfunction(self.compute)


def log_path_for(labels_path) -> Path:
    """The interaction log that goes with a labels file: ``<stem>.simseg.json`` beside it."""
    path = Path(labels_path)
    stem, _ = split_extension(path)
    return path.with_name(f"{stem}.simseg.json")


def check_image_layer(layer) -> np.ndarray:
    """The layer's pixels if SimSeg can segment it, else an ``ImageError``.

    Refuses non-image layers, RGB(A), multiscale and anything not 2D or 3D, with a
    message that says what to do.
    """
    from napari.layers import Image

    from .core.session import ImageError

    if layer is None:
        raise ImageError(
            "no image layer: open an image (File > Open) or a sample "
            "(File > Open Sample > SimSeg) first"
        )
    if not isinstance(layer, Image):
        raise ImageError(f"'{layer.name}' is a {type(layer).__name__} layer; choose an image layer")
    if layer.rgb:
        raise ImageError(
            f"'{layer.name}' is an RGB(A) image; SimSeg segments single-channel images "
            "(split the channels first: right-click the layer > Split RGB)"
        )
    if layer.multiscale:
        raise ImageError(f"'{layer.name}' is a multiscale image; SimSeg needs a single-resolution 2D or 3D image")
    if layer.ndim not in (2, 3):
        raise ImageError(
            f"'{layer.name}' has {layer.ndim} dimensions {tuple(layer.data.shape)}; SimSeg "
            "segments 2D (H, W) or 3D (Z, H, W) images: pick one volume of a time series "
            "or one channel first"
        )
    return np.asarray(layer.data)


class ViewerSession:
    """Interactive segmentation of one image layer of a napari viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are used.
    image_layer : napari.layers.Image, str or None
        The image (or its name); ``None`` takes the selected image layer, else the
        topmost one.
    checkpoint : str, Path or Predictor
        ``"demo"`` (the bundled model), a ``.safetensors`` path, or a loaded Predictor.
    device : {"auto", "cpu", "cuda", "mps"}
        Where the network runs.
    overwrite_policy : {"ask", "always", "never"}
        What happens when a result would replace hand-edited labels.
    confirm : callable, optional
        ``confirm(slices) -> bool`` asked under the ``"ask"`` policy; default: a
        question dialog.
    batch_size : int
        Slices per network call in automatic segmentation.

    Raises
    ------
    ImageError
        Unusable image layer, or a ``"SimSeg labels"`` layer that does not fit it.
    CheckpointError
        Checkpoint that cannot be loaded or whose classes do not fit the existing
        ``"SimSeg labels"`` layer.
    FileNotFoundError
        Missing checkpoint (for ``"demo"``: the demo model is not installed).
    ValueError
        Unavailable device.

    Notes
    -----
    The viewer is only modified once everything has been checked: a failing
    constructor leaves the layers as they were.
    """

    def __init__(
        self,
        viewer,
        image_layer=None,
        checkpoint: Union[str, Path, "Predictor"] = "demo",
        device: str = "auto",
        *,
        overwrite_policy: str = "ask",
        confirm: Optional[Callable[[list], bool]] = None,
        batch_size: int = 8,
    ):
        from napari.layers import Labels, Points

        from ._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()  # before the first torch import in a process with a canvas
        from .core.session import ImageError, InteractiveSession

        if overwrite_policy not in OVERWRITE_POLICIES:
            raise ValueError(f"overwrite_policy must be one of {OVERWRITE_POLICIES}, got {overwrite_policy!r}")
        self.viewer = viewer
        image = self._find_image_layer(viewer, image_layer)
        data = check_image_layer(image)

        # --- every check happens before the first change to the viewer
        existing = viewer.layers[LABELS_LAYER_NAME] if LABELS_LAYER_NAME in viewer.layers else None
        expected_classes = None
        if existing is not None:
            if not isinstance(existing, Labels):
                raise ImageError(
                    f"a {type(existing).__name__} layer is called '{LABELS_LAYER_NAME}'; rename it first"
                )
            if tuple(existing.data.shape) != tuple(data.shape):
                raise ImageError(
                    f"the existing '{LABELS_LAYER_NAME}' layer has shape {tuple(existing.data.shape)} "
                    f"but '{image.name}' has shape {tuple(data.shape)}; delete or rename that layer"
                )
            expected_classes = existing.metadata.get("class_names")
        predictor = self._load_predictor(checkpoint, device, expected_classes)
        names = predictor.class_names
        if existing is not None and expected_classes is None:
            top = int(np.max(existing.data)) if existing.data.size else 0
            if top >= len(names) or (existing.data.size and int(np.min(existing.data)) < 0):
                from .core.checkpoint import CheckpointError

                raise CheckpointError(
                    f"{predictor.checkpoint.path}: trained for classes {names}, but the "
                    f"'{LABELS_LAYER_NAME}' layer holds label {top}; pick a matching "
                    "checkpoint or rename that layer"
                )
        for name in names:
            lname = f"{name}{CLICKS_SUFFIX}"
            if lname in viewer.layers and not isinstance(viewer.layers[lname], Points):
                raise ImageError(f"a {type(viewer.layers[lname]).__name__} layer is called '{lname}'; rename it first")
        session = InteractiveSession(data, predictor)

        # --- checks passed: bind to the viewer
        self.image_layer = image
        self._image = data
        self.session: InteractiveSession = session
        self.overwrite_policy = overwrite_policy
        self.confirm = confirm
        self.batch_size = int(batch_size)
        self._job: Optional[Job] = None
        self._in_flight: Optional[tuple[int, list[PointKey]]] = None
        self._rounds: dict[int, list[list[PointKey]]] = defaultdict(list)
        self._redo: dict[int, list[list[PointKey]]] = defaultdict(list)
        self._written = session.labels.copy()  # what the session last wrote, (Z, H, W)
        self._hand_edited: set[int] = set()
        self._edit_candidates: Optional[set] = None  # slices to re-check; None: all
        self.last_result: Optional[RoundResult] = None
        self.last_round_clicks = 0  # clicks of the last finished round
        self.last_round_shown = True  # whether its labels reached the layer
        self.labels_layer = self._make_labels_layer(existing)
        self.click_layers = self._make_click_layers()
        self._connect()
        foreground = self.click_layers[1] if len(self.click_layers) > 1 else self.click_layers[0]
        viewer.layers.selection.active = foreground
        foreground.mode = "add"

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _find_image_layer(viewer, image_layer):
        from napari.layers import Image

        from .core.session import ImageError

        if image_layer is None:
            active = viewer.layers.selection.active
            if isinstance(active, Image):
                return active
            images = [lay for lay in viewer.layers if isinstance(lay, Image)]
            return images[-1] if images else None
        if isinstance(image_layer, str):
            if image_layer not in viewer.layers:
                raise ImageError(f"no layer called '{image_layer}' in the viewer")
            return viewer.layers[image_layer]
        return image_layer

    @staticmethod
    def import_model_stack() -> None:
        """Import torch and the model code on the calling (GUI) thread.

        Call it before loading a checkpoint on a worker thread: the LLVM guard must run
        before torch's first import, and a first import is best not done off the main
        thread.
        """
        from ._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()
        from .core import checkpoint, predictor  # noqa: F401

    @staticmethod
    def load_predictor(checkpoint, device: str = "auto") -> "Predictor":
        """Load a checkpoint (path, ``"demo"``) onto ``device``; touches no layer, so it
        may run on a worker thread. Pass the result as ``checkpoint=`` to the
        constructor, which then checks its classes against an existing labels layer."""
        return ViewerSession._load_predictor(checkpoint, device)

    @staticmethod
    def _load_predictor(checkpoint, device: str, expected_classes=None) -> "Predictor":
        from .core.checkpoint import CheckpointError, load_checkpoint
        from .core.devices import resolve_device
        from .core.predictor import Predictor
        from .core.resources import resolve_checkpoint

        resolve_device(device)  # an unavailable device fails before the slow load
        if isinstance(checkpoint, Predictor):
            if expected_classes is not None and list(expected_classes) != checkpoint.class_names:
                raise CheckpointError(
                    f"{checkpoint.checkpoint.path}: trained for classes {checkpoint.class_names}, "
                    f"but the '{LABELS_LAYER_NAME}' layer has {list(expected_classes)}"
                )
            return checkpoint
        path = resolve_checkpoint(checkpoint)
        ckpt = load_checkpoint(path, expected_classes=expected_classes)
        return Predictor(ckpt, device=device)

    def _transform_kwargs(self) -> dict:
        img = self.image_layer
        return {
            "scale": tuple(img.scale),
            "translate": tuple(img.translate),
            "rotate": np.asarray(img.rotate),
            "shear": np.asarray(img.shear),
            "affine": np.asarray(img.affine.affine_matrix),
        }

    def _make_labels_layer(self, existing):
        kwargs = labels_layer_kwargs(self.class_names)
        if existing is None:
            return self.viewer.add_labels(
                np.zeros(self._image.shape, dtype=self.session.labels.dtype),
                name=LABELS_LAYER_NAME,
                opacity=0.6,
                **kwargs,
                **self._transform_kwargs(),
            )
        if not isinstance(existing.data, np.ndarray) or not existing.data.flags.writeable:
            existing.data = np.array(existing.data)  # results are written in place
        existing.features = kwargs["features"]
        existing.colormap = kwargs["colormap"]
        existing.metadata = {**existing.metadata, **kwargs["metadata"]}
        return existing

    def _make_click_layers(self) -> list:
        from napari.layers import Points

        colors = class_colors(self.n_classes)
        h, w = self._image.shape[-2:]
        size = max(2.0, 0.04 * min(h, w))
        layers = []
        for i, name in enumerate(self.class_names):
            lname = f"{name}{CLICKS_SUFFIX}"
            layer = self.viewer.layers[lname] if lname in self.viewer.layers else None
            meta = {"simseg": {"role": "clicks", "class_index": i, "class_name": name}}
            if isinstance(layer, Points) and layer.ndim == self._image.ndim:
                # clicks of an earlier session belong to rounds this session never ran
                layer.selected_data = set()  # a stale selection breaks the colour update
                layer.data = np.empty((0, self._image.ndim))
                layer.current_face_color = colors[i]
                layer.metadata = {**layer.metadata, **meta}
            else:
                if layer is not None:  # a points layer of another dimensionality
                    self.viewer.layers.remove(layer)
                layer = self.viewer.add_points(
                    np.empty((0, self._image.ndim)),
                    ndim=self._image.ndim,
                    name=lname,
                    face_color=colors[i],
                    border_color="black",
                    border_width=0.15,
                    size=size,
                    out_of_slice_display=False,
                    metadata=meta,
                    **self._transform_kwargs(),
                )
            layers.append(layer)
        return layers

    def _connect(self) -> None:
        self.labels_layer.events.paint.connect(self._on_paint)
        self.labels_layer.events.data.connect(self._on_labels_data)

    def close(self) -> None:
        """Stop listening to the layers (the layers and their contents stay)."""
        for emitter, cb in (
            (self.labels_layer.events.paint, self._on_paint),
            (self.labels_layer.events.data, self._on_labels_data),
        ):
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list:
        return list(self.session.class_names)

    @property
    def n_classes(self) -> int:
        return self.session.n_classes

    @property
    def is_2d(self) -> bool:
        return self.session.is_2d

    @property
    def n_slices(self) -> int:
        return self.session.n_slices

    @property
    def busy(self) -> bool:
        """Whether a job (network computation) is in progress."""
        return self._job is not None

    @property
    def labels(self) -> np.ndarray:
        """A copy of the labels as shown (hand edits included), shaped like the image."""
        return np.array(self._labels_layer().data, copy=True)

    @property
    def device(self) -> str:
        return str(self.session.predictor.device)

    def current_slice(self) -> int:
        """The slice (index along axis 0 of the image) the viewer shows; 0 for 2D."""
        if self.is_2d:
            return 0
        pos = self.labels_layer.world_to_data(self.viewer.dims.point)
        return int(np.clip(round(float(pos[0])), 0, self.n_slices - 1))

    def view_problem(self) -> Optional[str]:
        """Why clicks cannot be taken in the current view, or None."""
        if self.is_2d:
            return None
        dims = self.viewer.dims
        n = dims.ndim
        if dims.ndisplay != 2 or tuple(dims.displayed) != (n - 2, n - 1):
            return (
                "SimSeg segments slices along the image's first axis: switch to the 2D "
                "view with the last two axes displayed (undo the transpose/3D view)"
            )
        return None

    def has_rounds(self) -> bool:
        """Whether any slice holds interaction rounds (or undone ones)."""
        return any(self._rounds.values()) or any(self._redo.values())

    def _check_slice(self, slice_index) -> int:
        if slice_index is None:
            return self.current_slice()
        return self.session._slice(slice_index) if not self.is_2d else 0

    def _ensure_idle(self) -> None:
        if self._job is not None:
            raise RuntimeError(f"SimSeg is busy ({self._job.description}); wait for it to finish")

    # ------------------------------------------------------------------ labels layer
    def _labels_layer(self):
        """The labels layer; recreated from the session's results if it was deleted."""
        if self.labels_layer not in self.viewer.layers:
            data = self._written[0].copy() if self.is_2d else self._written.copy()
            self.labels_layer = self.viewer.add_labels(
                data, name=LABELS_LAYER_NAME, opacity=0.6,
                **labels_layer_kwargs(self.class_names), **self._transform_kwargs(),
            )
            self._connect()
        return self.labels_layer

    def _shown(self, z: int) -> np.ndarray:
        data = self._labels_layer().data
        return np.asarray(data) if self.is_2d else np.asarray(data[z])

    def is_hand_edited(self, slice_index) -> bool:
        """Whether a slice's labels differ from what the session last wrote there."""
        z = self._check_slice(slice_index)
        return not np.array_equal(self._shown(z), self._written[z])

    @property
    def hand_edited(self) -> set:
        """Slices whose labels differ from what the session last wrote there."""
        self._flush_edit_candidates()
        return set(self._hand_edited)

    def _mark_edited(self, slices: Optional[Iterable[int]]) -> None:
        # napari emits ``paint`` before it writes some edits: only note the slices
        # here and compare when someone asks
        if slices is None or self._edit_candidates is None:
            self._edit_candidates = None
        else:
            self._edit_candidates.update(slices)

    def _flush_edit_candidates(self) -> None:
        candidates, self._edit_candidates = self._edit_candidates, set()
        layer = self.labels_layer
        if layer not in self.viewer.layers:
            return
        data = np.asarray(layer.data)
        if self.is_2d:
            data = data[None]
        if candidates is None:
            diff = np.any(data != self._written, axis=(1, 2))
            self._hand_edited = {int(z) for z in np.flatnonzero(diff)}
            return
        for z in candidates:
            if 0 <= z < self.n_slices:
                if np.array_equal(data[z], self._written[z]):
                    self._hand_edited.discard(z)
                else:
                    self._hand_edited.add(z)

    def _on_paint(self, event) -> None:
        self._mark_edited(None if self.is_2d else self._painted_slices(event))

    def _painted_slices(self, event) -> Optional[set]:
        """Slices a paint event touched, or None (unknown: compare every slice).

        Napari's history atoms are either masked edits with a bounding box
        (``slice_key``) or ``(indices, old values, new values)`` tuples.
        """
        slices: set = set()
        try:
            for atom in getattr(event, "value", None) or ():
                key = getattr(atom, "slice_key", None)
                if key is not None:
                    first = key[0]
                    if isinstance(first, slice):
                        slices.update(range(*first.indices(self.n_slices)))
                    else:
                        slices.add(int(first))
                elif isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple):
                    slices.update(int(v) for v in np.unique(np.asarray(atom[0][0])))
                else:
                    return None
        except (TypeError, ValueError, IndexError):
            return None
        return slices

    def _on_labels_data(self, event=None) -> None:
        self._mark_edited(None)

    def _may_overwrite(self, slices: list) -> bool:
        if self.overwrite_policy == "always":
            return True
        if self.overwrite_policy == "never":
            return False
        confirm = self.confirm or self._default_confirm
        return bool(confirm(list(slices)))

    def _default_confirm(self, slices: list) -> bool:
        from ._qt.dialogs import ask_overwrite

        window = getattr(self.viewer, "window", None)
        parent = getattr(window, "_qt_window", None)
        return ask_overwrite(parent, slices)

    def _apply(self, z: int, labels: np.ndarray, overwrite: Optional[bool] = None) -> bool:
        """Show a session result on slice ``z`` unless that would erase hand edits.

        ``overwrite``: None follows ``overwrite_policy``; True/False decide directly.
        Returns whether the layer was written.
        """
        edited = self.is_hand_edited(z) and not np.array_equal(self._shown(z), labels)
        self._written[z] = labels
        if edited:
            allowed = self._may_overwrite([z]) if overwrite is None else overwrite
            if not allowed:
                self._hand_edited.add(z)
                return False
        layer = self._labels_layer()
        if self.is_2d:
            layer.data[...] = labels
        else:
            layer.data[z] = labels
        layer.refresh()
        self._hand_edited.discard(z)
        return True

    # ------------------------------------------------------------------ points
    def _live_click_layers(self):
        for cls, layer in enumerate(self.click_layers):
            if layer in self.viewer.layers:
                yield cls, layer

    def _slice_of(self, coords: Sequence[float]) -> int:
        return 0 if self.is_2d else int(round(coords[0]))

    def _valid(self, coords: Sequence[float]) -> bool:
        h, w = self.session.shape[1:]
        y, x = int(round(coords[-2])), int(round(coords[-1]))
        return 0 <= self._slice_of(coords) < self.n_slices and 0 <= y < h and 0 <= x < w

    def _used(self) -> Counter:
        used = Counter(k for rounds in self._rounds.values() for r in rounds for k in r)
        if self._in_flight is not None:
            used.update(self._in_flight[1])
        return used

    def pending_points(self) -> dict[int, list[PointKey]]:
        """Points not yet used by a round, by slice (points outside the image excluded)."""
        used = self._used()
        out: dict[int, list[PointKey]] = defaultdict(list)
        for cls, layer in self._live_click_layers():
            for row in np.asarray(layer.data, dtype=float):
                key = (cls, tuple(float(v) for v in row))
                if used[key] > 0:
                    used[key] -= 1
                elif self._valid(key[1]):
                    out[self._slice_of(key[1])].append(key)
        return dict(out)

    def pending_slices(self) -> list[int]:
        """Slices with pending points, the current slice first."""
        slices = sorted(self.pending_points())
        cur = self.current_slice()
        return ([cur] if cur in slices else []) + [z for z in slices if z != cur]

    def _drop_invalid_points(self) -> int:
        """Remove pending points that lie outside the image; returns how many."""
        used = self._used()
        removed = 0
        for cls, layer in self._live_click_layers():
            bad = []
            for i, row in enumerate(np.asarray(layer.data, dtype=float)):
                key = (cls, tuple(float(v) for v in row))
                if used[key] > 0:
                    used[key] -= 1
                elif not self._valid(key[1]):
                    bad.append(i)
            if bad:
                layer.remove(bad)
                removed += len(bad)
        return removed

    def _remove_points(self, keys: Iterable[PointKey]) -> None:
        by_class: dict[int, Counter] = defaultdict(Counter)
        for cls, coords in keys:
            by_class[cls][coords] += 1
        for cls, layer in self._live_click_layers():
            want = by_class.get(cls)
            if not want:
                continue
            idx = []
            for i, row in enumerate(np.asarray(layer.data, dtype=float)):
                c = tuple(float(v) for v in row)
                if want[c] > 0:
                    want[c] -= 1
                    idx.append(i)
            if idx:
                layer.remove(idx)

    def _add_points(self, keys: Iterable[PointKey]) -> None:
        by_class: dict[int, list] = defaultdict(list)
        for cls, coords in keys:
            by_class[cls].append(coords)
        for cls, layer in self._live_click_layers():
            if by_class.get(cls):
                layer.add(np.asarray(by_class[cls], dtype=float))

    def _remove_slice_points(self, z: int) -> None:
        for _, layer in self._live_click_layers():
            rows = np.asarray(layer.data, dtype=float)
            idx = [i for i, row in enumerate(rows) if self._slice_of(row) == z]
            if idx:
                layer.remove(idx)

    def _coords(self, z: int, y: float, x: float) -> tuple[float, ...]:
        return (float(y), float(x)) if self.is_2d else (float(z), float(y), float(x))

    # ------------------------------------------------------------------ rounds
    def _round_job(self, z: int, keys: list[PointKey]) -> Job:
        clicks = [Click(cls, coords[-2], coords[-1]) for cls, coords in keys]
        session = self.session  # the job keeps its session even if load() replaces it
        self._in_flight = (z, keys)

        def compute():
            return session.add_clicks(z, clicks)

        def finish(result):
            self._job = None
            self._in_flight = None
            rounds = self._rounds[z]
            del rounds[max(0, result.round - 1) :]
            rounds.append(keys)
            self._redo[z].clear()
            self.last_round_shown = self._apply(z, result.labels)
            self.last_round_clicks = len(keys)
            self.last_result = result
            return result

        def fail(exc):
            # the clicks become pending again; the user retries with "Run"
            self._job = None
            self._in_flight = None
            return f"round on slice {z} failed: {exc}"

        where = "" if self.is_2d else f" on slice {z}"
        job = Job("round", f"round{where}", compute, finish, fail, slice=z)
        self._job = job
        return job

    def prepare_round(self, slice_index=None) -> Optional[Job]:
        """Gather a slice's pending points into a round job (None: nothing pending).

        Points outside the image are removed. Raises RuntimeError when busy or when
        the view does not show slices along the first axis.
        """
        self._ensure_idle()
        problem = self.view_problem()
        if problem:
            raise RuntimeError(problem)
        z = self._check_slice(slice_index)
        self._drop_invalid_points()
        keys = self.pending_points().get(z, [])
        if not keys:
            return None
        return self._round_job(z, keys)

    def run(self, slice_index=None) -> Optional["RoundResult"]:
        """Run a round with the pending points of a slice (default: the current one).

        Returns
        -------
        RoundResult or None
            None when the slice has no new points.
        """
        job = self.prepare_round(slice_index)
        return None if job is None else self._run_sync(job)

    def add_clicks(self, slice_index, clicks: Sequence) -> "RoundResult":
        """Place clicks on a slice (they appear in the class layers) and run the round.

        Parameters
        ----------
        slice_index : int or None
            Slice along the first axis (None: the current slice; ignored for 2D).
        clicks : sequence of Click or (class index, y, x)
            Pixel coordinates of the slice; class 0 is the background.

        Raises
        ------
        ClickError
            For a click outside the slice or of an unknown class (nothing changes).
        """
        self._ensure_idle()
        z = self._check_slice(slice_index)
        clicks = as_clicks(clicks)
        for c in clicks:
            validate_click(c, self.n_classes, self.session.shape[1:])
        keys = [(int(c.label), self._coords(z, c.y, c.x)) for c in clicks]
        job = self._round_job(z, keys)  # marks the points as used before they appear
        try:
            self._add_points(keys)
        except Exception:
            self._job = None
            self._in_flight = None
            raise
        return self._run_sync(job)

    def _run_sync(self, job: Job):
        try:
            if job.is_generator:
                for value in job.compute():
                    job.on_yield(value)
                result = None
            else:
                result = job.compute()
        except BaseException as exc:
            job.fail(exc)
            raise
        return job.finish(result)

    def undo(self, slice_index=None) -> np.ndarray:
        """Undo the newest round of a slice: its points go, its labels go back."""
        self._ensure_idle()
        z = self._check_slice(slice_index)
        if self.session.n_rounds(z) == 0:
            raise RuntimeError(f"nothing to undo on slice {z}")
        labels = self.session.undo(z)
        keys = self._rounds[z].pop() if self._rounds[z] else []
        self._remove_points(keys)
        self._redo[z].append(keys)
        self._apply(z, labels)
        return labels

    def redo(self, slice_index=None) -> np.ndarray:
        """Redo the most recently undone round of a slice (its points come back)."""
        self._ensure_idle()
        z = self._check_slice(slice_index)
        if not self.session.memory(z).can_redo:
            raise RuntimeError(f"nothing to redo on slice {z}")
        labels = self.session.redo(z)
        keys = self._redo[z].pop() if self._redo[z] else []
        self._add_points(keys)
        self._rounds[z].append(keys)
        self._apply(z, labels)
        return labels

    def reset(self, slice_index=None) -> np.ndarray:
        """Forget every round of a slice, remove its points and clear its labels."""
        self._ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.reset_slice(z)
        self._remove_slice_points(z)
        self._rounds.pop(z, None)
        self._redo.pop(z, None)
        self._apply(z, labels)
        return labels

    # ------------------------------------------------------------------ automatic
    def prepare_auto(self, slices=None) -> Job:
        """A job predicting slices without clicks (0-click result), batched.

        Parameters
        ----------
        slices : int, sequence of int or None
            None: every slice. Slices with rounds are skipped (they hold the user's
            work); hand-edited slices are overwritten only as ``overwrite_policy``
            allows (asked once, for all of them).

        Raises
        ------
        RuntimeError
            When busy, or when no slice is left to predict.
        """
        self._ensure_idle()
        if slices is None:
            wanted = list(range(self.n_slices))
        elif np.ndim(slices) == 0:
            wanted = [self._check_slice(slices)]
        else:
            wanted = [self._check_slice(s) for s in slices]
        todo = [z for z in wanted if self.session.n_rounds(z) == 0]
        with_rounds = len(wanted) - len(todo)
        edited = [z for z in todo if self.is_hand_edited(z)]
        approved: set = set()
        if edited:
            if self._may_overwrite(edited):
                approved = set(edited)
            else:
                todo = [z for z in todo if z not in edited]
        kept = len(edited) - len(approved)
        if not todo:
            what = "the slice has" if len(wanted) == 1 else "every slice has"
            reasons = []
            if with_rounds:
                reasons.append(f"{what} clicks (Reset slice first)")
            if kept:
                reasons.append("hand-edited labels were kept")
            raise RuntimeError("nothing to predict automatically: " + "; ".join(reasons or ["no slices"]))
        session = self.session
        batch = self.batch_size
        progress = {"done": 0, "total": len(todo)}

        def compute():
            prev = 0
            for done, total in session.iter_auto(todo, batch):
                chunk = todo[prev:done]
                prev = done
                labels = session.labels[chunk].copy() if chunk else None
                yield done, total, chunk, labels

        def on_yield(value):
            done, total, chunk, labels = value
            progress.update(done=done, total=total)
            for z, lab in zip(chunk, labels if labels is not None else ()):
                # edits made while this ran were not approved: keep them
                self._apply(z, lab, overwrite=z in approved)

        def summary(prefix):
            notes = []
            if with_rounds:
                notes.append(f"{with_rounds} with clicks skipped")
            if kept:
                notes.append(f"{kept} hand-edited kept")
            tail = f" ({', '.join(notes)})" if notes else ""
            return f"{prefix}{tail}"

        def finish(_):
            self._job = None
            n = progress["total"]
            if self.is_2d:
                return summary("automatic segmentation done")
            return summary(f"automatic segmentation of {n} slice{'s' * (n != 1)} done")

        def cancel():
            self._job = None
            return summary(
                f"automatic segmentation cancelled after {progress['done']}/{progress['total']} "
                "slices; finished slices kept"
            )

        def fail(exc):
            self._job = None
            return f"automatic segmentation failed after {progress['done']}/{progress['total']} slices: {exc}"

        desc = "automatic segmentation" + ("" if len(todo) != 1 or self.is_2d else f" of slice {todo[0]}")
        job = Job("auto", desc, compute, finish, fail, on_yield=on_yield, cancel=cancel)
        self._job = job
        return job

    def auto(self, slice_index=None) -> str:
        """Automatic (0-click) segmentation of one slice, or of every slice (None).

        Returns a one-line summary.
        """
        return self._run_sync(self.prepare_auto(slice_index))

    # ------------------------------------------------------------------ device
    def set_device(self, device: str) -> str:
        """Move the network to another device (``auto``, ``cpu``, ``cuda``, ``mps``)."""
        from .core.predictor import Predictor

        self._ensure_idle()
        old = self.session.predictor
        new = Predictor(old.checkpoint, device=device, tta=old.tta)
        self.session.set_predictor(new)
        return str(new.device)

    # ------------------------------------------------------------------ files
    def save(self, path) -> tuple[Path, Path]:
        """Write the labels (as shown) and the interaction log beside them.

        Parameters
        ----------
        path : str or Path
            Labels file, one of ``core.io.WRITABLE_EXTENSIONS``; the log goes to
            ``<stem>.simseg.json`` in the same folder.

        Returns
        -------
        (labels path, log path)
        """
        from .core.io import ImageWriteError

        self._ensure_idle()
        path = Path(path)
        ext = split_extension(path)[1]
        if ext not in WRITABLE_EXTENSIONS:
            raise ImageWriteError(path, f"unsupported extension '{ext}'; use one of {', '.join(WRITABLE_EXTENSIONS)}")
        layer = self._labels_layer()
        meta = {
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
            "metadata": {"direction": self.image_layer.metadata.get("direction")},
        }
        volume = volume_from_layer(layer.data, meta)
        volume.array = compact_labels(volume.array)
        written = write_image(path, volume)
        log = self.session.save_log(log_path_for(written))
        return Path(written), Path(log)

    def prepare_load(self, path) -> Job:
        """A job restoring labels from a file and, with its log, the memories.

        Everything is checked here; the log replay (network rounds) is the job's
        ``compute``.
        """
        from .core.session import ImageError, load_log

        self._ensure_idle()
        path = Path(path)
        volume = read_image(path)
        array = volume.array
        expected = tuple(self._image.shape)
        if tuple(array.shape) != expected:
            raise ImageError(f"{path}: labels of shape {tuple(array.shape)} do not fit the image {expected}")
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.mod(array, 1) == 0):
                raise ImageError(f"{path}: not a labels image (non-integer values)")
        if array.size and (array.min() < 0 or array.max() >= self.n_classes):
            raise ImageError(
                f"{path}: label values {int(array.min())}..{int(array.max())} do not fit the "
                f"{self.n_classes} classes {self.class_names}"
            )
        labels = array.astype(self.session.labels.dtype)
        log_file = log_path_for(path)
        doc = load_log(log_file) if log_file.is_file() else None
        if doc is not None:
            if list(doc.get("class_names", [])) != self.class_names:
                raise ValueError(
                    f"{log_file}: log made with classes {doc.get('class_names')}, this session "
                    f"has {self.class_names}"
                )
            if tuple(doc.get("image_shape", ())) != expected:
                raise ValueError(
                    f"{log_file}: log made on an image of shape {tuple(doc.get('image_shape', ()))}, "
                    f"this image is {expected}"
                )
        image, predictor = self._image, self.session.predictor
        max_states = self.session.max_state_history
        honour = self.session.honour_clicks
        offsets = self.session.decision_offsets

        def compute():
            from .core.session import InteractiveSession, replay_log

            fresh = InteractiveSession(image, predictor, max_state_history=max_states,
                                       honour_clicks=honour, decision_offsets=offsets)
            if doc is not None:
                replay_log(fresh, doc)
            return fresh

        def finish(fresh):
            self._job = None
            self.session = fresh
            self._rounds, self._redo = self._points_from_log(doc)
            self._in_flight = None
            for cls, layer in self._live_click_layers():
                rows = [c for r in self._rounds.values() for rr in r for k, c in rr if k == cls]
                layer.selected_data = set()
                layer.data = np.asarray(rows, dtype=float).reshape(-1, self._image.ndim)
            self._written = fresh.labels.copy()
            lab = self._labels_layer()
            lab.data[...] = labels
            lab.refresh()
            self._mark_edited(None)
            n_events = 0 if doc is None else len(doc["events"])
            if doc is None:
                return f"loaded {path.name} (no {log_file.name}: interaction memories start empty)"
            return f"loaded {path.name} and replayed {n_events} logged actions"

        def fail(exc):
            self._job = None
            return f"loading {path.name} failed: {exc}"

        job = Job("load", f"loading {path.name}", compute, finish, fail)
        self._job = job
        return job

    def load(self, path) -> str:
        """Restore labels from a file and, if ``<stem>.simseg.json`` exists, the memories."""
        return self._run_sync(self.prepare_load(path))

    def _points_from_log(self, doc: Optional[dict]):
        """Rebuild which points each round used (and the redo stacks) from a log."""
        rounds: dict[int, list[list[PointKey]]] = defaultdict(list)
        redo: dict[int, list[list[PointKey]]] = defaultdict(list)
        for event in (doc or {}).get("events", ()):
            action, z = event["action"], event.get("slice")
            if action == "clicks":
                rounds[z].append([(int(c["class"]), self._coords(z, c["y"], c["x"])) for c in event["clicks"]])
                redo[z].clear()
            elif action == "undo" and rounds[z]:
                redo[z].append(rounds[z].pop())
            elif action == "redo" and redo[z]:
                rounds[z].append(redo[z].pop())
            elif action in ("reset", "set_labels"):
                rounds.pop(z, None)
                redo.pop(z, None)
        return rounds, redo
