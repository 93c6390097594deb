"""The ``"SimSeg labels"`` layer: :class:`LabelsView` writes SimSeg's results into it without
erasing hand edits (what SimSeg last wrote per slice, which slices were edited by hand, with
:func:`painted_slices` reading napari's paint history), tells the autosave which slices changed
since it last looked, and reads and writes its labels files.

Nothing here imports Qt or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from napari.layers import Labels

from napari_simseg._writer import write_labels_layer
from napari_simseg.annotator.colors import labels_layer_kwargs
from napari_simseg.annotator.layers import LABELS_LAYER_NAME, transform_kwargs
from napari_simseg.core.imaging.preprocessing import ImageError
from napari_simseg.core.io.images import WRITABLE_EXTENSIONS, ImageWriteError, read_image, split_extension

__all__ = ["LabelsView", "labels_layer_model", "painted_slices"]


def painted_slices(event, n_slices: int) -> set | None:
    """Slices a labels layer's ``paint`` event touched, or None (unknown: compare all).

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
                    slices.update(range(*first.indices(n_slices)))
                else:
                    slices.add(int(first))
            elif isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple):
                slices.update(int(v) for v in np.unique(np.asarray(atom[0][0])))
            else:
                return None
    except (TypeError, ValueError, IndexError):
        return None
    return slices


def labels_layer_model(image_layer, class_names: Sequence[str], data: np.ndarray) -> Labels:
    """A new ``"SimSeg labels"`` layer over ``image_layer``, not yet in a viewer (no Qt: any thread)."""
    kwargs = labels_layer_kwargs(class_names)
    kwargs["metadata"]["image_name"] = image_layer.name
    return Labels(data, name=LABELS_LAYER_NAME, opacity=0.6, **kwargs, **transform_kwargs(image_layer))


class LabelsView:
    """The ``"SimSeg labels"`` layer and what SimSeg last wrote into it.

    A slice whose shown labels differ from what SimSeg last wrote there was edited by
    hand (painted, filled, erased, loaded from a file without a log); :meth:`write`
    does not erase such edits unless allowed.

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The segmented image; new layers copy its geometry.
    class_names : sequence of str
    written : ndarray
        ``(Z, H, W)`` (``Z == 1`` for a 2D image): the labels SimSeg holds now.
    existing : napari.layers.Labels, optional
        A ``"SimSeg labels"`` layer to adopt (its contents stay; slices that differ
        from ``written`` count as hand-edited); else a new, empty layer is added.
    new_layer : napari.layers.Labels, optional
        That new layer, made beforehand (:func:`labels_layer_model`, on any thread).
    """

    def __init__(self, viewer, image_layer, class_names: Sequence[str], written: np.ndarray, existing=None,
                 new_layer=None):
        self.viewer = viewer
        self.image_layer = image_layer
        self.class_names = list(class_names)
        self.is_2d = image_layer.ndim == 2
        self.written = np.array(written, copy=True)
        self._hand_edited: set = set()
        # slices to compare with ``written`` before the next answer; None: every slice
        self._candidates: set | None = None
        # slices changed since the last autosave took them (None: every slice; an adopted layer's count)
        self._touched: set | None = set() if existing is None else None
        #: called after a paint stroke or another hand edit of the layer (the session's autosave)
        self.on_hand_edit: Callable[[], None] | None = None
        if existing is None:
            if new_layer is None:
                shown = self._as_shown(self.written)
                new_layer = labels_layer_model(image_layer, self.class_names, np.zeros(shown.shape, shown.dtype))
            self.layer = viewer.add_layer(new_layer)
        else:
            self.layer = self._adopt(existing)
        self._connect()

    @property
    def n_slices(self) -> int:
        return self.written.shape[0]

    def _as_shown(self, stack: np.ndarray) -> np.ndarray:
        return stack[0] if self.is_2d else stack

    def _add(self, data: np.ndarray):
        return self.viewer.add_layer(labels_layer_model(self.image_layer, self.class_names, data))

    def _adopt(self, layer):
        kwargs = labels_layer_kwargs(self.class_names)
        if not isinstance(layer.data, np.ndarray) or not layer.data.flags.writeable:
            layer.data = np.array(layer.data)  # results are written in place
        layer.features = kwargs["features"]
        layer.colormap = kwargs["colormap"]
        layer.metadata = {**layer.metadata, **kwargs["metadata"], "image_name": self.image_layer.name}
        return layer

    def _connect(self) -> None:
        self.layer.events.paint.connect(self._on_paint)
        self.layer.events.data.connect(self._on_data)

    def close(self) -> None:
        """Stop listening to the layer (it and its contents stay)."""
        for emitter, callback in ((self.layer.events.paint, self._on_paint), (self.layer.events.data, self._on_data)):
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass

    def live(self):
        """The labels layer; added again from SimSeg's results if it was deleted."""
        if self.layer not in self.viewer.layers:
            self.layer = self._add(self._as_shown(self.written).copy())
            self._connect()
            self._touched = None  # hand edits shown before are gone with the old layer
        return self.layer

    def shown(self, z: int) -> np.ndarray:
        """Slice ``z`` as the layer shows it."""
        data = self.live().data
        return np.asarray(data) if self.is_2d else np.asarray(data[z])

    # -------------------------------------------------------------- hand edits
    def is_hand_edited(self, z: int) -> bool:
        """Whether slice ``z`` differs from what SimSeg last wrote there."""
        return not np.array_equal(self.shown(z), self.written[z])

    @property
    def hand_edited(self) -> set:
        """Slices whose labels differ from what SimSeg last wrote there."""
        self._flush()
        return set(self._hand_edited)

    def mark_edited(self, slices: Iterable[int] | None) -> None:
        """Note slices to compare at the next question (None: every slice)."""
        # napari emits ``paint`` before it writes some edits: comparing now could miss them
        if slices is None or self._candidates is None:
            self._candidates = None
        else:
            self._candidates.update(slices)

    def _flush(self) -> None:
        candidates, self._candidates = self._candidates, set()
        if self.layer not in self.viewer.layers:
            return
        data = np.asarray(self.layer.data)
        if self.is_2d:
            data = data[None]
        if candidates is None:
            diff = np.any(data != self.written, axis=(1, 2))
            self._hand_edited = {int(z) for z in np.flatnonzero(diff)}
            return
        for z in candidates:
            if 0 <= z < self.n_slices:
                if np.array_equal(data[z], self.written[z]):
                    self._hand_edited.discard(z)
                else:
                    self._hand_edited.add(z)

    def _on_paint(self, event) -> None:
        self._hand_edit(None if self.is_2d else painted_slices(event, self.n_slices))

    def _on_data(self, event=None) -> None:
        self._hand_edit(None)

    def _hand_edit(self, slices) -> None:
        self.mark_edited(slices)
        self._touch(slices)
        if self.on_hand_edit is not None:
            self.on_hand_edit()
            self._touch(slices)  # napari tells some edits (``data_setitem``) before it writes them: again

    # -------------------------------------------------------------- what changed (autosave)
    def _touch(self, slices) -> None:
        if slices is None or self._touched is None:
            self._touched = None
        else:
            self._touched.update(int(z) for z in slices)

    def take_touched(self) -> set | None:
        """The slices whose shown or written labels changed since the last call (None: every slice)."""
        touched, self._touched = self._touched, set()
        return touched

    def nonempty_slices(self) -> set:
        """Slices with labels, as shown or as SimSeg wrote them."""
        shown = np.asarray(self.live().data).reshape(self.n_slices, -1)
        written = self.written.reshape(self.n_slices, -1)
        return {int(z) for z in np.flatnonzero(shown.any(axis=1) | written.any(axis=1))}

    # -------------------------------------------------------------- writing
    def write(self, z: int, labels: np.ndarray, may_overwrite: bool | Callable[[list], bool]) -> bool:
        """Show SimSeg's ``labels`` on slice ``z`` unless that erases hand edits.

        Parameters
        ----------
        z : int
        labels : ndarray
            ``(H, W)``; becomes what SimSeg last wrote on ``z`` even if not shown.
        may_overwrite : bool or callable
            Whether hand edits of ``z`` may go; a callable ``f([z]) -> bool`` is asked
            only when the slice holds hand edits that ``labels`` would change.

        Returns
        -------
        bool
            Whether the layer was written.
        """
        edited = self.is_hand_edited(z) and not np.array_equal(self.shown(z), labels)
        self.written[z] = labels
        self._touch([z])
        if edited:
            allowed = may_overwrite([z]) if callable(may_overwrite) else may_overwrite
            if not allowed:
                self._hand_edited.add(z)
                return False
        layer = self.live()
        if self.is_2d:
            layer.data[...] = labels
        else:
            layer.data[z] = labels
        layer.refresh()
        self._hand_edited.discard(z)
        return True

    def sync(self, labels: np.ndarray, may_overwrite: bool | Callable[[list], bool], also=()) -> list[int]:
        """Show the session's ``labels`` (``(Z, H, W)``) on ``also`` and on every slice where they
        differ from what SimSeg last wrote there (hand edits as :meth:`write`); returns those slices."""
        diff = np.flatnonzero((labels != self.written).any(axis=(1, 2)))
        changed = sorted({int(z) for z in diff} | {int(z) for z in also})
        for z in changed:
            self.write(z, labels[z], may_overwrite)
        return changed

    # -------------------------------------------------------------- files
    def write_file(self, path) -> Path:
        """Write the labels as shown, with the image's geometry; returns the path written.

        Raises
        ------
        ImageWriteError
            For an extension not in ``core.io.images.WRITABLE_EXTENSIONS`` or a failed write.
        """
        path = Path(path)
        ext = split_extension(path)[1]
        if ext not in WRITABLE_EXTENSIONS:
            raise ImageWriteError(path, f"unsupported extension '{ext}'; use one of {', '.join(WRITABLE_EXTENSIONS)}")
        layer = self.live()
        meta = {
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
            "metadata": {"direction": self.image_layer.metadata.get("direction")},
        }
        return Path(write_labels_layer(str(path), layer.data, meta)[0])

    def read_file(self, path) -> np.ndarray:
        """A labels file's array, shaped like the layer, if it fits the image and classes.

        Raises
        ------
        ImageError
            For another shape, non-integer values or labels beyond the classes.
        """
        array = read_image(path).array
        expected = tuple(self._as_shown(self.written).shape)
        n = len(self.class_names)
        if tuple(array.shape) != expected:
            raise ImageError(f"{path}: labels of shape {tuple(array.shape)} do not fit the image {expected}")
        if not np.issubdtype(array.dtype, np.integer) and not np.all(np.mod(array, 1) == 0):
            raise ImageError(f"{path}: not a labels image (non-integer values)")
        if array.size and (array.min() < 0 or array.max() >= n):
            raise ImageError(
                f"{path}: label values {int(array.min())}..{int(array.max())} do not fit the "
                f"{n} classes {self.class_names}"
            )
        return array.astype(self.written.dtype)

    def replace(self, written: np.ndarray, shown: np.ndarray) -> None:
        """Start over: SimSeg's labels become ``written``, the layer shows ``shown``."""
        self.written = np.array(written, copy=True)
        layer = self.live()
        layer.data[...] = shown
        layer.refresh()
        self.mark_edited(None)
        self._touch(None)

