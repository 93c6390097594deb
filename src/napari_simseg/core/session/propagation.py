"""Propagation: carry a finished slice into its neighbours, slice by slice.

Every slice of a session has its own interaction memory, so without propagation a
user corrects every slice on its own. :func:`iter_propagate` carries a finished slice
``s`` into ``s + 1, s + 2, ...`` and/or ``s - 1, s - 2, ...``: each next slice gets one
interaction round, from an empty memory, whose clicks (*seeds*) come from the finished
slice, and is then the "previous slice" of the one after it. The design and the
measurements behind it are in ``docs/propagation.md``.

What is carried
---------------
The network's input has no channel for a neighbouring slice's labels; clicks are the
way to tell it something. What the user told the finished slice is its clicks, placed
where the network was wrong there; the network's errors on neighbouring slices are
much alike (it sees them through its 2.5D context), so the same clicks at the same
pixels correct the neighbours too. A propagated slice therefore gets, as its round 1,
the finished slice's **user clicks, one per class** (each class's first click there:
the correction of the largest error, the most reliable one; later clicks tend to
fix boundaries that move from slice to slice). A click is carried into a slice only
while it *still holds* on the slice before it (that slice's labels show its class at
its pixel); a direction stops when no click holds any more.

A slice finished without clicks (its labels set by hand, e.g. painted) has no clicks
to carry: then each next slice gets one click at the deepest point (distance-transform
maximum) of every region of every class (background included) of the previous slice's
labels, regions under :attr:`SeedRule.min_area` pixels skipped, which is what the DDG
training's first round does with the ground truth.

Seeds are guesses, not the user's statements: the labels shown are the network's
decision, without forcing the seeded pixels to their class (unlike real clicks). A
user who clicks a propagated slice adds round 2 on top of the propagated round.

When it stops
-------------
Each direction stops before the first slice that

* is outside the image, in ``stop`` (e.g. slices painted in a viewer), or more than
  :attr:`SeedRule.max_slices` away (0: no limit);
* was edited by the user: has rounds of the user's own (undone ones included) or
  labels set by hand (:meth:`InteractiveSession.is_user_edited`); those are never
  overwritten;
* was propagated from another finished slice that is nearer to it (every propagated
  slice comes from its nearest finished slice);
* follows a slice without a foreground region of at least ``min_area`` pixels (the
  structure ended), or, when clicks are carried, on which none of them holds.

Slices with only an automatic result, or an earlier propagation's, are overwritten.

Undo
----
A propagation is one :class:`Propagation` record: the state (memory, region) of every
slice it wrote, before and after. :func:`undo_propagation` puts back every slice that
still holds what this propagation wrote (a slice the user clicked since keeps the
user's work) and fixes later propagations' records so that undoing them later cannot
bring this one back. The session logs a propagation as one ``propagate`` event with
every seed, so :func:`replay_propagation` repeats it exactly, whatever the seed rules
of the code that replays it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from napari_simseg.core.interaction.clicks import Click
from napari_simseg.core.interaction.virtual_user import central_click

__all__ = ["DIRECTIONS", "PROPAGATED", "Propagation", "SeedRule", "SliceState", "carried_clicks", "iter_propagate",
           "replay_propagation", "seed_clicks", "undo_propagation"]

PROPAGATED = "propagated_from"  # memory-round meta key: the source slice of a propagated round
DIRECTIONS = {"both": (1, -1), "up": (1,), "down": (-1,)}  # up: increasing slice index


@dataclass(frozen=True)
class SeedRule:
    """How a finished slice is carried into its neighbours.

    Attributes
    ----------
    min_area : int
        Regions (connected components of one class) smaller than this, in pixels of
        the image grid, get no seed, and a slice whose foreground regions are all
        smaller ends the structure.
    max_slices : int
        The most slices a direction writes (0: no limit).
    connectivity : int
        1 (4-neighbourhood) or 2 (8-neighbourhood) for the regions.
    carry : {"clicks", "labels"}
        What a clicked finished slice passes on: its user clicks (each class's first,
        while they hold), or, like a painted slice, a seed inside every region of the
        previous slice's labels.
    """

    min_area: int = 3
    max_slices: int = 0
    connectivity: int = 1
    carry: str = "clicks"

    def __post_init__(self):
        if self.carry not in ("clicks", "labels"):
            raise ValueError(f"carry must be 'clicks' or 'labels', got {self.carry!r}")
        if self.connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 or 2, got {self.connectivity}")
        if self.min_area < 1 or self.max_slices < 0:
            raise ValueError("min_area must be >= 1 and max_slices >= 0")


def seed_clicks(labels: np.ndarray, n_classes: int, rule: SeedRule = SeedRule(), background: bool = True
                ) -> list[Click]:
    """One click at the deepest point of every region of at least ``rule.min_area``
    pixels of every class (the background's only if ``background``), in class order,
    regions in raster order of their first pixel."""
    labels = np.asarray(labels)
    structure = ndimage.generate_binary_structure(2, rule.connectivity)
    out = []
    for c in range(0 if background else 1, int(n_classes)):
        mask = labels == c
        if not mask.any():
            continue
        lab, k = ndimage.label(mask, structure=structure)
        sizes = np.bincount(lab.ravel(), minlength=k + 1)
        for j in range(1, k + 1):
            if sizes[j] >= rule.min_area:
                y, x = central_click(lab == j)
                out.append(Click(c, y, x))
    return out


def carried_clicks(user_clicks, previous: np.ndarray) -> list[Click]:
    """The clicks a propagated slice gets: of ``user_clicks`` (the finished slice's,
    oldest first), each class's first, kept where ``previous`` (the labels of the
    slice before) shows its class at its pixel."""
    out, seen = [], set()
    h, w = previous.shape
    for c in user_clicks:
        if c.label in seen:
            continue
        seen.add(c.label)
        y, x = min(h - 1, max(0, int(round(c.y)))), min(w - 1, max(0, int(round(c.x))))
        if previous[y, x] == c.label:
            out.append(c)
    return out


@dataclass
class SliceState:
    """What a slice holds: its memory object (``None``: none yet), the rounds in it, whether
    it can redo, and its region (see ``core.imaging.regions``)."""

    memory: Any
    rounds: tuple = ()
    can_redo: bool = False
    region: tuple | None = None

    def same_as(self, other: SliceState) -> bool:
        """Whether both describe the same memory object with the same rounds (by identity)."""
        return (self.memory is other.memory and self.can_redo == other.can_redo
                and len(self.rounds) == len(other.rounds)
                and all(a is b for a, b in zip(self.rounds, other.rounds)))


@dataclass
class Propagation:
    """One propagation: its source slice, direction, seeds and what it changed.

    Attributes
    ----------
    source : int
        The finished slice it started from.
    direction : {"both", "up", "down"}
    steps : list of (int, list of list of Click)
        Each slice written, in order, with the seeds of each of its rounds (one round
        today; the log keeps the list so that a later rule may add rounds).
    source_labels : ndarray, optional
        The finished slice's labels when they were given (painted in a viewer), not the
        session's: the first slices' prior, kept for the log so that a replay repeats it.
    before, written : dict of int -> SliceState
        Every written slice's state before and right after this propagation.
    """

    source: int
    direction: str = "both"
    steps: list = field(default_factory=list)
    before: dict = field(default_factory=dict)
    written: dict = field(default_factory=dict)
    source_labels: np.ndarray | None = None

    @property
    def slices(self) -> list[int]:
        """The slices written, in increasing order."""
        return sorted(self.written)

    def holds(self, session, z: int) -> bool:
        """Whether slice ``z`` of ``session`` still shows what this propagation wrote."""
        return z in self.written and self.written[z].same_as(session.slice_state(z))

    def log_fields(self) -> dict:
        """The ``propagate`` log event's fields (see ``core.session.interaction_log``)."""
        out = {"slice": self.source, "direction": self.direction,
               "steps": [{"slice": z, "rounds": [[{"class": c.label, "y": c.y, "x": c.x} for c in clicks]
                                                 for clicks in rounds]} for z, rounds in self.steps]}
        if self.source_labels is not None:
            out["source_labels"] = np.asarray(self.source_labels).astype(int).tolist()
        return out

    def prior_for(self, session, z: int) -> np.ndarray:
        """The labels of the slice before ``z`` on the way from the source (its prior)."""
        before = z - 1 if z > self.source else z + 1
        if before == self.source and self.source_labels is not None:
            return self.source_labels
        return session.labels[before]


def _write(session, record: Propagation, z: int, rounds: list, prior: np.ndarray) -> None:
    """Slice ``z``'s propagated rounds (the first from an empty memory, after the
    ``prior`` labels of the slice before it for a network trained with them), recorded."""
    record.before[z] = session.slice_state(z)
    for k, clicks in enumerate(rounds):
        session.seeded_round(z, clicks, record.source, fresh=k == 0, prior=prior if k == 0 else None)
    record.steps.append((z, [list(c) for c in rounds]))
    record.written[z] = session.slice_state(z)


def _blocked(session, z: int, source: int, stop: set) -> bool:
    if not 0 <= z < session.n_slices or z in stop or session.is_user_edited(z):
        return True
    owner = session.propagated.get(z)
    return owner is not None and abs(z - owner) < abs(z - source)


def _reach(session, source: int, d: int, stop: set, limit: int) -> int:
    """How many slices direction ``d`` can reach at most (for the progress total)."""
    n, z = 0, source + d
    while not _blocked(session, z, source, stop) and (limit <= 0 or n < limit):
        n, z = n + 1, z + d
    return n


def _seeds(session, previous: np.ndarray, user: list, rule: SeedRule) -> list[Click]:
    """The seeds of the slice after one showing ``previous`` (empty: stop there)."""
    n = session.n_classes
    if not seed_clicks(previous, n, rule, background=False):
        return []  # the structure ended
    return carried_clicks(user, previous) if user and rule.carry == "clicks" else seed_clicks(previous, n, rule)


def iter_propagate(session, record: Propagation, stop: Iterable[int] = (), rule: SeedRule = SeedRule(),
                   source_labels: np.ndarray | None = None) -> Iterator[tuple[int, int, int | None]]:
    """Propagate ``record.source`` into its neighbours, filling ``record`` as it goes.

    ``source_labels`` replaces the source slice's labels (e.g. as painted in a viewer;
    then seeds come from them, not from the user's clicks). Yields ``(done, total,
    slice)`` after each slice written (first ``(0, total, None)``); ``total`` is the
    most slices still reachable and shrinks when a direction stops early. The
    directions advance in turn, one slice each. Stopping the generator keeps the
    slices written so far (``record`` holds them).
    """
    stop = {int(z) for z in stop}
    source = record.source
    user = [] if source_labels is not None else session.user_clicks(source)
    if source_labels is not None:
        record.source_labels = np.asarray(source_labels).copy()
    first = session.labels[source] if source_labels is None else record.source_labels
    fronts = {d: source for d in DIRECTIONS[record.direction]}
    reach = {d: _reach(session, source, d, stop, rule.max_slices) for d in fronts}
    done = 0
    yield 0, sum(reach.values()), None
    while fronts:
        for d in list(fronts):
            z = fronts[d] + d
            seeds = [] if reach[d] <= 0 or _blocked(session, z, source, stop) else \
                _seeds(session, first if fronts[d] == source else session.labels[fronts[d]], user, rule)
            if not seeds:
                del fronts[d]
                reach[d] = 0
                continue
            _write(session, record, z, [seeds], record.prior_for(session, z))
            fronts[d] = z
            reach[d] -= 1
            done += 1
            yield done, done + sum(reach.values()), z


def replay_propagation(session, event: dict) -> Propagation:
    """Repeat a logged ``propagate`` event's seeded rounds on ``session``; returns its record."""
    record = Propagation(int(event["slice"]), str(event.get("direction", "both")))
    if event.get("source_labels") is not None:
        record.source_labels = np.asarray(event["source_labels"], dtype=session.labels.dtype)
    for step in event["steps"]:
        rounds = [[Click(c["class"], c["y"], c["x"]) for c in clicks] for clicks in step["rounds"]]
        z = int(step["slice"])
        _write(session, record, z, rounds, record.prior_for(session, z))
    return record


def undo_propagation(session, records: list, record: Propagation) -> list[int]:
    """Undo ``record`` (one of ``records``, the session's active propagations) as one step.

    Every slice that still holds what it wrote gets its earlier state back; a slice
    changed since (clicked, reset, set by hand, or overwritten by a later propagation)
    keeps its state. Later records that overwrote this one's slices now remember the
    state from before this one. Returns the slices restored.
    """
    restored = []
    for z in record.slices:
        if record.holds(session, z):
            session.restore_slice_state(z, record.before[z])
            restored.append(z)
    for other in records:
        if other is not record:
            for z, state in other.before.items():
                if z in record.written and state.same_as(record.written[z]):
                    other.before[z] = record.before[z]
    records.remove(record)
    return restored
