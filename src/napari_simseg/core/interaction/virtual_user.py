"""Virtual users: simulated clicks for training (DDG, SDG) and for evaluation.

This module implements the click simulation of the DDG-SIM paper (section 4.2,
"Training with Dynamic Data Generation", and the automated evaluation of section
5.2) with numpy and :mod:`scipy.ndimage` only.

Click placement
    A click for a region is drawn from a probability map proportional to the
    Euclidean distance transform of the region (optionally raised to ``power``):
    maximal at the region centre, decreasing towards the boundary and zero
    outside. The image border counts as region boundary (the mask is padded with
    one background pixel before the transform, as in RITM), so a region touching
    the border is not clicked preferentially on the border.

Dynamic Data Generation (:class:`TrainingVirtualUser`)
    The pseudo-code of section 4.2, per image and interaction round:

    1. input click probability ``p`` (1 at the start of the episode) and the
       maximum number of training interactions ``t`` (``DDGConfig.max_rounds``);
    2. first round (``p == 1``, step a): one initial click in every connected
       component of every class, background included;
    3. later rounds (``p < 1``, step b): for every class, with probability
       ``p``, one corrective click in the class's largest mislabelled region,
       i.e. the largest connected component of ``(gt == c) & (prediction != c)``;
    4. ``p <- max(0, p - 1/t)`` (rule 2);
    5. the clicks of one class, drawn uniformly once per episode, are removed
       (rule 3);
    6. every remaining click is dropped independently with probability
       ``drop_fraction``, 0.8 by default (rule 4).

    Rule 1 caps the number of clicks per connected component of each class
    (``max_clicks_per_component``, 3 by default).

Static Data Generation (:func:`sdg_clicks`)
    Clicks drawn once from the ground truth, no model in the loop.

Evaluation (:class:`EvaluationUser`)
    A deterministic test-time user: one click per class at the centre (distance
    transform maximum) of the class's largest mislabelled region.

Choices where the paper is vague
--------------------------------
* Rule 2: the paper prints ``p <- p 1/t`` (a lost minus sign) but says "linearly
  decreases"; the linear update ``p <- p - 1/t`` clamped at 0 is used. With the
  default ``t = 3`` the per-round probabilities are 1, 2/3, 1/3, 0. ``p`` is
  computed as ``max(0, 1 - k/t)`` from the round counter ``k`` (exactly the same
  values, without floating-point drift from repeated subtraction).
* Step a) vs. step b) is keyed on the round counter (first round of the episode
  = step a), which is the paper's ``p == 1`` test when rule 2 is on. With rule 2
  off (``decreasing_probability=False``), ``p`` stays 1 and every later round
  makes a corrective click for every class (capped by rule 1).
* "With probability p": one independent Bernoulli(p) draw per class per round
  (``n_classes`` draws every round, whether or not the class is present).
* Rule 1 counts the clicks actually kept, i.e. after rules 3 and 4: a click
  that was dropped was never seen by the network and does not use up the
  component's budget. A mislabelled region is connected and lies inside the
  class mask, so it lies inside exactly one ground-truth component of the same
  class; the corrective click is attributed to that component. If that
  component already has ``max_clicks_per_component`` kept clicks, the class gets
  no click in this round (no fallback to a smaller region).
* Rule 3: the ignored class is uniform over all ``n_classes`` classes
  (background included), drawn once in :meth:`TrainingVirtualUser.start`;
  an ignored class absent from the image makes rule 3 a no-op for that image.
  Its clicks are still generated (and recorded in ``generated_history``), then
  removed, following the pseudo-code order.
* A prediction of ``None`` in a corrective round means "no prediction yet":
  every pixel counts as mislabelled, so the region is the largest component of
  ``gt == c`` (as for :class:`EvaluationUser`).
* Ties: the largest region is the one with the lowest label, i.e. the first one
  met in raster order; :func:`central_click` returns the first maximum in raster
  order.
* Connectivity: ``1`` = 4-neighbourhood (default, as ``scipy.ndimage.label``),
  ``2`` = 8-neighbourhood; used for ground-truth components and mislabelled
  regions alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_simseg.core.interaction.clicks import Click

__all__ = [
    "DDGConfig",
    "DDGClicker",
    "EvaluationUser",
    "TrainingVirtualUser",
    "central_click",
    "click_probability_map",
    "largest_mislabelled_region",
    "sample_click",
    "sdg_clicks",
]

RngLike = np.random.Generator | int | None


# --------------------------------------------------------------------------- helpers


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")
    return ndimage.generate_binary_structure(2, connectivity)


def _padded_edt(mask: np.ndarray) -> np.ndarray:
    """Distance transform of ``mask`` with the image border counted as boundary."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def _weights(dist: np.ndarray, power: float) -> np.ndarray:
    if power == 1.0:
        return dist
    out = np.zeros_like(dist)
    inside = dist > 0
    out[inside] = dist[inside] ** power
    return out


def _check_mask(region_mask) -> np.ndarray:
    mask = np.asarray(region_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"region mask must be 2D (H, W), got shape {mask.shape}")
    if not mask.any():
        raise ValueError("region mask is empty: there is no pixel to click on")
    return mask


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _draw_index(weights_flat: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to non-negative ``weights_flat``."""
    cs = np.cumsum(weights_flat)
    i = int(np.searchsorted(cs, rng.random() * cs[-1], side="right"))
    if i >= cs.size or weights_flat[i] <= 0:  # floating-point edge: u rounded to the total
        i = int(np.flatnonzero(weights_flat)[-1])
    return i


def _sample_in_crop(sub: np.ndarray, rng: np.random.Generator, power: float) -> tuple[int, int]:
    """Sample one pixel of the (cropped) region ``sub``; returns crop coordinates.

    ``sub`` must hold the whole region; cropping to its bounding box is exact
    because the border of the crop is treated as boundary (padding).
    """
    w = _weights(_padded_edt(sub), power)
    i = _draw_index(w.ravel(), rng)
    return divmod(i, sub.shape[1])


def _check_labels(labels, n_classes: int, name: str, ndim: int = 2) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != ndim:
        want = "(H, W)" if ndim == 2 else "(B, H, W)"
        raise ValueError(f"{name} must be a {ndim}D label array {want}, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.intp)
    elif not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
        arr = arr.astype(np.intp)
    return arr


def _check_gt(gt, n_classes: int, ndim: int = 2) -> np.ndarray:
    if int(n_classes) < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    arr = _check_labels(gt, n_classes, "ground truth", ndim)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"ground truth holds class indices {int(arr.min())}..{int(arr.max())} but "
            f"there are {n_classes} classes (0..{n_classes - 1}, 0 is the background)"
        )
    return arr


def _check_prediction(prediction, shape: tuple[int, ...], n_classes: int) -> np.ndarray | None:
    if prediction is None:
        return None
    pred = _check_labels(prediction, n_classes, "prediction", len(shape))
    if pred.shape != tuple(shape):
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {tuple(shape)}")
    return pred


def _make_click(label: int, y: int, x: int) -> Click:
    return Click(int(label), float(y), float(x))


# --------------------------------------------------------------------------- placement


def click_probability_map(region_mask, power: float = 1.0) -> np.ndarray:
    """Click placement probability map of a region.

    The map is the Euclidean distance transform of the region (distance of each
    region pixel to the nearest pixel outside the region, the image border
    counting as outside), raised to ``power`` and normalised to sum 1. It is
    maximal at the region centre, decreases towards the boundary and is 0
    outside the region.

    Parameters
    ----------
    region_mask : array_like of bool, shape (H, W)
        The region (one or several components; each gets its own distance map
        since components are separated by non-region pixels).
    power : float, optional
        Exponent applied to the distance; 0 gives a uniform map over the region,
        larger values concentrate the clicks at the centre. Default 1.

    Returns
    -------
    numpy.ndarray of float64, shape (H, W)
        Probabilities summing to 1.

    Raises
    ------
    ValueError
        If the mask is empty or not 2D, or ``power`` is negative.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    mask = _check_mask(region_mask)
    w = _weights(_padded_edt(mask), float(power))
    return w / w.sum()


def sample_click(region_mask, rng: RngLike = None, power: float = 1.0) -> tuple[int, int]:
    """Draw one pixel of a region from its :func:`click_probability_map`.

    Parameters
    ----------
    region_mask : array_like of bool, shape (H, W)
        The region.
    rng : numpy.random.Generator, int or None
        Random generator or seed.
    power : float, optional
        Exponent of the distance map. Default 1.

    Returns
    -------
    (y, x) : tuple of int
        Row and column of the drawn pixel; always inside the region.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    mask = _check_mask(region_mask)
    sl = _bbox(mask)
    dy, dx = _sample_in_crop(mask[sl], _as_rng(rng), float(power))
    return int(sl[0].start + dy), int(sl[1].start + dx)


def central_click(region_mask) -> tuple[int, int]:
    """The deterministic click of a region: its distance-transform maximum.

    Parameters
    ----------
    region_mask : array_like of bool, shape (H, W)
        The region.

    Returns
    -------
    (y, x) : tuple of int
        The pixel farthest from the region boundary (image border counted as
        boundary); among ties, the first in raster order.
    """
    mask = _check_mask(region_mask)
    sl = _bbox(mask)
    dy, dx = _central_in_crop(mask[sl])
    return int(sl[0].start + dy), int(sl[1].start + dx)


def _central_in_crop(sub: np.ndarray) -> tuple[int, int]:
    """Distance-transform maximum of a cropped region (first in raster order on ties)."""
    dist = _padded_edt(sub)
    dy, dx = divmod(int(np.argmax(dist)), dist.shape[1])
    return dy, dx


def largest_mislabelled_region(
    gt: np.ndarray,
    prediction: np.ndarray | None,
    label: int,
    connectivity: int = 1,
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Largest connected component of ``(gt == label) & (prediction != label)``.

    Parameters
    ----------
    gt, prediction : numpy.ndarray of int, shape (H, W)
        Ground truth and predicted label maps. ``prediction=None`` counts every
        pixel as mislabelled.
    label : int
        Class index.
    connectivity : {1, 2}
        4- or 8-neighbourhood.

    Returns
    -------
    (slices, sub) or None
        ``slices`` is the bounding box of the region and ``sub`` its boolean
        mask inside that box; ``None`` when the class has no mislabelled pixel.
        Ties in size go to the region met first in raster order.
    """
    mis = gt == label
    if prediction is not None:
        mis &= prediction != label
    if not mis.any():
        return None
    lab, k = ndimage.label(mis, structure=_structure(connectivity))
    if k > 1:
        j = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    else:
        j = 1
    sl = ndimage.find_objects(lab, max_label=j)[j - 1]
    return sl, lab[sl] == j


# --------------------------------------------------------------------------- DDG


@dataclass
class DDGConfig:
    """Parameters of the Dynamic (and Static) Data Generation virtual user.

    Attributes
    ----------
    max_rounds : int
        ``t``, the maximum number of training interactions; rule 2 decreases the
        click probability by ``1/t`` per round. Default 3.
    max_clicks_per_component : int
        Rule 1: at most this many (kept) clicks per connected component of each
        class over an episode; for SDG the per-component click count is drawn
        in ``[1, max_clicks_per_component]``. Default 3.
    drop_class : bool
        Rule 3: ignore all clicks of one random class per image. Default True.
    drop_fraction : float
        Rule 4: each remaining click is dropped with this probability. Default 0.8.
    decreasing_probability : bool
        Rule 2: decrease ``p`` linearly by ``1/t`` per round; when False ``p``
        stays 1. Default True.
    power : float
        Exponent of the distance-transform placement map (0 = uniform in the
        region). Default 1.
    connectivity : {1, 2}
        1 = 4-neighbourhood, 2 = 8-neighbourhood for connected components.
        Default 1.
    """

    max_rounds: int = 3
    max_clicks_per_component: int = 3
    drop_class: bool = True
    drop_fraction: float = 0.8
    decreasing_probability: bool = True
    power: float = 1.0
    connectivity: int = 1

    def __post_init__(self) -> None:
        if int(self.max_rounds) < 1:
            raise ValueError(f"max_rounds (t) must be >= 1, got {self.max_rounds}")
        if int(self.max_clicks_per_component) < 1:
            raise ValueError(f"max_clicks_per_component must be >= 1, got {self.max_clicks_per_component}")
        if not 0.0 <= float(self.drop_fraction) <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if float(self.power) < 0:
            raise ValueError(f"power must be >= 0, got {self.power}")
        _structure(self.connectivity)


class _Components:
    """Connected components of every class of a label map (background included).

    Components get global ids ``1..K`` (class 0's first, then class 1's, ...);
    every pixel belongs to exactly one component.
    """

    def __init__(self, gt: np.ndarray, n_classes: int, connectivity: int) -> None:
        structure = _structure(connectivity)
        self.shape = gt.shape
        self.masks = [gt == c for c in range(n_classes)]
        labels = np.zeros(gt.shape, dtype=np.int32)
        classes = []
        offset = 0
        for c, mask in enumerate(self.masks):
            lab, k = ndimage.label(mask, structure=structure)
            if k:
                labels[mask] = lab[mask] + offset
                classes.extend([c] * k)
                offset += k
        self.labels = labels
        self.classes = np.asarray(classes, dtype=np.intp)
        self.n = offset
        flat = labels.ravel()
        self.order = np.argsort(flat, kind="stable")  # pixels grouped by component id
        self.sizes = np.bincount(flat, minlength=offset + 1)[1:]
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.intp)

    def weights(self, power: float) -> np.ndarray:
        """Placement weights, each component weighted by its own distance map.

        One transform per class suffices: the nearest non-class pixel to a pixel
        of a component is always adjacent to that component, hence never part
        of another component of the same class, so the class-mask transform
        equals the per-component transform.
        """
        w = np.zeros(self.shape, dtype=np.float64)
        for mask in self.masks:
            if mask.any():
                sl = _bbox(mask)  # exact: the crop border is treated as boundary
                sub = mask[sl]
                w[sl][sub] = _padded_edt(sub)[sub]
        return _weights(w, power)

    def sample_one_each(self, rng: np.random.Generator, power: float) -> np.ndarray:
        """One pixel (flat index) per component, drawn from its placement map."""
        w = self.weights(power).ravel()[self.order]
        cs = np.cumsum(w)
        ends = self.starts + self.sizes
        lo = np.where(self.starts > 0, cs[self.starts - 1], 0.0)
        hi = cs[ends - 1]
        idx = np.searchsorted(cs, lo + rng.random(self.n) * (hi - lo), side="right")
        idx = np.clip(idx, self.starts, ends - 1)
        return self.order[idx]

    def sample_without_replacement(
        self, counts: np.ndarray, rng: np.random.Generator, power: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``min(counts[k], size_k)`` distinct pixels per component ``k``.

        Weighted sampling without replacement (Efraimidis-Spirakis keys
        ``log(u) / w``, top ``counts[k]`` per component), fully vectorised.

        Returns
        -------
        flat_indices, component_ids : numpy.ndarray
        """
        w = self.weights(power).ravel()[self.order]
        keys = np.log1p(-rng.random(w.size)) / w  # in (-inf, 0], larger wins
        comp = self.labels.ravel()[self.order]
        perm = np.lexsort((-keys, comp))  # by component, then by key descending
        rank = np.arange(w.size) - np.repeat(self.starts, self.sizes)
        keep = rank < counts[comp[perm] - 1]
        chosen = perm[keep]
        return self.order[chosen], comp[chosen]


def _apply_rules_3_4(
    labels: np.ndarray,
    ignored_class: int | None,
    drop_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Boolean keep-mask after rule 3 (ignored class) and rule 4 (random drops)."""
    keep = np.ones(labels.shape, dtype=bool)
    if ignored_class is not None:
        keep &= labels != ignored_class
    if drop_fraction > 0 and labels.size:
        keep &= rng.random(labels.size) >= drop_fraction
    return keep


class DDGClicker:
    """Episode state of the DDG virtual user for one image (RITM-style clicker).

    Created by :meth:`TrainingVirtualUser.start`; owns the ground truth, its
    connected components, the per-component click counts (rule 1), the click
    probability ``p`` (rule 2), the ignored class (rule 3) and the history.

    Attributes
    ----------
    gt : numpy.ndarray, shape (H, W)
        Ground-truth label map.
    ignored_class : int or None
        The class whose clicks are removed (rule 3); None when rule 3 is off.
    round_index : int
        Number of rounds simulated so far.
    component_labels : numpy.ndarray of int32, shape (H, W)
        Global component id (1..K) of every pixel.
    component_class : numpy.ndarray, shape (K,)
        Class of each component (index ``id - 1``).
    click_counts : numpy.ndarray of int, shape (K,)
        Kept clicks per component so far (rule 1 budget).
    history : list of list of Click
        Kept clicks of each round, in order.
    generated_history : list of list of Click
        Clicks generated in each round before rules 3 and 4.
    """

    def __init__(self, gt: np.ndarray, n_classes: int, config: DDGConfig, rng: np.random.Generator) -> None:
        self.gt = gt
        self.n_classes = int(n_classes)
        self.config = config
        self._rng = rng
        self._comps = _Components(gt, self.n_classes, config.connectivity)
        self.component_labels = self._comps.labels
        self.component_class = self._comps.classes
        self.click_counts = np.zeros(self._comps.n, dtype=np.int64)
        self.ignored_class: int | None = (
            int(rng.integers(self.n_classes)) if config.drop_class else None
        )
        self.round_index = 0
        self.history: list[list[Click]] = []
        self.generated_history: list[list[Click]] = []

    @property
    def p(self) -> float:
        """Click probability of the next round: ``max(0, 1 - k/t)`` after ``k`` rounds (1 without rule 2)."""
        if not self.config.decreasing_probability:
            return 1.0
        return max(0.0, 1.0 - self.round_index / int(self.config.max_rounds))

    @property
    def clicks(self) -> list[Click]:
        """All kept clicks of the episode, in order."""
        return [c for rnd in self.history for c in rnd]

    def _initial(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step a): one click per component of every class."""
        comps = self._comps
        flat = comps.sample_one_each(self._rng, float(self.config.power))
        ys, xs = np.divmod(flat, comps.shape[1])
        return comps.classes.copy(), np.stack([ys, xs], axis=1), np.arange(1, comps.n + 1)

    def _corrective(self, p: float, prediction: np.ndarray | None):
        """Step b): per class, with probability p, one click in the largest mislabelled region."""
        cfg = self.config
        draws = self._rng.random(self.n_classes) < p
        labels, points, comp_ids = [], [], []
        for c in np.flatnonzero(draws):
            found = largest_mislabelled_region(self.gt, prediction, int(c), cfg.connectivity)
            if found is None:
                continue
            sl, sub = found
            i0 = int(np.argmax(sub))  # any region pixel: the region lies in one gt component
            comp_id = int(self._comps.labels[sl][divmod(i0, sub.shape[1])])
            if self.click_counts[comp_id - 1] >= cfg.max_clicks_per_component:
                continue  # rule 1
            dy, dx = _sample_in_crop(sub, self._rng, float(cfg.power))
            labels.append(int(c))
            points.append((sl[0].start + dy, sl[1].start + dx))
            comp_ids.append(comp_id)
        return (
            np.asarray(labels, dtype=np.intp),
            np.asarray(points, dtype=np.intp).reshape(-1, 2),
            np.asarray(comp_ids, dtype=np.intp),
        )

    def next_round(self, prediction=None, correct_first: bool = False) -> list[Click]:
        """Simulate one interaction round; see :meth:`TrainingVirtualUser.next_round`."""
        pred = _check_prediction(prediction, self.gt.shape, self.n_classes)
        p = self.p
        if self.round_index == 0 and correct_first and pred is None:
            raise ValueError("correct_first needs the prediction the first round corrects")
        if self.round_index == 0:
            labels, points, comp_ids = self._corrective(1.0, pred) if correct_first else self._initial()
        elif p > 0:
            labels, points, comp_ids = self._corrective(p, pred)
        else:
            labels = comp_ids = np.zeros(0, dtype=np.intp)
            points = np.zeros((0, 2), dtype=np.intp)
        self.round_index += 1
        generated = [_make_click(c, y, x) for c, (y, x) in zip(labels, points)]
        keep = _apply_rules_3_4(labels, self.ignored_class, float(self.config.drop_fraction), self._rng)
        np.add.at(self.click_counts, comp_ids[keep] - 1, 1)
        kept = [c for c, k in zip(generated, keep) if k]
        self.generated_history.append(generated)
        self.history.append(kept)
        return kept


class TrainingVirtualUser:
    """DDG virtual user for training (paper section 4.2), one image at a time.

    Parameters
    ----------
    n_classes : int
        Number of classes N, background (class 0) included.
    config : DDGConfig, optional
        Rules and placement parameters; defaults to ``DDGConfig()``.
    rng : numpy.random.Generator, int or None
        Random generator or seed. Same seed and same inputs give the same clicks.

    Notes
    -----
    Usage per training sample::

        user.start(gt)
        clicks = user.next_round(None)            # round 1, step a)
        for _ in range(D - 1):
            clicks = user.next_round(prediction)  # corrective rounds, step b)

    See the module docstring for the rules and the choices made where the paper
    is vague. Clicks of class ``c`` always lie on pixels where ``gt == c``.
    """

    def __init__(self, n_classes: int, config: DDGConfig | None = None, rng: RngLike = None) -> None:
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = int(n_classes)
        self.config = config if config is not None else DDGConfig()
        self.rng = _as_rng(rng)
        self.episode: DDGClicker | None = None

    def start(self, gt_labels) -> DDGClicker:
        """Begin an episode for one image.

        Sets ``p = 1``, draws the ignored class (rule 3) once, labels the
        connected components of every class (background included) and resets
        the per-component click counts.

        Parameters
        ----------
        gt_labels : array_like of int, shape (H, W)
            Ground-truth class indices in ``[0, n_classes)``.

        Returns
        -------
        DDGClicker
            The new episode state (also available as ``self.episode``).
        """
        gt = _check_gt(gt_labels, self.n_classes)
        self.episode = DDGClicker(gt, self.n_classes, self.config, self.rng)
        return self.episode

    def _require(self) -> DDGClicker:
        if self.episode is None:
            raise RuntimeError("call start(gt_labels) before next_round()")
        return self.episode

    def next_round(self, prediction=None, correct_first: bool = False) -> list[Click]:
        """Simulate one interaction round and return the kept clicks.

        First round of the episode (``p == 1``): one click in every connected
        component of every class, drawn from the component's placement map
        (``prediction`` is ignored). Later rounds (``p < 1``): for each class,
        one Bernoulli(p) draw; on success one corrective click in the largest
        connected component of ``(gt == c) & (prediction != c)``, unless the
        ground-truth component containing that region already has
        ``max_clicks_per_component`` kept clicks (rule 1). Then ``p`` decreases
        by ``1/t`` (rule 2), the ignored class's clicks are removed (rule 3)
        and each remaining click is dropped with probability ``drop_fraction``
        (rule 4).

        Parameters
        ----------
        prediction : array_like of int, shape (H, W), or None
            Latest predicted label map. ``None`` in a corrective round counts
            every pixel as mislabelled.
        correct_first : bool
            In round 1, correct ``prediction`` (the automatic result) as step b) does
            with ``p = 1`` instead of step a), as a session's user does
            (``TrainConfig.corrective_start_fraction``); rules 1, 3, 4 apply.

        Returns
        -------
        list of Click
            The clicks kept this round (possibly empty).
        """
        return self._require().next_round(prediction, correct_first)

    @property
    def p(self) -> float:
        """Click probability of the next round of the current episode."""
        return self._require().p

    @property
    def ignored_class(self) -> int | None:
        """Class ignored in the current episode (rule 3), None if rule 3 is off."""
        return self._require().ignored_class

    @property
    def history(self) -> list[list[Click]]:
        """Kept clicks of every round of the current episode."""
        return self._require().history


# --------------------------------------------------------------------------- SDG


def sdg_clicks(gt_labels, n_classes: int, config: DDGConfig | None = None, rng: RngLike = None) -> list[Click]:
    """Static Data Generation: clicks sampled once from the ground truth.

    No model is in the loop. For every connected component of every class
    (background included) a click count is drawn uniformly in
    ``[1, max_clicks_per_component]``; that many distinct pixels (fewer if the
    component is smaller) are drawn without replacement from the component's
    placement map. Then rule 3 (``config.drop_class``: all clicks of one class,
    uniform over the ``n_classes`` classes, are removed) and rule 4 (each
    remaining click dropped with probability ``config.drop_fraction``) apply.
    ``max_rounds`` and ``decreasing_probability`` are not used.

    Parameters
    ----------
    gt_labels : array_like of int, shape (H, W)
        Ground-truth class indices.
    n_classes : int
        Number of classes, background included.
    config : DDGConfig, optional
        Defaults to ``DDGConfig()``.
    rng : numpy.random.Generator, int or None
        Random generator or seed.

    Returns
    -------
    list of Click
        Ordered by component (class 0's components first).
    """
    cfg = config if config is not None else DDGConfig()
    gen = _as_rng(rng)
    gt = _check_gt(gt_labels, n_classes)
    comps = _Components(gt, int(n_classes), cfg.connectivity)
    ignored = int(gen.integers(int(n_classes))) if cfg.drop_class else None
    counts = gen.integers(1, int(cfg.max_clicks_per_component) + 1, size=comps.n)
    flat, comp_ids = comps.sample_without_replacement(counts, gen, float(cfg.power))
    labels = comps.classes[comp_ids - 1]
    keep = _apply_rules_3_4(labels, ignored, float(cfg.drop_fraction), gen)
    ys, xs = np.divmod(flat[keep], gt.shape[1])
    return [_make_click(c, y, x) for c, y, x in zip(labels[keep], ys, xs)]


# --------------------------------------------------------------------------- evaluation


class EvaluationUser:
    """Deterministic test-time virtual user (paper section 5.2).

    Each round, for every class ``c`` (background included): one click at the
    distance-transform maximum (:func:`central_click`) of the largest connected
    component of ``(gt == c) & (prediction != c)``. Classes absent from the
    ground truth or without mislabelled pixels get no click. No drops, no
    randomness.

    Parameters
    ----------
    n_classes : int
        Number of classes, background included.
    connectivity : {1, 2}
        4- or 8-neighbourhood for the mislabelled regions. Default 1.
    """

    def __init__(self, n_classes: int, connectivity: int = 1) -> None:
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        _structure(connectivity)
        self.n_classes = int(n_classes)
        self.connectivity = int(connectivity)

    def next_round(self, gt, prediction=None) -> list[Click]:
        """Clicks of one round for one image.

        Parameters
        ----------
        gt : array_like of int, shape (H, W)
            Ground truth.
        prediction : array_like of int, shape (H, W), or None
            Current prediction; ``None`` (no prediction yet) counts every pixel
            as mislabelled, so the click goes to the largest component of
            ``gt == c``.

        Returns
        -------
        list of Click
            At most one click per class, in class order.
        """
        g = _check_gt(gt, self.n_classes)
        pred = _check_prediction(prediction, g.shape, self.n_classes)
        clicks = []
        for c in range(self.n_classes):
            found = largest_mislabelled_region(g, pred, c, self.connectivity)
            if found is None:
                continue
            sl, sub = found
            dy, dx = _central_in_crop(sub)
            clicks.append(_make_click(c, sl[0].start + dy, sl[1].start + dx))
        return clicks

    def next_round_batch(self, gt_batch, predictions=None) -> list[list[Click]]:
        """:meth:`next_round` for every image of a ``(B, H, W)`` batch."""
        g = _check_gt(gt_batch, self.n_classes, ndim=3)
        if predictions is None:
            return [self.next_round(gi, None) for gi in g]
        pred = _check_prediction(predictions, g.shape, self.n_classes)
        return [self.next_round(gi, pi) for gi, pi in zip(g, pred)]
