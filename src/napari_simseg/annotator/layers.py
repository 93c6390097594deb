"""The napari adapter: every place SimSeg reads or writes a napari layer.

:class:`~napari_simseg.annotator.viewer_session.ViewerSession` orchestrates; this module knows
the layers:

* checks: :func:`find_image_layer`, :func:`check_image_layer` (the layer's own checks;
  the pixels are checked by :func:`napari_simseg.core.imaging.preprocessing.check_image`),
  :func:`existing_labels_layer`, :func:`keep_other_labels_layer`, :func:`labels_class_problem`,
  :func:`check_click_layer_names`;
* the view: :func:`current_slice`, :func:`view_problem`;
* :class:`LabelsView`: the ``"SimSeg labels"`` layer and its hand-edit tracking (what
  SimSeg last wrote per slice, which slices were edited by hand, writing a slice unless
  that erases hand edits), with :func:`painted_slices` parsing napari's paint history,
  and its labels files;
* :class:`ClickLayers` (made by :func:`make_click_layers`): the ``"<class> clicks"``
  points layers and the points <-> clicks bookkeeping (:func:`keys_from_clicks`,
  :func:`clicks_from_keys`; which points each round used, which are pending).

Nothing here imports Qt or torch.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Points

from napari_simseg._writer import write_labels_layer
from napari_simseg.annotator.colors import class_colors, labels_layer_kwargs
from napari_simseg.core.imaging.preprocessing import ImageError, check_image
from napari_simseg.core.interaction.clicks import Click
from napari_simseg.core.io.colour import grey_if_equal, is_colour_names
from napari_simseg.core.io.images import WRITABLE_EXTENSIONS, ImageWriteError, read_image, split_extension

__all__ = [
    "CLICKS_SUFFIX", "LABELS_LAYER_NAME", "ChannelLayerView", "ClickLayers", "LabelsView", "PointKey",
    "check_click_layer_names", "check_image_layer", "clicks_from_keys", "current_slice",
    "existing_labels_layer", "keep_other_labels_layer", "find_image_layer", "image_channels",
    "keys_from_clicks", "labels_class_problem", "match_channel_layers", "make_click_layers", "painted_slices",
    "point_coords", "transform_kwargs", "view_problem"
]

LABELS_LAYER_NAME = "SimSeg labels"
CLICKS_SUFFIX = " clicks"

#: (class index, point coordinates in the points layer's data space)
PointKey = tuple[int, tuple[float, ...]]


# ---------------------------------------------------------------------- checks
def find_image_layer(viewer, image_layer=None):
    """The image layer to segment.

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Layer, str or None
        A layer, a layer name, or None: the selected image layer, else the topmost one.

    Returns
    -------
    napari.layers.Layer or None
        None when ``image_layer`` is None and the viewer holds no image layer.

    Raises
    ------
    ImageError
        For a name that no layer has.
    """
    if image_layer is None:
        active = viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None
    if isinstance(image_layer, str):
        if image_layer not in viewer.layers:
            raise ImageError(f"no layer called '{image_layer}' in the viewer")
        return viewer.layers[image_layer]
    return image_layer


def check_image_layer(layer, allow_colour: bool = False) -> np.ndarray:
    """The layer's pixels if SimSeg can segment them.

    Refuses a missing layer, non-image layers, true-colour RGB(A) (unless
    ``allow_colour``: a check before the network's channels are known; then its red
    channel is checked), multiscale and anything not 2D or 3D with a message that says
    what to do; an RGB(A) layer of grey content gives its grey. The pixels themselves are
    checked by :func:`napari_simseg.core.imaging.preprocessing.check_image`.

    Raises
    ------
    ImageError
    """
    if layer is None:
        raise ImageError(
            "no image layer: open an image (File > Open) or a sample "
            "(File > Open Sample > SimSeg) first"
        )
    if not isinstance(layer, Image):
        raise ImageError(f"'{layer.name}' is a {type(layer).__name__} layer; choose an image layer")
    if layer.rgb and not layer.multiscale:  # a grey radiograph saved as RGB is one channel
        grey = grey_if_equal(np.asarray(layer.data)[..., :3])
        if grey is None and allow_colour:
            return check_image(np.asarray(layer.data)[..., 0])
        if grey is None:
            raise ImageError(f"'{layer.name}' is a true-colour RGB(A) image and this network reads one channel: "
                             "use a network trained on colour pictures (simseg train reads them as red, green, "
                             "blue), or split the channels (right-click the layer > Split RGB)")
        return check_image(grey)
    if layer.multiscale:
        raise ImageError(f"'{layer.name}' is a multiscale image; SimSeg needs a single-resolution 2D or 3D image")
    if layer.ndim not in (2, 3):
        raise ImageError(
            f"'{layer.name}' has {layer.ndim} dimensions {tuple(layer.data.shape)}; SimSeg "
            "segments 2D (H, W) or 3D (Z, H, W) images: pick one volume of a time series "
            "or one channel first"
        )
    try:
        return check_image(np.asarray(layer.data))
    except ImageError as exc:
        raise ImageError(f"'{layer.name}': {exc}") from None


class ChannelLayerView:
    """A layer holding channels along one axis, seen without that axis: the geometry
    (``ndim``, ``scale``, ``translate``; no rotation, shear or affine) the labels and click
    layers take; every other attribute is the layer's own."""

    def __init__(self, layer, channel_axis: int):
        self._layer = layer
        keep = [a for a in range(layer.ndim) if a != channel_axis % layer.ndim]
        self.ndim = len(keep)
        self.scale = np.asarray(layer.scale)[keep]
        self.translate = np.asarray(layer.translate)[keep]
        self.rotate = np.eye(self.ndim)
        self.shear = np.zeros(self.ndim * (self.ndim - 1) // 2)

        class _Affine:
            affine_matrix = np.eye(self.ndim + 1)

        self.affine = _Affine()

    def __getattr__(self, name):
        return getattr(self._layer, name)


def _check_channel_layer(layer, names: Sequence[str], channel_axis: int) -> list:
    """The channels of one layer holding them all along ``channel_axis``."""
    if not isinstance(layer, Image) or (layer.rgb and channel_axis != -1) or layer.multiscale:
        raise ImageError(f"'{getattr(layer, 'name', layer)}' is not a plain image layer that can hold channels")
    data = np.asarray(layer.data)[..., :3] if layer.rgb else np.asarray(layer.data)  # no alpha
    try:
        channels = list(np.moveaxis(data, channel_axis, 0))
    except np.exceptions.AxisError:
        raise ImageError(f"'{layer.name}' has no axis {channel_axis} (shape {data.shape})") from None
    if len(channels) != len(names):
        raise ImageError(f"'{layer.name}' holds {len(channels)} channels along axis {channel_axis}, but the "
                         f"network reads {len(names)}: {', '.join(names)}")
    out = []
    for name, array in zip(names, channels):
        try:
            out.append(check_image(array))
        except ImageError as exc:
            raise ImageError(f"'{layer.name}' channel {name}: {exc}") from None
    return out


def match_channel_layers(viewer, names: Sequence[str]) -> list:
    """One image layer per channel name, found by name (case-insensitive; as a word first,
    so "t1" fits "case_t1", not "case_t1ce"), or None where no single layer fits."""
    out, taken = [], set()
    for name in names:
        free = [layer for layer in viewer.layers if isinstance(layer, Image) and id(layer) not in taken]
        word, low = re.compile(rf"(?<![a-z0-9]){re.escape(name.lower())}(?![a-z0-9])"), name.lower()
        fits = [la for la in free if word.search(la.name.lower())] or [la for la in free if low in la.name.lower()]
        exact = [layer for layer in fits if layer.name.lower() == name.lower()]
        chosen = exact[0] if exact else (fits[0] if len(fits) == 1 else None)
        if chosen is not None:
            taken.add(id(chosen))
        out.append(chosen)
    return out


def image_channels(viewer, image_layer, names: Sequence[str], channel_axis: int | None = None):
    """The layer(s) and pixel arrays of an image for a network reading ``names`` channels.

    Parameters
    ----------
    image_layer : layer, name, sequence of them, or None
        One layer (or name) per channel, in the network's channel order; or one layer
        holding every channel along ``channel_axis`` (found by itself when it is the
        first axis and has as many entries as channels); or None: the selected image
        layer for one channel, the layers named after the channels for several.

    Returns
    -------
    (layer, arrays)
        The layer whose geometry the results take (the first; a
        :class:`ChannelLayerView` of a layer holding the channels), and one checked array
        per channel.

    Raises
    ------
    ImageError
        With what to give instead.
    """
    names = list(names)
    if isinstance(image_layer, (list, tuple)):
        layers = [find_image_layer(viewer, item) for item in image_layer]
        if len(layers) != len(names):
            raise ImageError(f"the network reads {len(names)} channel(s) ({', '.join(names)}); "
                             f"{len(layers)} image layer(s) were given")
        arrays = [check_image_layer(layer) for layer in layers]
        if len({a.shape for a in arrays}) > 1:
            raise ImageError("the channel layers differ in shape: "
                             + ", ".join(f"'{la.name}' {a.shape}" for la, a in zip(layers, arrays)))
        return layers[0], arrays
    layer = find_image_layer(viewer, image_layer)
    if len(names) == 1:
        return layer, [check_image_layer(layer)]
    if is_colour_names(names) and isinstance(layer, Image) and not layer.multiscale:
        # an RGB layer's channels are last; a grey layer is each of red, green and blue, as in training
        return layer, _check_channel_layer(layer, names, -1) if layer.rgb else [check_image_layer(layer)] * 3
    if channel_axis is not None:
        return ChannelLayerView(layer, channel_axis), _check_channel_layer(layer, names, channel_axis)
    if layer is not None and image_layer is not None and np.ndim(layer.data) == 4 \
            and np.shape(layer.data)[0] == len(names):
        return ChannelLayerView(layer, 0), _check_channel_layer(layer, names, 0)
    matched = match_channel_layers(viewer, names)
    if image_layer is None and all(m is not None for m in matched):
        return image_channels(viewer, matched, names)
    raise ImageError(
        f"the network reads {len(names)} channels ({', '.join(names)}): give one image layer per channel in "
        "that order (name them after the channels to have them found), or one layer with the channels along "
        "its first axis"
    )


def existing_labels_layer(viewer, shape: Sequence[int]):
    """The viewer's ``"SimSeg labels"`` layer if it fits an image of ``shape``, else None.

    Raises
    ------
    ImageError
        When a layer of that name is not a labels layer.
    """
    existing = viewer.layers[LABELS_LAYER_NAME] if LABELS_LAYER_NAME in viewer.layers else None
    if existing is not None and not isinstance(existing, Labels):
        raise ImageError(f"a {type(existing).__name__} layer is called '{LABELS_LAYER_NAME}'; rename it first")
    return existing if existing is not None and tuple(existing.data.shape) == tuple(shape) else None


def keep_other_labels_layer(viewer, shape: Sequence[int]) -> str | None:
    """Rename a ``"SimSeg labels"`` layer of another shape (an earlier image's labels: they
    stay) after the image it was made for, freeing the name; returns its new name or None."""
    layer = viewer.layers[LABELS_LAYER_NAME] if LABELS_LAYER_NAME in viewer.layers else None
    if not isinstance(layer, Labels) or tuple(layer.data.shape) == tuple(shape):
        return None
    origin = layer.metadata.get("image_name") or "x".join(str(n) for n in layer.data.shape)
    names = (f"{LABELS_LAYER_NAME} ({origin}{'' if n == 1 else f', {n}'})" for n in range(1, 10**6))
    layer.name = next(name for name in names if name not in viewer.layers)
    return layer.name


def labels_class_problem(layer, class_names: Sequence[str]) -> str | None:
    """Why a labels layer cannot hold the labels of ``class_names``, or None.

    A layer SimSeg made names its classes in its metadata; one without them (e.g. read
    from a file) must hold only label values below the class count.
    """
    names = layer.metadata.get("class_names")
    if names is not None:
        return None if list(names) == list(class_names) else f"has {list(names)}"
    data = np.asarray(layer.data)
    if data.size and (int(data.max()) >= len(class_names) or int(data.min()) < 0):
        return f"holds label {int(data.max())}"
    return None


def check_click_layer_names(viewer, class_names: Sequence[str]) -> None:
    """Raise an ImageError if a layer that is not a points layer has a click layer's name."""
    for name in class_names:
        lname = f"{name}{CLICKS_SUFFIX}"
        if lname in viewer.layers and not isinstance(viewer.layers[lname], Points):
            raise ImageError(f"a {type(viewer.layers[lname]).__name__} layer is called '{lname}'; rename it first")


def transform_kwargs(layer) -> dict:
    """Layer kwargs that place a new layer exactly over ``layer`` (scale to affine)."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
    }


# ---------------------------------------------------------------------- the view
def current_slice(viewer, layer, n_slices: int) -> int:
    """The slice along the first axis of ``layer``'s data that the viewer shows."""
    pos = layer.world_to_data(viewer.dims.point)
    return int(np.clip(round(float(pos[0])), 0, n_slices - 1))


def view_problem(viewer) -> str | None:
    """Why clicks on a 3D image cannot be taken in the current view, or None."""
    dims = viewer.dims
    n = dims.ndim
    if dims.ndisplay != 2 or tuple(dims.displayed) != (n - 2, n - 1):
        return (
            "SimSeg segments slices along the image's first axis: switch to the 2D "
            "view with the last two axes displayed (undo the transpose/3D view)"
        )
    return None


# ---------------------------------------------------------------------- labels
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
    """

    def __init__(self, viewer, image_layer, class_names: Sequence[str], written: np.ndarray, existing=None):
        self.viewer = viewer
        self.image_layer = image_layer
        self.class_names = list(class_names)
        self.is_2d = image_layer.ndim == 2
        self.written = np.array(written, copy=True)
        self._hand_edited: set = set()
        # slices to compare with ``written`` before the next answer; None: every slice
        self._candidates: set | None = None
        if existing is None:
            self.layer = self._add(np.zeros_like(self._as_shown(self.written)))
        else:
            self.layer = self._adopt(existing)
        self._connect()

    @property
    def n_slices(self) -> int:
        return self.written.shape[0]

    def _as_shown(self, stack: np.ndarray) -> np.ndarray:
        return stack[0] if self.is_2d else stack

    def _add(self, data: np.ndarray):
        kwargs = labels_layer_kwargs(self.class_names)
        kwargs["metadata"]["image_name"] = self.image_layer.name
        return self.viewer.add_labels(data, name=LABELS_LAYER_NAME, opacity=0.6, **kwargs,
                                      **transform_kwargs(self.image_layer))

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
        self.mark_edited(None if self.is_2d else painted_slices(event, self.n_slices))

    def _on_data(self, event=None) -> None:
        self.mark_edited(None)

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


# ---------------------------------------------------------------------- clicks
def point_coords(z: int, y: float, x: float, is_2d: bool) -> tuple[float, ...]:
    """A click's point in a points layer: ``(y, x)`` for 2D, ``(z, y, x)`` for 3D."""
    return (float(y), float(x)) if is_2d else (float(z), float(y), float(x))


def keys_from_clicks(z: int, clicks: Iterable[Click], is_2d: bool) -> list[PointKey]:
    """The point keys of a slice's clicks."""
    return [(int(c.label), point_coords(z, c.y, c.x, is_2d)) for c in clicks]


def clicks_from_keys(keys: Iterable[PointKey]) -> list[Click]:
    """The clicks of point keys (the slice is the caller's)."""
    return [Click(cls, coords[-2], coords[-1]) for cls, coords in keys]


def make_click_layers(viewer, image_layer, class_names: Sequence[str]) -> list:
    """One empty ``"<class> clicks"`` points layer per class, placed over ``image_layer``.

    A points layer of that name and dimensionality is emptied and reused (its clicks
    belong to rounds this session never ran); one of another dimensionality is replaced.
    """
    colors = class_colors(len(class_names))
    ndim = image_layer.ndim
    h, w = image_layer.data.shape[-3:-1] if getattr(image_layer, "rgb", False) else image_layer.data.shape[-2:]
    size = max(2.0, 0.04 * min(h, w))
    layers = []
    for i, name in enumerate(class_names):
        lname = f"{name}{CLICKS_SUFFIX}"
        layer = viewer.layers[lname] if lname in viewer.layers else None
        meta = {"simseg": {"role": "clicks", "class_index": i, "class_name": name}}
        if isinstance(layer, Points) and layer.ndim == ndim:
            layer.selected_data = set()  # a stale selection breaks the colour update
            layer.data = np.empty((0, ndim))
            layer.current_face_color = colors[i]
            layer.metadata = {**layer.metadata, **meta}
        else:
            if layer is not None:  # a points layer of another dimensionality
                viewer.layers.remove(layer)
            layer = viewer.add_points(
                np.empty((0, ndim)), ndim=ndim, name=lname, face_color=colors[i],
                border_color="black", border_width=0.15, size=size,
                out_of_slice_display=False, metadata=meta, **transform_kwargs(image_layer),
            )
        layers.append(layer)
    return layers


class ClickLayers:
    """The ``"<class> clicks"`` points layers and which of their points each round used.

    The points are the source of truth: a point that no round used (matched by class
    and exact coordinates) is *pending* and goes into the next round of its slice.
    Napari's per-point features are not used for this because napari copies the
    features of selected points into new ones.

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The segmented image; new layers copy its geometry. Existing click layers of
        the same dimensionality are emptied and reused.
    class_names : sequence of str
        One layer per class, background included, in class-index order.
    shape : (Z, H, W)
        The session's slice stack (``Z == 1`` for a 2D image).
    """

    def __init__(self, viewer, image_layer, class_names: Sequence[str], shape: Sequence[int]):
        self.viewer = viewer
        self.is_2d = image_layer.ndim == 2
        self.shape = tuple(int(s) for s in shape)
        self.layers = make_click_layers(viewer, image_layer, class_names)
        self._rounds: dict[int, list[list[PointKey]]] = defaultdict(list)
        self._redo: dict[int, list[list[PointKey]]] = defaultdict(list)
        self._in_flight: list[PointKey] | None = None  # points of the running round

    def live(self) -> Iterator[tuple[int, object]]:
        """``(class index, layer)`` of the layers still in the viewer."""
        for cls, layer in enumerate(self.layers):
            if layer in self.viewer.layers:
                yield cls, layer

    def activate(self) -> None:
        """Select the first foreground class's layer (else the background's) in add mode."""
        layer = self.layers[1] if len(self.layers) > 1 else self.layers[0]
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def keys(self, z: int, clicks: Iterable[Click]) -> list[PointKey]:
        """The point keys of clicks on slice ``z``."""
        return keys_from_clicks(z, clicks, self.is_2d)

    def slice_of(self, coords: Sequence[float]) -> int:
        """The slice a point lies on (-1 for a non-finite coordinate: on no slice)."""
        if self.is_2d:
            return 0
        return int(round(coords[0])) if np.isfinite(coords[0]) else -1

    def _inside(self, coords: Sequence[float]) -> bool:
        if not np.all(np.isfinite(coords)):
            return False  # a NaN/inf point (typed in, or from a script) lies nowhere
        n, h, w = self.shape
        y, x = int(round(coords[-2])), int(round(coords[-1]))
        return 0 <= self.slice_of(coords) < n and 0 <= y < h and 0 <= x < w

    def _used(self) -> Counter:
        used = Counter(k for rounds in self._rounds.values() for r in rounds for k in r)
        if self._in_flight is not None:
            used.update(self._in_flight)
        return used

    def _unused_rows(self) -> Iterator[tuple[int, object, int, PointKey]]:
        """``(class, layer, row, key)`` of every point no round used."""
        used = self._used()
        for cls, layer in self.live():
            for i, row in enumerate(np.asarray(layer.data, dtype=float)):
                key = (cls, tuple(float(v) for v in row))
                if used[key] > 0:
                    used[key] -= 1  # duplicates: only as many as the rounds used
                else:
                    yield cls, layer, i, key

    def pending(self) -> dict[int, list[PointKey]]:
        """Points no round used yet, by slice (points outside the image excluded)."""
        out: dict[int, list[PointKey]] = defaultdict(list)
        for _, _, _, key in self._unused_rows():
            if self._inside(key[1]):
                out[self.slice_of(key[1])].append(key)
        return dict(out)

    def pending_slices(self, current: int) -> list[int]:
        """Slices with pending points, ``current`` first."""
        slices = sorted(self.pending())
        return ([current] if current in slices else []) + [z for z in slices if z != current]

    def drop_nonfinite(self) -> int:
        """Remove unused points with a NaN or infinite coordinate; returns how many."""
        return self._drop(lambda coords: not np.all(np.isfinite(coords)))

    def drop_outside(self) -> int:
        """Remove unused points that lie outside the image; returns how many."""
        return self._drop(lambda coords: not self._inside(coords))

    def _drop(self, unwanted: Callable) -> int:
        bad: dict[int, list[int]] = defaultdict(list)
        layers = {}
        for cls, layer, i, key in self._unused_rows():
            if unwanted(key[1]):
                bad[cls].append(i)
                layers[cls] = layer
        for cls, rows in bad.items():
            layers[cls].remove(rows)
        return sum(len(rows) for rows in bad.values())

    def add(self, keys: Iterable[PointKey]) -> None:
        """Add points to their class layers."""
        by_class: dict[int, list] = defaultdict(list)
        for cls, coords in keys:
            by_class[cls].append(coords)
        for cls, layer in self.live():
            if by_class.get(cls):
                layer.add(np.asarray(by_class[cls], dtype=float))

    def remove(self, keys: Iterable[PointKey]) -> None:
        """Remove one point per key (class and exact coordinates) from its layer."""
        by_class: dict[int, Counter] = defaultdict(Counter)
        for cls, coords in keys:
            by_class[cls][coords] += 1
        for cls, layer in self.live():
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

    # -------------------------------------------------------------- rounds
    def has_rounds(self) -> bool:
        """Whether any slice holds rounds (or undone ones)."""
        return any(self._rounds.values()) or any(self._redo.values())

    def begin_round(self, keys: list[PointKey]) -> None:
        """Count ``keys`` as used while their round runs (clicks placed meanwhile wait)."""
        self._in_flight = list(keys)

    def abandon_round(self) -> None:
        """The running round failed: its points are pending again."""
        self._in_flight = None

    def end_round(self, z: int, keys: list[PointKey], round_number: int) -> None:
        """Round ``round_number`` (1-based) of slice ``z`` used ``keys``; redo is gone."""
        self._in_flight = None
        rounds = self._rounds[z]
        del rounds[max(0, round_number - 1):]
        rounds.append(list(keys))
        self._redo[z].clear()

    def undo(self, z: int) -> None:
        """The newest round of slice ``z`` was undone: its points go."""
        keys = self._rounds[z].pop() if self._rounds[z] else []
        self.remove(keys)
        self._redo[z].append(keys)

    def redo(self, z: int) -> None:
        """The most recently undone round of slice ``z`` came back: so do its points."""
        keys = self._redo[z].pop() if self._redo[z] else []
        self.add(keys)
        self._rounds[z].append(keys)

    def reset(self, z: int) -> None:
        """Slice ``z`` was reset: every point on it goes, with its rounds."""
        for _, layer in self.live():
            rows = np.asarray(layer.data, dtype=float)
            idx = [i for i, row in enumerate(rows) if self.slice_of(row) == z]
            if idx:
                layer.remove(idx)
        self._rounds.pop(z, None)
        self._redo.pop(z, None)

    def restore(self, rounds: dict, redo: dict) -> None:
        """Replace every point by those of replayed rounds.

        Parameters
        ----------
        rounds, redo : dict of int -> list of list of Click
            As :func:`napari_simseg.core.session.interaction_log.rounds_from_log` returns them.
        """
        self._in_flight = None
        self._rounds = defaultdict(list, {z: [self.keys(z, r) for r in rs] for z, rs in rounds.items()})
        self._redo = defaultdict(list, {z: [self.keys(z, r) for r in rs] for z, rs in redo.items()})
        ndim = 2 if self.is_2d else 3
        for cls, layer in self.live():
            rows = [c for rs in self._rounds.values() for r in rs for k, c in r if k == cls]
            layer.selected_data = set()
            layer.data = np.asarray(rows, dtype=float).reshape(-1, ndim)
