"""Which layers a SimSeg session may use, and the view it clicks in.

:class:`~napari_simseg.annotator.viewer_session.ViewerSession` orchestrates; this module finds
and checks the layers before a session binds to them:

* the image: :func:`find_image_layer`, :func:`check_image_layer` (the layer's own checks;
  the pixels are checked by :func:`napari_simseg.core.imaging.preprocessing.check_image`),
  :func:`plan_image_channels` (one layer per channel, or one layer holding them; chosen at
  once, its pixels read and checked later, on any thread) and :func:`image_channels`;
* the layers a session makes: :func:`existing_labels_layer`, :func:`keep_other_labels_layer`,
  :func:`labels_class_problem`, :func:`check_click_layer_names`, :func:`transform_kwargs`;
* the view: :func:`current_slice`, :func:`view_problem`.

The labels layer's writer is :mod:`napari_simseg.annotator.labels_view`, the click layers'
bookkeeping :mod:`napari_simseg.annotator.click_layers`. Nothing here imports Qt or torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels, Points

from napari_simseg.core.imaging.preprocessing import ImageError, check_image
from napari_simseg.core.io.colour import grey_if_equal, is_colour_names

__all__ = [
    "CLICKS_SUFFIX", "LABELS_LAYER_NAME", "ChannelLayerView", "ChannelPlan", "check_click_layer_names",
    "check_image_layer", "current_slice", "existing_labels_layer", "find_image_layer", "image_channels",
    "keep_other_labels_layer", "labels_class_problem", "match_channel_layers", "plan_image_channels",
    "transform_kwargs", "view_problem",
]

LABELS_LAYER_NAME = "SimSeg labels"
CLICKS_SUFFIX = " clicks"


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


def _check_layer(layer) -> None:
    """The checks of an image layer that need no pixels (missing, not an image, multiscale, not 2D/3D)."""
    if layer is None:
        raise ImageError(
            "no image layer: open an image (File > Open) or a sample "
            "(File > Open Sample > SimSeg) first"
        )
    if not isinstance(layer, Image):
        raise ImageError(f"'{layer.name}' is a {type(layer).__name__} layer; choose an image layer")
    if layer.multiscale:
        raise ImageError(f"'{layer.name}' is a multiscale image; SimSeg needs a single-resolution 2D or 3D image")
    if not layer.rgb and layer.ndim not in (2, 3):
        raise ImageError(
            f"'{layer.name}' has {layer.ndim} dimensions {tuple(layer.data.shape)}; SimSeg "
            "segments 2D (H, W) or 3D (Z, H, W) images: pick one volume of a time series "
            "or one channel first"
        )


def _layer_pixels(layer, allow_colour: bool) -> np.ndarray:
    """The checked pixels of a layer that passed :func:`_check_layer`."""
    if layer.rgb:  # a grey radiograph saved as RGB is one channel
        grey = grey_if_equal(np.asarray(layer.data)[..., :3])
        if grey is None and allow_colour:
            return check_image(np.asarray(layer.data)[..., 0])
        if grey is None:
            raise ImageError(f"'{layer.name}' is a true-colour RGB(A) image and this network reads one channel: "
                             "use a network trained on colour pictures (simseg train reads them as red, green, "
                             "blue), or split the channels (right-click the layer > Split RGB)")
        return check_image(grey)
    try:
        return check_image(np.asarray(layer.data))
    except ImageError as exc:
        raise ImageError(f"'{layer.name}': {exc}") from None


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
    _check_layer(layer)
    return _layer_pixels(layer, allow_colour)


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


def _channel_layer_reader(layer, names: Sequence[str], channel_axis: int) -> Callable[[], list]:
    """Check a layer holding every channel along ``channel_axis`` now; its pixels when called."""
    if not isinstance(layer, Image) or (layer.rgb and channel_axis != -1) or layer.multiscale:
        raise ImageError(f"'{getattr(layer, 'name', layer)}' is not a plain image layer that can hold channels")

    def read() -> list:
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

    return read


def _layers_reader(layers: list) -> Callable[[], list]:
    """Check one layer per channel now; their pixels (of one shape) when called."""
    for layer in layers:
        _check_layer(layer)

    def read() -> list:
        arrays = [_layer_pixels(layer, False) for layer in layers]
        if len({a.shape for a in arrays}) > 1:
            raise ImageError("the channel layers differ in shape: "
                             + ", ".join(f"'{la.name}' {a.shape}" for la, a in zip(layers, arrays)))
        return arrays

    return read


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


@dataclass
class ChannelPlan:
    """The image a session segments, chosen on the GUI thread; :meth:`read` checks its pixels.

    Attributes
    ----------
    layer : napari layer
        The layer whose geometry the results take (the first; a :class:`ChannelLayerView`
        of a layer holding the channels).
    sources : list of layers
        The layers whose pixels are read (a session refuses to share them with another).
    read : callable
        ``read() -> list of ndarray``: one checked array per channel. Touches no Qt
        object, so it may run on a worker thread.
    """

    layer: object
    sources: list
    read: Callable[[], list]


def plan_image_channels(viewer, image_layer, names: Sequence[str], channel_axis: int | None = None) -> ChannelPlan:
    """Choose the layer(s) of an image for a network reading ``names`` channels.

    Parameters
    ----------
    image_layer : layer, name, sequence of them, or None
        One layer (or name) per channel, in the network's channel order; or one layer
        holding every channel along ``channel_axis`` (found by itself when it is the
        first axis and has as many entries as channels); or None: the selected image
        layer for one channel, the layers named after the channels for several.

    Raises
    ------
    ImageError
        For layers that cannot be the image (at once; their pixels are checked by
        :attr:`ChannelPlan.read`), with what to give instead.
    """
    names = list(names)
    if isinstance(image_layer, (list, tuple)):
        layers = [find_image_layer(viewer, item) for item in image_layer]
        if len(layers) != len(names):
            raise ImageError(f"the network reads {len(names)} channel(s) ({', '.join(names)}); "
                             f"{len(layers)} image layer(s) were given")
        return ChannelPlan(layers[0], layers, _layers_reader(layers))
    layer = find_image_layer(viewer, image_layer)
    if len(names) == 1:
        _check_layer(layer)
        return ChannelPlan(layer, [layer], lambda: [_layer_pixels(layer, False)])
    if is_colour_names(names) and isinstance(layer, Image) and not layer.multiscale:
        # an RGB layer's channels are last; a grey layer is each of red, green and blue, as in training
        if layer.rgb:
            return ChannelPlan(layer, [layer], _channel_layer_reader(layer, names, -1))
        _check_layer(layer)
        return ChannelPlan(layer, [layer], lambda: [_layer_pixels(layer, False)] * 3)
    if channel_axis is not None:
        return ChannelPlan(ChannelLayerView(layer, channel_axis), [layer],
                           _channel_layer_reader(layer, names, channel_axis))
    if layer is not None and image_layer is not None and np.ndim(layer.data) == 4 \
            and np.shape(layer.data)[0] == len(names):
        return ChannelPlan(ChannelLayerView(layer, 0), [layer], _channel_layer_reader(layer, names, 0))
    matched = match_channel_layers(viewer, names)
    if image_layer is None and all(m is not None for m in matched):
        return plan_image_channels(viewer, matched, names)
    raise ImageError(
        f"the network reads {len(names)} channels ({', '.join(names)}): give one image layer per channel in "
        "that order (name them after the channels to have them found), or one layer with the channels along "
        "its first axis"
    )


def image_channels(viewer, image_layer, names: Sequence[str], channel_axis: int | None = None):
    """The layer and checked pixel arrays of an image (:func:`plan_image_channels`, then its ``read``).

    Returns
    -------
    (layer, arrays)
        The layer whose geometry the results take, and one checked array per channel.
    """
    plan = plan_image_channels(viewer, image_layer, names, channel_axis)
    return plan.layer, plan.read()


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
