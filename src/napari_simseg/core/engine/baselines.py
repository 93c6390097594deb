"""Classical (training-free) interactive segmentation baselines for the evaluation.

Each baseline segments ONE 2D slice from all the clicks given so far (all rounds),
through the common interface :meth:`ClassicalSegmenter.predict`. They stand in for
the network in the virtual-user evaluation loop (``--method``), see the paper's
section 5.2.2 (GrabCut is used per class there).

Seeds
-----
Every click becomes a filled disk of ``radius`` pixels of its class (as in
:func:`napari_simseg.core.interaction.clicks.encode_clicks`). Where disks of different classes
overlap, the later click wins (later clicks are corrections); afterwards every
click's own centre pixel is set to its class again (later clicks still win when two
clicks hit the same pixel), so a small correction inside an earlier disk is never
lost.

With ``border_background=True`` and no background click, the unseeded pixels of the
one-pixel image frame are used as background seeds (the organs of interest rarely
touch the frame of a padded slice); it is off by default, so only clicks seed.

The image is min-max scaled to ``[0, 1]`` (a constant image becomes zeros).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np
from scipy import ndimage as ndi

from napari_simseg.core.interaction.clicks import as_clicks, disk_offsets, validate_click

__all__ = [
    "ClassicalSegmenter",
    "GrabCutSegmenter",
    "RandomWalkerSegmenter",
    "SEGMENTERS",
    "get_segmenter",
    "seed_map",
]


def seed_map(
    clicks: Iterable,
    n_classes: int,
    shape: tuple[int, int],
    radius: int = 3,
    border_background: bool = False,
) -> np.ndarray:
    """Per-pixel seed labels from clicks.

    Parameters
    ----------
    clicks : iterable of Click or (label, y, x)
        All clicks so far, in the order they were given.
    n_classes : int
        Number of classes N, background (0) included.
    shape : (H, W)
        Slice shape.
    radius : int
        Disk radius in pixels (0 = the clicked pixel only).
    border_background : bool
        If True and no click is a background click, seed the unseeded pixels of
        the one-pixel image frame as background.

    Returns
    -------
    ndarray of int64, shape (H, W)
        The seeded class, or -1 where unseeded. See the module docstring for the
        overlap rule.

    Raises
    ------
    napari_simseg.core.interaction.clicks.ClickError
        For an unknown class or a click outside the slice.
    """
    if radius < 0:
        raise ValueError(f"click radius must be >= 0, got {radius}")
    h, w = int(shape[0]), int(shape[1])
    seeds = np.full((h, w), -1, dtype=np.int64)
    dy, dx = disk_offsets(radius)
    placed = []
    for click in as_clicks(clicks):
        row, col = validate_click(click, n_classes, (h, w))
        ys, xs = row + dy, col + dx
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        seeds[ys[keep], xs[keep]] = int(click.label)
        placed.append((int(click.label), row, col))
    for label, row, col in placed:
        seeds[row, col] = label
    if border_background and placed and not any(p[0] == 0 for p in placed):
        frame = np.zeros((h, w), dtype=bool)
        frame[[0, -1], :] = True
        frame[:, [0, -1]] = True
        seeds[frame & (seeds < 0)] = 0
    return seeds


def _minmax01(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float64, copy=False)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.float64)
    return (img - lo) / (hi - lo)


def _nearest_seed_labels(seeds: np.ndarray) -> np.ndarray:
    """Label of the nearest seeded pixel (Euclidean), for every pixel."""
    _, (iy, ix) = ndi.distance_transform_edt(seeds < 0, return_indices=True)
    return seeds[iy, ix]


class ClassicalSegmenter(ABC):
    """Common interface of the classical interactive baselines.

    Parameters
    ----------
    radius : int
        Click disk radius in pixels used for the seeds.
    border_background : bool
        Use the image frame as background seeds when the background has no click
        (see :func:`seed_map`).
    """

    #: name accepted by :func:`get_segmenter`
    name: str = ""

    def __init__(self, radius: int = 3, border_background: bool = False) -> None:
        if int(radius) < 0:
            raise ValueError(f"click radius must be >= 0, got {radius}")
        self.radius = int(radius)
        self.border_background = bool(border_background)

    def predict(self, image2d: np.ndarray, clicks_so_far: Iterable, n_classes: int) -> np.ndarray:
        """Segment one slice from all clicks given so far.

        Parameters
        ----------
        image2d : ndarray, shape (H, W)
            The slice (float32 expected; any real dtype is accepted).
        clicks_so_far : iterable of Click or (label, y, x)
            All clicks of all rounds, oldest first.
        n_classes : int
            Number of classes N, background (0) included.

        Returns
        -------
        ndarray of int64, shape (H, W)
            Class index per pixel. With no click at all: all background (0).

        Raises
        ------
        ValueError
            If the image is not 2D or not finite, or ``n_classes < 2``.
        napari_simseg.core.interaction.clicks.ClickError
            For an unknown class or a click outside the slice.
        """
        image = np.asarray(image2d)
        if image.ndim != 2:
            raise ValueError(f"expected one 2D slice, got an array of shape {image.shape}")
        if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
            raise ValueError(f"image must be real-valued, got dtype {image.dtype}")
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        n_classes = int(n_classes)
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (background + 1 class), got {n_classes}")
        clicks = as_clicks(clicks_so_far)
        if not clicks:
            return np.zeros(image.shape, dtype=np.int64)
        seeds = seed_map(clicks, n_classes, image.shape, self.radius, self.border_background)
        out = self._predict(_minmax01(image), seeds, n_classes)
        return np.asarray(out, dtype=np.int64)

    @abstractmethod
    def _predict(self, image01: np.ndarray, seeds: np.ndarray, n_classes: int) -> np.ndarray:
        """Labels from an image scaled to [0, 1] and a seed map (-1 = unseeded)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class RandomWalkerSegmenter(ClassicalSegmenter):
    """Multi-label random walker (Grady 2006) via ``skimage.segmentation.random_walker``.

    Parameters
    ----------
    beta : float
        Edge penalisation; skimage divides it by ``10 * std(image)``.
    mode : {"bf", "cg_j", "cg", "cg_mg"}
        Linear solver. ``"bf"`` (direct sparse solve, the default) took about 1.5 s
        on a noisy 512x512 slice with 3 seeded classes, where ``"cg_j"`` (Jacobi-
        preconditioned conjugate gradient) took 3.5-13 s; ``"cg_mg"`` needs pyamg.
    tol : float
        Solver tolerance for the ``cg`` modes.
    radius, border_background
        See :class:`ClassicalSegmenter`.

    Notes
    -----
    * Every pixel gets one of the seeded classes: a class with no click can never be
      predicted. With the seeds of a single class the whole slice gets that class
      (with ``border_background=False`` and only foreground clicks this means the
      whole slice is that foreground class).
    * On a constant image the edge weights are undefined; each pixel then gets the
      class of its nearest seed pixel.
    * Regions cut off from every seed cannot occur here since seeds never carry
      negative labels.
    """

    name = "random_walker"

    def __init__(
        self,
        beta: float = 130.0,
        mode: str = "bf",
        tol: float = 1e-3,
        radius: int = 3,
        border_background: bool = False,
    ) -> None:
        super().__init__(radius=radius, border_background=border_background)
        if mode not in ("cg_j", "cg", "bf", "cg_mg"):
            raise ValueError(f"unknown random walker mode {mode!r}; valid: cg_j, cg, bf, cg_mg")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)
        self.mode = mode
        self.tol = float(tol)

    def _predict(self, image01: np.ndarray, seeds: np.ndarray, n_classes: int) -> np.ndarray:
        from skimage.segmentation import random_walker

        seeded = seeds >= 0
        classes = np.unique(seeds[seeded])
        if classes.size == 1:
            return np.full(seeds.shape, classes[0], dtype=np.int64)
        if seeded.all():
            return seeds.copy()
        if image01.std() == 0:
            return _nearest_seed_labels(seeds)
        # skimage: 0 = unlabelled, 1..K = seeds; it returns consecutive labels 1..K
        rw_labels = np.zeros(seeds.shape, dtype=np.int32)
        rw_labels[seeded] = np.searchsorted(classes, seeds[seeded]) + 1
        out = random_walker(
            image01, rw_labels, beta=self.beta, mode=self.mode, tol=self.tol
        )
        return classes[np.asarray(out, dtype=np.int64) - 1]


class GrabCutSegmenter(ClassicalSegmenter):
    """OpenCV GrabCut, one foreground class against the rest at a time.

    For each foreground class ``c`` (1..N-1) with at least one click, the GrabCut
    mask starts as ``GC_PR_BGD`` everywhere, the seeds of ``c`` are ``GC_FGD`` and
    the seeds of every other class (background included) are ``GC_BGD``. GrabCut
    runs ``iterations`` times on the slice min-max scaled to uint8 and replicated to
    3 channels; class ``c`` claims the pixels it ends as ``GC_FGD`` or ``GC_PR_FGD``.

    Parameters
    ----------
    iterations : int
        GrabCut iterations per class.
    radius : int
        Click disk radius in pixels.
    border_background : bool
        See :class:`ClassicalSegmenter`. It provides a background seed when no
        click of another class exists.

    Notes
    -----
    * A class needs at least one seed of its own and one seed of another class;
      otherwise it stays empty (so does a class without clicks). Should OpenCV
      reject the seeds (degenerate colour models), the class also stays empty.
    * GrabCut models colours with 5-component GMMs fitted to few seed pixels, which
      is fragile on grey-level images: expect weak results (the paper's Table 1).
    * Overlaps: a pixel claimed by several classes goes to the claimant whose
      nearest seed pixel is closest (Euclidean distance; ties to the lower class
      index). Unclaimed pixels are background. The seed pixels of a class that
      was segmented keep its class (GrabCut fixes them as ``GC_FGD``); those of a
      class left empty, and background seeds, are background.
    """

    name = "grabcut"

    def __init__(
        self, iterations: int = 5, radius: int = 3, border_background: bool = False
    ) -> None:
        super().__init__(radius=radius, border_background=border_background)
        if int(iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)

    def _predict(self, image01: np.ndarray, seeds: np.ndarray, n_classes: int) -> np.ndarray:
        import cv2

        img = np.ascontiguousarray(
            np.repeat(np.round(image01 * 255.0).astype(np.uint8)[..., None], 3, axis=2)
        )
        seeded = seeds >= 0
        claimants: list[int] = []
        dists: list[np.ndarray] = []
        for c in np.unique(seeds[seeded]):
            c = int(c)
            if c == 0:
                continue
            fg = seeds == c
            bg = seeded & ~fg
            if not bg.any():
                continue
            mask = np.full(seeds.shape, cv2.GC_PR_BGD, dtype=np.uint8)
            mask[bg] = cv2.GC_BGD
            mask[fg] = cv2.GC_FGD
            bgd_model = np.zeros((1, 65), np.float64)
            fgd_model = np.zeros((1, 65), np.float64)
            try:
                cv2.grabCut(
                    img, mask, None, bgd_model, fgd_model, self.iterations,
                    cv2.GC_INIT_WITH_MASK,
                )
            except cv2.error:  # degenerate colour models: leave the class empty
                continue
            claim = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
            claimants.append(c)
            dists.append(np.where(claim, ndi.distance_transform_edt(~fg), np.inf))

        out = np.zeros(seeds.shape, dtype=np.int64)
        if claimants:
            stack = np.stack(dists)
            best = np.argmin(stack, axis=0)
            claimed = np.isfinite(stack).any(axis=0)
            out[claimed] = np.asarray(claimants, dtype=np.int64)[best[claimed]]
            keep = np.isin(seeds, claimants)
            out[keep] = seeds[keep]
        return out


#: registry of the baselines by ``--method`` name
SEGMENTERS: dict[str, type[ClassicalSegmenter]] = {
    RandomWalkerSegmenter.name: RandomWalkerSegmenter,
    GrabCutSegmenter.name: GrabCutSegmenter,
}


def get_segmenter(name: str, **kwargs) -> ClassicalSegmenter:
    """Build a classical baseline by name.

    Parameters
    ----------
    name : str
        ``"random_walker"`` or ``"grabcut"`` (case-insensitive; ``-`` is read as
        ``_``).
    **kwargs
        Passed to the segmenter's constructor (e.g. ``radius=2``).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in SEGMENTERS:
        raise ValueError(
            f"unknown classical method {name!r}; valid names: {', '.join(sorted(SEGMENTERS))}"
        )
    return SEGMENTERS[key](**kwargs)
