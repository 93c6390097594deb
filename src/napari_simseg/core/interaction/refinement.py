"""What a corrective round may change: the labels shown after a round, from the labels shown
before it, the network's new output and the round's clicks.

One implementation for the interactive session, the evaluation's virtual user and the
volume protocol (``docs/method.md``, "Clicks that count", gives the reasoning and the
figures). The rules, each switchable in :class:`Refinement`:

* **Confidence.** A pixel the network changes keeps its old label unless the new class
  wins by ``min_lead`` in log-probability (by default twice as likely as the runner-up):
  next to a click on a thin error the network paints part of the click's disk across the
  boundary, with a narrow lead, and that overshoot made one round in five of the bundled
  model's worse (``docs/method.md``).
* **Locality** (FocalClick's idea: a click refines where it points, the rest stays as it
  was). ``"click"``: a pixel changes only to the class of a click of this round, and only
  in the connected set of such pixels that holds (or touches) that click; every other
  pixel keeps the label it showed before the round. ``"connected"``: any change is kept
  where it is connected to one of the round's clicks. ``"none"``: the network's new
  labels everywhere (the paper's system).
* **Following the clicks** (the BRS family, applied to the network's output rather than
  its input): where the network's new labels still contradict a click, the click's class
  gets a local bonus on its log-probability, largest at the click and decaying with a
  Gaussian whose width is the click's distance to the edge of the wrongly labelled region
  it sits in; the bonus is just large enough to make the click pixel take the click's
  class (plus ``margin``). Pixels that the bonus turns to the click's class, connected to
  the click, take it. The network's own margins decide how far the correction spreads:
  pixels where it was nearly undecided flip, confident ones do not.

* **Spreading** (``spread``, off by default; tried, not kept: ``docs/method.md``): a click's
  class spreads over the region of the old label it corrects, connected to the click, where
  the network finds it within ``spread`` (log-probability) of its top class.

Clicked pixels are honoured after this, as before (``clicks.honour_clicks``).
Rounds that carry a propagation's seeds, or automatic results, are not refined: they
have no user click to be local to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from napari_simseg.core.interaction.clicks import Click, as_clicks

__all__ = ["LOCALITIES", "MIN_GAIN", "Refinement", "checkpoint_network_rounds", "component_touching",
           "confident_changes", "follow_clicks", "keep_local_changes", "refine_round", "spread_clicks"]

LOCALITIES = ("none", "connected", "click")

#: A focus view must see its box at least this many times finer than the working grid
#: (:mod:`~napari_simseg.core.network.zoom`); a checkpoint trained to read less gets none.
MIN_GAIN = 1.25


@dataclass(frozen=True)
class Refinement:
    """How a corrective round's output becomes the labels shown.

    Attributes
    ----------
    locality : {"click", "connected", "none"}
        Which of the network's changes a round keeps (module docstring).
    follow_clicks : bool
        Give a click's class a local bonus where the network's labels contradict it.
    margin : float
        How far past the tie the bonus takes the click pixel, in log-probability.
    min_lead : float
        A pixel the network changes must have its new class ahead of the runner-up by this
        much in log-probability (0: any win).
    touch : int
        A change counts as connected to a click within this many pixels of it (Chebyshev).
    spread : float
        Spread a click's class over the region it corrects where the network finds it within
        this log-probability of the top class (:func:`spread_clicks`; 0: off).
    network_rounds : int or None
        A slice's first this many corrective rounds show the network's own labels, unrefined
        (clicked pixels still honoured); the rules above act from the round after. A network
        trained with dynamic data generation saw up to ``max_clicks`` rounds of its own
        output, and in those rounds its changes away from the clicks are, on some data,
        corrections the rules would withhold (``docs/method.md``). None (the default): the
        number chosen for the checkpoint on its training split (``simseg calibrate``,
        :meth:`for_checkpoint`), 0 where none was chosen. Rounds are counted as the slice's
        memory holds them (a propagation's seeded round counts, as in the volume protocol);
        the session refines every round of a slice whose labels were set by hand.
    zoom : float or None
        Where the working grid is coarser than the image, each click of a round is refined
        in a focus view up to this many times finer than the working grid
        (:mod:`~napari_simseg.core.network.zoom`); 1: no focus views. None (the default):
        the magnification the checkpoint was trained to read (:meth:`for_checkpoint`), since
        a network shown a structure larger than any it was trained on misreads it.
    """

    locality: str = "click"
    follow_clicks: bool = True
    margin: float = math.log(2.0)
    min_lead: float = math.log(2.0)
    touch: int = 2
    zoom: float | None = None
    spread: float = 0.0
    network_rounds: int | None = None

    def __post_init__(self):
        if self.locality not in LOCALITIES:
            raise ValueError(f"locality must be one of {LOCALITIES}, got {self.locality!r}")
        if not isinstance(self.follow_clicks, bool):
            raise ValueError(f"follow_clicks must be true or false, got {self.follow_clicks!r}")
        if isinstance(self.touch, bool) or not isinstance(self.touch, int) or self.touch < 0:
            raise ValueError(f"touch must be a whole number of pixels >= 0, got {self.touch!r}")
        for name in ("min_lead", "margin", "spread"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.zoom is not None and not (self.zoom >= 1 and math.isfinite(self.zoom)):
            raise ValueError(f"zoom must be a finite magnification >= 1 (1: off), got {self.zoom}")
        if self.network_rounds is not None and (isinstance(self.network_rounds, bool)
                                                or not isinstance(self.network_rounds, int)
                                                or self.network_rounds < 0):
            raise ValueError(f"network_rounds must be a whole number >= 0, got {self.network_rounds!r}")

    @property
    def active(self) -> bool:
        return self.locality != "none" or self.follow_clicks or self.min_lead > 0 or (self.zoom or 1.0) > 1

    def refines_round(self, round_number: int) -> bool:
        """Whether a slice's corrective round ``round_number`` (1: its first) is refined at all."""
        return self.active and round_number > (self.network_rounds or 0)

    @property
    def needs_probabilities(self) -> bool:
        return self.follow_clicks or self.min_lead > 0 or self.spread > 0

    @classmethod
    def off(cls) -> Refinement:
        """The network's labels as they are (the paper's system)."""
        return cls(locality="none", follow_clicks=False, min_lead=0.0, zoom=1.0, network_rounds=0)

    def for_checkpoint(self, meta) -> Refinement:
        """These settings with ``zoom=None`` and ``network_rounds=None`` resolved for a
        checkpoint's header ``meta``: the zoom is the upper end of the zoom its training
        augmented with (``aug_scale``), 1 (off) below :data:`MIN_GAIN` or when the header does
        not say; the network rounds are those its calibration chose
        (``training["refinement"]["network_rounds"]``), else 0."""
        training = getattr(meta, "training", None) or {}
        resolved = self
        if self.network_rounds is None:
            resolved = replace(self, network_rounds=checkpoint_network_rounds(training))
        if self.zoom is not None:
            return resolved
        config = training.get("config") if isinstance(training, dict) else None
        scale = config.get("aug_scale") if isinstance(config, dict) else None
        try:
            trained = float(max(scale)) if scale else 1.0
        except (TypeError, ValueError):
            trained = 1.0
        return replace(resolved, zoom=trained if math.isfinite(trained) and trained >= MIN_GAIN else 1.0)

    def to_dict(self) -> dict:
        """The settings as JSON values (an interaction log records them)."""
        return {"locality": self.locality, "follow_clicks": bool(self.follow_clicks), "margin": float(self.margin),
                "min_lead": float(self.min_lead), "touch": int(self.touch),
                "zoom": None if self.zoom is None else float(self.zoom), "spread": float(self.spread),
                "network_rounds": None if self.network_rounds is None else int(self.network_rounds)}

    @classmethod
    def from_dict(cls, values) -> Refinement:
        """Settings written by :meth:`to_dict`.

        Raises
        ------
        ValueError
            Unknown fields or values out of range, named.
        """
        if not isinstance(values, dict):
            raise ValueError(f"refinement settings must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls().to_dict()))
        if unknown:
            raise ValueError(f"unknown refinement setting(s): {', '.join(map(str, unknown))}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"refinement settings: {exc}") from None


def checkpoint_network_rounds(training) -> int:
    """The network rounds a checkpoint's ``training`` record says its calibration chose (0: none)."""
    choice = training.get("refinement") if isinstance(training, dict) else None
    value = choice.get("network_rounds") if isinstance(choice, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100 else 0


def _near(shape: tuple, click: Click, touch: int) -> tuple[slice, slice]:
    y, x = int(round(click.y)), int(round(click.x))
    rows = slice(max(0, y - touch), min(shape[0], y + touch + 1))
    return rows, slice(max(0, x - touch), min(shape[1], x + touch + 1))


def component_touching(mask: np.ndarray, click: Click, touch: int) -> np.ndarray | None:
    """The 8-connected parts of ``mask`` within ``touch`` pixels of ``click`` (None: none)."""
    from scipy import ndimage

    near = _near(mask.shape, click, touch)
    if not mask[near].any():
        return None
    regions, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    ids = np.unique(regions[near])
    ids = ids[ids > 0]
    return np.isin(regions, ids)


def keep_local_changes(previous: np.ndarray, proposed: np.ndarray, clicks: Sequence, locality: str = "click",
                       touch: int = 2) -> np.ndarray:
    """``previous`` with only the changes of ``proposed`` that ``locality`` allows (module docstring).

    Parameters
    ----------
    previous, proposed : ndarray of int, shape (H, W)
        Labels shown before the round; labels the network proposes after it.
    clicks : sequence of Click or (class, y, x)
        The round's clicks, on the same grid.
    locality : {"click", "connected", "none"}
    touch : int
        Distance within which a change touches a click.

    Returns
    -------
    ndarray
        A new label map.
    """
    if locality not in LOCALITIES:
        raise ValueError(f"locality must be one of {LOCALITIES}, got {locality!r}")
    if locality == "none":
        return proposed.copy()
    clicks = as_clicks(clicks)
    out = previous.copy()
    changed = proposed != previous
    if not changed.any() or not clicks:
        return out
    if locality == "connected":
        for click in clicks:
            part = component_touching(changed, click, touch)
            if part is not None:
                out[part] = proposed[part]
        return out
    for click in clicks:
        part = component_touching(changed & (proposed == click.label), click, touch)
        if part is not None:
            out[part] = click.label
    return out


def follow_clicks(labels: np.ndarray, log_probabilities: np.ndarray, clicks: Sequence,
                  margin: float = math.log(2.0)) -> np.ndarray:
    """``labels`` with each contradicted click's class spread around it (module docstring).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        The network's labels after the round (its decision, clicks not yet honoured).
    log_probabilities : ndarray, shape (N, H, W)
        Their log-probabilities (with any decision offsets added).
    clicks : sequence of Click or (class, y, x)
        The round's clicks, on the same grid.
    margin : float
        Log-probability past the tie at the click.

    Returns
    -------
    ndarray
        A new label map; where every click already holds, a copy of ``labels``.
    """
    from scipy import ndimage

    out = labels.copy()
    h, w = labels.shape
    for click in as_clicks(clicks):
        y, x = int(round(click.y)), int(round(click.x))
        if not (0 <= y < h and 0 <= x < w) or out[y, x] == click.label:
            continue
        wrong = out[y, x]
        inside = out == wrong
        sigma = max(2.0, float(ndimage.distance_transform_edt(inside)[y, x]))
        reach = int(math.ceil(3 * sigma))  # the bonus is < 1 % of its peak beyond 3 sigma
        ys, xs = slice(max(0, y - reach), min(h, y + reach + 1)), slice(max(0, x - reach), min(w, x + reach + 1))
        lp = log_probabilities[:, ys, xs]
        need = float(lp[wrong, y - ys.start, x - xs.start] - lp[click.label, y - ys.start, x - xs.start]) + margin
        yy, xx = np.ogrid[ys, xs]
        bonus = need * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
        boosted = lp[click.label] + bonus
        wins = boosted >= lp.max(axis=0)
        part = component_touching(wins, Click(click.label, y - ys.start, x - xs.start), 0)
        if part is not None:
            out[ys, xs][part] = click.label
    return out


def spread_clicks(previous: np.ndarray, labels: np.ndarray, log_probabilities: np.ndarray, clicks: Sequence,
                  tolerance: float) -> np.ndarray:
    """``labels`` with each click's class spread over the region the click corrects.

    A click of class ``c`` on a pixel shown as ``k`` says "this ``k`` region is ``c``": the
    pixels shown ``k`` before the round, connected to the click, where ``c`` is within
    ``tolerance`` (log-probability) of the network's top class, take ``c``. A click on a
    pixel already shown as its class before the round, or one whose own pixel the network
    finds implausible for its class, spreads nothing.
    """
    out = labels.copy()
    h, w = labels.shape
    best = log_probabilities.max(axis=0)
    for click in as_clicks(clicks):
        y, x = int(round(click.y)), int(round(click.x))
        if not (0 <= y < h and 0 <= x < w) or previous[y, x] == click.label:
            continue
        plausible = (log_probabilities[click.label] >= best - tolerance) & (previous == previous[y, x])
        if not plausible[y, x]:
            continue
        part = component_touching(plausible, Click(click.label, y, x), 0)
        if part is not None:
            out[part] = click.label
    return out


def confident_changes(previous: np.ndarray, proposed: np.ndarray, log_probabilities: np.ndarray,
                      min_lead: float) -> np.ndarray:
    """``proposed`` where it equals ``previous`` or its class leads the runner-up by ``min_lead``
    in ``log_probabilities`` ``(N, H, W)``; ``previous`` elsewhere (a new array)."""
    if min_lead <= 0:
        return proposed.copy()
    top2 = np.partition(log_probabilities, -2, axis=0)[-2:]
    weak = (top2[1] - top2[0] < min_lead) & (proposed != previous)
    return np.where(weak, previous, proposed).astype(proposed.dtype, copy=False)


def refine_round(previous: np.ndarray, proposed: np.ndarray, log_probabilities: np.ndarray | None,
                 clicks: Sequence, refinement: Refinement) -> np.ndarray:
    """The labels shown after a corrective round (one slice).

    Parameters
    ----------
    previous : ndarray of int, shape (H, W)
        Labels shown before the round.
    proposed : ndarray of int, shape (H, W)
        The network's decision after the round (before clicks are honoured).
    log_probabilities : ndarray, shape (N, H, W), or None
        The log-probabilities behind ``proposed`` (needed by ``follow_clicks`` and ``min_lead``;
        without them both are skipped).
    clicks : sequence of Click or (class, y, x)
        This round's clicks, on the same grid.
    refinement : Refinement

    Returns
    -------
    ndarray
        The labels to show (clicked pixels still to be honoured by the caller).
    """
    labels = proposed
    if log_probabilities is not None:
        labels = confident_changes(previous, labels, log_probabilities, refinement.min_lead)
        if refinement.follow_clicks and len(clicks):
            labels = follow_clicks(labels, log_probabilities, clicks, refinement.margin)
        if refinement.spread > 0 and len(clicks):
            labels = spread_clicks(previous, labels, log_probabilities, clicks, refinement.spread)
    return keep_local_changes(previous, labels, clicks, refinement.locality, refinement.touch)
