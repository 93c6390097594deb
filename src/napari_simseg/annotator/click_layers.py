"""The ``"<class> clicks"`` points layers: :class:`ClickLayers` (made by :func:`make_click_layers`)
and the points <-> clicks bookkeeping (:func:`keys_from_clicks`, :func:`clicks_from_keys`; which
points each round used, which are pending).

Nothing here imports Qt or torch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from napari.layers import Points

from napari_simseg.annotator.colors import class_colors
from napari_simseg.annotator.layers import CLICKS_SUFFIX, transform_kwargs
from napari_simseg.core.interaction.clicks import Click

__all__ = ["SLICE_TOLERANCE", "ClickLayers", "IgnoredPoints", "PointKey", "click_layer_model", "click_layer_steps",
           "clicks_from_keys",
           "iter_click_layers", "keys_from_clicks", "make_click_layers", "point_coords"]

#: how far from a whole number a point's slice coordinate may be (float error) and still lie on that slice
SLICE_TOLERANCE = 1e-3

#: (class index, point coordinates in the points layer's data space)
PointKey = tuple[int, tuple[float, ...]]


def point_coords(z: int, y: float, x: float, is_2d: bool) -> tuple[float, ...]:
    """A click's point in a points layer: ``(y, x)`` for 2D, ``(z, y, x)`` for 3D."""
    return (float(y), float(x)) if is_2d else (float(z), float(y), float(x))


def keys_from_clicks(z: int, clicks: Iterable[Click], is_2d: bool) -> list[PointKey]:
    """The point keys of a slice's clicks."""
    return [(int(c.label), point_coords(z, c.y, c.x, is_2d)) for c in clicks]


def clicks_from_keys(keys: Iterable[PointKey]) -> list[Click]:
    """The clicks of point keys (the slice is the caller's)."""
    return [Click(cls, coords[-2], coords[-1]) for cls, coords in keys]


def click_layer_model(image_layer, class_names: Sequence[str], class_index: int) -> Points:
    """A new, empty ``"<class> clicks"`` points layer over ``image_layer``, not yet in a viewer
    (no Qt: any thread)."""
    ndim = image_layer.ndim
    h, w = image_layer.data.shape[-3:-1] if getattr(image_layer, "rgb", False) else image_layer.data.shape[-2:]
    name = class_names[class_index]
    return Points(
        np.empty((0, ndim)), ndim=ndim, name=f"{name}{CLICKS_SUFFIX}",
        face_color=class_colors(len(class_names))[class_index], border_color="black", border_width=0.15,
        size=max(2.0, 0.04 * min(h, w)), out_of_slice_display=False,
        metadata={"simseg": {"role": "clicks", "class_index": class_index, "class_name": name}},
        **transform_kwargs(image_layer),
    )


def iter_click_layers(viewer, image_layer, class_names: Sequence[str], models=None, hidden=False) -> Iterator:
    """One empty ``"<class> clicks"`` points layer per class, placed over ``image_layer``, made one
    by one (the caller may let the event loop run between them).

    A points layer of that name and dimensionality is emptied and reused (its clicks
    belong to rounds this session never ran); one of another dimensionality is replaced.
    ``models`` are the new layers made beforehand (:func:`click_layer_model`), one per class;
    ``hidden=True`` adds them hidden (:func:`click_layer_steps` shows them).
    """
    colors = class_colors(len(class_names))
    ndim = image_layer.ndim
    for i, name in enumerate(class_names):
        lname = f"{name}{CLICKS_SUFFIX}"
        layer = viewer.layers[lname] if lname in viewer.layers else None
        if isinstance(layer, Points) and layer.ndim == ndim:
            layer.selected_data = set()  # a stale selection breaks the colour update
            layer.data = np.empty((0, ndim))
            layer.current_face_color = colors[i]
            meta = {"simseg": {"role": "clicks", "class_index": i, "class_name": name}}
            layer.metadata = {**layer.metadata, **meta}
        else:
            if layer is not None:  # a points layer of another dimensionality
                viewer.layers.remove(layer)
            layer = models[i] if models else click_layer_model(image_layer, class_names, i)
            layer.visible = not hidden
            layer = viewer.add_layer(layer)
        yield layer


def click_layer_steps(viewer, image_layer, class_names: Sequence[str], models, made: list) -> Iterator[str]:
    """:func:`iter_click_layers` as GUI steps, for a caller that lets the event loop run between
    them: each layer it adds is added hidden in one step and shown in the next.

    napari builds a layer's visuals when it is added and compiles their shaders at its first
    draw: two GUI-thread stalls (~60 and ~130 ms for the first points layer on a 2-core machine)
    better not summed in one turn. Each layer goes into ``made`` as it is added; a caller that
    stops between two steps still gets every new layer shown.
    """
    before = list(viewer.layers)

    def is_new(layer) -> bool:
        return not any(layer is old for old in before)

    try:
        for layer in iter_click_layers(viewer, image_layer, class_names, models, hidden=True):
            made.append(layer)
            yield layer.name
            if is_new(layer):
                layer.visible = True
                yield layer.name
    finally:
        for layer in filter(is_new, made):
            layer.visible = True


def make_click_layers(viewer, image_layer, class_names: Sequence[str], models=None) -> list:
    """:func:`iter_click_layers` at once."""
    return list(iter_click_layers(viewer, image_layer, class_names, models))


@dataclass(frozen=True)
class IgnoredPoints:
    """What :meth:`ClickLayers.drop_unusable` removed, by reason."""

    nonfinite: int = 0
    between_slices: int = 0
    outside: int = 0
    shape: tuple = ()
    is_2d: bool = False

    @property
    def count(self) -> int:
        return self.nonfinite + self.between_slices + self.outside

    @property
    def note(self) -> str:
        """In words ("" when nothing)."""
        def points(n: int) -> str:
            return f"{n} point{'s' * (n != 1)}"

        parts = []
        if self.outside:
            size = " x ".join(str(d) for d in (self.shape[1:] if self.is_2d else self.shape))
            parts.append(f"{points(self.outside)} outside the image ({size}) removed")
        if self.between_slices:
            parts.append(f"{points(self.between_slices)} between slices removed (a point must lie on a slice, "
                         "as slice indices are whole numbers)")
        if self.nonfinite:
            parts.append(f"{points(self.nonfinite)} with a NaN or infinite coordinate ignored (removed)")
        return "; ".join(parts)


class ClickLayers:
    """The ``"<class> clicks"`` points layers and which of their points each round used.

    The points are the source of truth: a point that no round used (matched by class
    and exact coordinates) is *pending* and goes into the next round of its slice.
    Napari's per-point features are not used for this because napari copies the
    features of selected points into new ones.

    Parameters
    ----------
    viewer : napari.Viewer
    layers : list of napari.layers.Points
        One layer per class, background included, in class-index order
        (:func:`make_click_layers`).
    shape : (Z, H, W)
        The session's slice stack (``Z == 1`` for a 2D image).
    """

    def __init__(self, viewer, layers: list, shape: Sequence[int]):
        self.viewer = viewer
        self.is_2d = layers[0].ndim == 2
        self.shape = tuple(int(s) for s in shape)
        self.layers = list(layers)
        self._rounds: dict[int, list[list[PointKey]]] = defaultdict(list)
        self._redo: dict[int, list[list[PointKey]]] = defaultdict(list)
        self._in_flight: list[PointKey] | None = None  # points of the running round

    def live(self) -> Iterator[tuple[int, object]]:
        """``(class index, layer)`` of the layers still in the viewer."""
        for cls, layer in enumerate(self.layers):
            if layer in self.viewer.layers:
                yield cls, layer

    def activate(self) -> None:
        """Put every class's layer in add mode (choosing another class and clicking places a
        point, never pans) and select the first foreground class's (else the background's)."""
        for layer in self.layers:
            layer.mode = "add"
        self.viewer.layers.selection.active = self.layers[1] if len(self.layers) > 1 else self.layers[0]

    def keys(self, z: int, clicks: Iterable[Click]) -> list[PointKey]:
        """The point keys of clicks on slice ``z``."""
        return keys_from_clicks(z, clicks, self.is_2d)

    def slice_of(self, coords: Sequence[float]) -> int:
        """The slice a point lies on (-1 for a non-finite coordinate: on no slice)."""
        if self.is_2d:
            return 0
        return int(round(coords[0])) if np.isfinite(coords[0]) else -1

    def on_a_slice(self, coords: Sequence[float]) -> bool:
        """Whether a point lies on a slice: its slice coordinate a whole number (up to float
        error of the layer's transform), as the API's slice indices must be."""
        return self.is_2d or bool(abs(coords[0] - np.round(coords[0])) <= SLICE_TOLERANCE)

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
            if self._inside(key[1]) and self.on_a_slice(key[1]):
                out[self.slice_of(key[1])].append(key)
        return dict(out)

    def pending_slices(self, current: int) -> list[int]:
        """Slices with pending points, ``current`` first."""
        slices = sorted(self.pending())
        return ([current] if current in slices else []) + [z for z in slices if z != current]

    def drop_unusable(self) -> IgnoredPoints:
        """Remove the unused points no round can use (NaN/inf, between slices, outside the image)."""
        return IgnoredPoints(self.drop_nonfinite(), self.drop_between_slices(), self.drop_outside(), self.shape,
                             self.is_2d)

    def drop_nonfinite(self) -> int:
        """Remove unused points with a NaN or infinite coordinate; returns how many."""
        return self._drop(lambda coords: not np.all(np.isfinite(coords)))

    def drop_between_slices(self) -> int:
        """Remove unused finite points whose slice coordinate is not a whole number (2.7); returns how many."""
        return self._drop(lambda coords: bool(np.all(np.isfinite(coords))) and not self.on_a_slice(coords))

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

    # -------------------------------------------------------------- the whole state (autosave)
    def state(self) -> dict:
        """Every class layer's points and the points each round, and each undone round, used:
        what :meth:`restore_state` puts back exactly (JSON-able but for the layers' arrays)."""
        def stacks(by_slice):
            return {str(z): [[[int(c), list(coords)] for c, coords in r] for r in rs] for z, rs in by_slice.items()
                    if rs}

        return {"ndim": 2 if self.is_2d else 3,
                "layers": [np.array(layer.data, dtype=float) for layer in self.layers],
                "rounds": stacks(self._rounds), "redo": stacks(self._redo)}

    def restore_state(self, state: dict) -> None:
        """Put back a :meth:`state`: the layers' points (pending ones included) and the rounds'."""
        def stacks(by_slice):
            return defaultdict(list, {int(z): [[(int(c), tuple(float(v) for v in coords)) for c, coords in r]
                                               for r in rs] for z, rs in by_slice.items()})

        self._in_flight = None
        self._rounds, self._redo = stacks(state.get("rounds", {})), stacks(state.get("redo", {}))
        ndim = int(state.get("ndim", 2 if self.is_2d else 3))
        layers = state.get("layers", [])
        for cls, layer in self.live():
            layer.selected_data = set()
            layer.data = np.asarray(layers[cls] if cls < len(layers) else [], dtype=float).reshape(-1, ndim)
