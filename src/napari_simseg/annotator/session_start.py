"""Starting a viewer session, split by thread, and the rule that one session drives a set of layers.

:func:`plan_start` (GUI thread) chooses the image layer(s) and checks what needs no pixels and
no network; :meth:`StartPlan.build` (any thread: the widget runs it on a worker) loads the
network, reads and checks the pixels and builds the core session;
:meth:`StartPlan.check_viewer` (GUI thread, just before the layers are made) checks the
viewer's layers against the network. :data:`LIVE_SESSIONS` holds the sessions not closed,
so that a second session (a second SimSeg widget, or the console) refuses to take over the
layers another one drives. :func:`freeze_long_lived_objects` keeps the garbage collector off
what a Start loaded. Qt-free.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.annotator.autosave import image_path, open_recovery
from napari_simseg.annotator.click_layers import click_layer_model
from napari_simseg.annotator.labels_view import labels_layer_model
from napari_simseg.annotator.layers import (
    CLICKS_SUFFIX,
    LABELS_LAYER_NAME,
    ChannelPlan,
    check_click_layer_names,
    existing_labels_layer,
    labels_class_problem,
    plan_image_channels,
)

__all__ = ["LIVE_SESSIONS", "OVERWRITE_POLICIES", "SessionOptions", "StartParts", "StartPlan",
           "fill_vispy_caches", "freeze_long_lived_objects", "owner_problem", "plan_start"]

OVERWRITE_POLICIES = ("ask", "always", "never")

#: The viewer sessions not closed (a session leaves it in ``close``).
LIVE_SESSIONS: weakref.WeakSet = weakref.WeakSet()


@dataclass
class SessionOptions:
    """A viewer session's settings: ``ViewerSession``'s keyword arguments.

    Attributes
    ----------
    device : {"auto", "cpu", "cuda", "mps"}
    overwrite_policy : {"ask", "always", "never"}
    confirm : callable, optional
        ``confirm(slices) -> bool`` under the ``"ask"`` policy.
    batch_size : int
        Slices per network call in automatic segmentation.
    confirm_discard : callable, optional
        ``confirm_discard(question) -> bool`` before a load replaces unsaved rounds.
    channel_axis : int, optional
        The axis of a single image layer that holds the channels.
    autosave : bool or RecoveryStore
        Keep the session's work in the recovery store after every completed action
        (``True``: the user's cache folder, :mod:`napari_simseg.core.session.recovery`).
    """

    device: str = "auto"
    overwrite_policy: str = "ask"
    confirm: Callable[[list], bool] | None = None
    batch_size: int = 8
    confirm_discard: Callable[[str], bool] | None = None
    channel_axis: int | None = None
    autosave: Any = True

    def __post_init__(self):
        if self.overwrite_policy not in OVERWRITE_POLICIES:
            raise ValueError(f"overwrite_policy must be one of {OVERWRITE_POLICIES}, got {self.overwrite_policy!r}")
        self.batch_size = int(self.batch_size)


def _layer_names(viewer, class_names) -> list:
    """The session layers a session of ``class_names`` would take over in ``viewer``."""
    wanted = [LABELS_LAYER_NAME, *(f"{name}{CLICKS_SUFFIX}" for name in class_names)]
    return [name for name in wanted if name in viewer.layers]


def _unwrapped(obj):
    """The object itself, seen through napari's plugin proxies (each access makes a new proxy)."""
    return getattr(obj, "__wrapped__", obj)


def owner_problem(viewer, class_names, sources, replaces=None) -> str | None:
    """Why a new session of ``class_names`` on the image layers ``sources`` may not start in
    ``viewer``: another live session (not ``replaces``, the one it restarts) drives the layers
    it would take over or segments the same image; None when nothing stands in the way."""
    taken = {id(_unwrapped(viewer.layers[name])) for name in _layer_names(viewer, class_names)}
    images = {id(_unwrapped(s)) for s in sources}
    for other in list(LIVE_SESSIONS):
        if other is replaces or _unwrapped(other.viewer) is not _unwrapped(viewer):
            continue
        mine = [other.labels_layer, *getattr(other, "click_layers", [])]  # [] while it makes them
        clash = [layer.name for layer in mine if id(_unwrapped(layer)) in taken]
        if clash or id(_unwrapped(other.image_layer)) in images:
            shown = ", ".join(f"'{n}'" for n in clash[:3]) + (" ..." if len(clash) > 3 else "")
            what = f"drives {shown}" if clash else "segments it"
            return (f"another SimSeg session (segmenting '{other.image_layer.name}') {what}: close it first "
                    "(close its SimSeg widget, or call its close() in the console)")
    return None


def fill_vispy_caches() -> None:
    """Fill, here off the GUI thread, the one-time caches napari's first labels layer fills when it is
    added: vispy's dash patterns for the layer's polygon overlay (~80 ms of numpy on this 2-core machine)."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # another vispy: napari pays it on the GUI thread, as it would anyway
        return
    DashAtlas()  # its patterns are cached per process (functools.lru_cache)


@dataclass
class StartParts:
    """What :meth:`StartPlan.build` made off the GUI thread: the network, the image's channels,
    the core session, and the new layers (not yet in the viewer; used where no layer of the
    viewer is adopted)."""

    predictor: Any
    channels: list
    session: Any  # InteractiveSession
    labels_layer: Any = None
    click_layers: list | None = None
    recovery: Any = None  # annotator.autosave.RecoveryOpening, or None without autosave


@dataclass
class StartPlan:
    """A session start chosen on the GUI thread (:func:`plan_start`).

    Attributes
    ----------
    viewer : napari.Viewer
    image : ChannelPlan
        The image layer(s); their pixels are read by :meth:`build`.
    channel_names : list of str
        The channels the checkpoint's header names (checked again once it is loaded).
    checkpoint : str, Path or Predictor
    options : SessionOptions
    load : callable
        ``load(checkpoint, device) -> Predictor``.
    replaces : ViewerSession, optional
        The session this one restarts: it may own the layers, and is closed once the new
        one binds.
    """

    viewer: Any
    image: ChannelPlan
    channel_names: list
    checkpoint: Any
    options: SessionOptions
    load: Callable
    replaces: Any = None
    image_path: str | None = None  # the file the image was read from, if napari knows it

    def build(self) -> StartParts:
        """Load the network, read and check the pixels, build the core session (any thread)."""
        from napari_simseg.core.network.checkpoint import CheckpointError
        from napari_simseg.core.session.interactive import InteractiveSession

        predictor = self.load(self.checkpoint, self.options.device)
        if list(predictor.channel_names) != list(self.channel_names):
            raise CheckpointError(f"{predictor.checkpoint.path} reads channels {predictor.channel_names}, not "
                                  f"{self.channel_names} as its header said when Start was pressed; press Start again")
        channels = self.image.read()
        session = InteractiveSession(channels if len(channels) > 1 else channels[0], predictor)
        names = list(predictor.class_names)
        shown = session.labels[0] if session.is_2d else session.labels
        labels_layer = labels_layer_model(self.image.layer, names, np.zeros(shown.shape, shown.dtype))
        clicks = [click_layer_model(self.image.layer, names, i) for i in range(len(names))]
        fill_vispy_caches()
        recovery = open_recovery(self.options.autosave, channels, self.image_path)  # the image's key: here
        return StartParts(predictor, channels, session, labels_layer, clicks, recovery)

    def check_viewer(self, parts: StartParts):
        """The viewer's ``"SimSeg labels"`` layer to adopt (or None) once every check of the
        viewer's layers against the network passed (GUI thread).

        Raises
        ------
        ImageError
            A layer of a session layer's name that is not of its kind.
        CheckpointError
            Classes that do not fit the existing labels layer.
        RuntimeError
            Layers another live session drives.
        """
        from napari_simseg.core.network.checkpoint import CheckpointError

        predictor = parts.predictor
        existing = existing_labels_layer(self.viewer, parts.channels[0].shape)
        problem = None if existing is None else labels_class_problem(existing, predictor.class_names)
        if problem:
            raise CheckpointError(
                f"{predictor.checkpoint.path}: trained for classes {predictor.class_names}, but the "
                f"'{LABELS_LAYER_NAME}' layer {problem}; pick a matching checkpoint or rename that layer"
            )
        check_click_layer_names(self.viewer, predictor.class_names)
        owner = owner_problem(self.viewer, predictor.class_names, self.image.sources, self.replaces)
        if owner:
            raise RuntimeError(owner)
        return existing


def _header_channel_names(checkpoint) -> list:
    """The channels a checkpoint's network reads: a loaded one's, else its header's (torch-free)."""
    names = getattr(checkpoint, "channel_names", None)
    if names is not None and not isinstance(checkpoint, (str, Path)):
        return list(names)
    from napari_simseg.core.io.resources import peek_channel_names

    return peek_channel_names(checkpoint)


def plan_start(viewer, image_layer, checkpoint, options: SessionOptions, load: Callable,
               replaces=None) -> StartPlan:
    """Choose and check, on the GUI thread, what a session starts on (nothing loaded yet).

    Raises
    ------
    ImageError
        Layers that cannot be the image.
    RuntimeError
        Layers another live session drives.
    """
    names = _header_channel_names(checkpoint)
    image = plan_image_channels(viewer, image_layer, names, options.channel_axis)
    # the labels layer and the image now; the click layers once the classes are known (check_viewer)
    owner = owner_problem(viewer, [], image.sources, replaces)
    if owner:
        raise RuntimeError(owner)
    return StartPlan(viewer, image, names, checkpoint, options, load, replaces, image_path(image.layer))


def freeze_long_lived_objects() -> None:
    """Move every object alive now (torch, the network, napari) out of the garbage collector's
    reach (:func:`gc.freeze`).

    Once torch and a network are loaded, a full collection walks millions of objects and holds
    the interpreter 0.2-0.4 s, whichever thread triggers it: a freeze of the GUI that no worker
    thread can avoid. Frozen, they are never walked again; later collections see only what was
    made since. The cost is that garbage cycles alive at the freeze are never freed (they are few:
    it runs after a finished load).
    """
    import gc

    gc.freeze()
