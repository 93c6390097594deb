"""The volume protocol of ``simseg evaluate --protocol volume``: a virtual user who
corrects one slice at a time and propagates it.

The per-slice protocol (``--protocol slice``, the default, :mod:`~napari_simseg.core.jobs.evaluation`)
gives every slice its own rounds of clicks. Here one :class:`~napari_simseg.core.session.interactive.InteractiveSession`
runs per volume, as in the napari plugin (flip averaging, clicked pixels honoured,
decision offsets, as the session's settings say):

* step 0 is the automatic result of every slice (:meth:`InteractiveSession.predict_auto`);
* each step ``k >= 1`` picks the slice with the most mislabelled pixels (against the
  ground truth; the lowest index on ties), gives it one corrective round there (the
  :class:`~napari_simseg.core.interaction.virtual_user.EvaluationUser`: one click per wrongly
  labelled class, in its largest mislabelled region, as in the per-slice protocol;
  on a slice with rounds already, the round builds on its memory) and propagates
  that slice into its neighbours (:meth:`InteractiveSession.propagate`, both
  directions, the default :class:`~napari_simseg.core.session.propagation.SeedRule`);
* a volume without a mislabelled pixel left takes no more clicks.

``clicks`` in the results are these steps (rounds per volume); ``clicks_per_volume``
counts the user's clicks (propagated seeds are not the user's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_simseg.core.interaction.refinement import Refinement
from napari_simseg.core.interaction.virtual_user import EvaluationUser
from napari_simseg.core.session.interactive import InteractiveSession
from napari_simseg.core.session.propagation import SeedRule

__all__ = ["VolumeRun", "run_volume_protocol"]


@dataclass
class VolumeRun:
    """One volume under the volume protocol.

    Attributes
    ----------
    outputs : list of ndarray
        The ``(S, H, W)`` labels after 0, 1, ..., ``steps`` steps.
    clicks : list of int
        The user's clicks so far after each step (0 first).
    slices : list of int
        The slice corrected at each step (``-1``: nothing left to correct).
    propagated : list of int
        How many slices each step's propagation wrote.
    round_ms : list of float
        Each corrective round's time (network and session), in milliseconds.
    """

    outputs: list = field(default_factory=list)
    clicks: list = field(default_factory=list)
    slices: list = field(default_factory=list)
    propagated: list = field(default_factory=list)
    round_ms: list = field(default_factory=list)


def run_volume_protocol(session: InteractiveSession, gt: np.ndarray, steps: int,
                        user: EvaluationUser | None = None, rule: SeedRule | None = None,
                        on_step: Callable[[int, VolumeRun], None] | None = None) -> VolumeRun:
    """Run ``steps`` steps of the volume protocol on a fresh ``session``.

    Parameters
    ----------
    session : InteractiveSession
        A new session on the volume (no rounds yet).
    gt : ndarray
        ``(S, H, W)`` ground truth on the session's image grid (``(H, W)`` for a 2D image).
    steps : int
        Corrective rounds (each followed by a propagation).
    user : EvaluationUser, optional
        The virtual user (default: one for the session's classes).
    rule : SeedRule, optional
        The propagation's rule (default: :class:`SeedRule` ()).
    on_step : callable, optional
        ``on_step(k, run)`` after each step (0 included).
    """
    gt = np.asarray(gt)
    gt = gt[None] if gt.ndim == 2 else gt
    if gt.shape != tuple(session.shape):
        raise ValueError(f"ground truth of shape {gt.shape} does not fit the image {tuple(session.shape)}")
    user = user or EvaluationUser(session.n_classes)
    run = VolumeRun()
    session.predict_auto()
    run.outputs.append(session.labels.copy())
    run.clicks.append(0)
    if on_step is not None:
        on_step(0, run)
    for k in range(1, int(steps) + 1):
        errors = (session.labels != gt).sum(axis=(1, 2))
        z = int(np.argmax(errors))
        clicks = user.next_round(gt[z], session.labels[z]) if errors[z] else []
        if clicks:
            result = session.add_clicks(z, clicks)
            run.round_ms.append(result.total_ms)
            run.propagated.append(len(session.propagate(z, rule=rule).slices))
        else:
            run.propagated.append(0)
        run.slices.append(z if clicks else -1)
        run.clicks.append(run.clicks[-1] + len(clicks))
        run.outputs.append(session.labels.copy())
        if on_step is not None:
            on_step(k, run)
    return run


def volume_protocol_outputs(predictor, image: np.ndarray, gt: np.ndarray, steps: int, *,
                            honour_clicks: bool = True, decision_offsets: bool = True,
                            rule: SeedRule | None = None, refinement: Refinement | None = None) -> VolumeRun:
    """:func:`run_volume_protocol` on a raw ``(C, S, H, W)`` image (not normalised: the
    session normalises it as the plugin does) with ``predictor`` (a loaded Predictor);
    ``refinement``: the session's (default :class:`Refinement`)."""
    session = InteractiveSession(list(np.asarray(image)), predictor, honour_clicks=honour_clicks,
                                 decision_offsets=decision_offsets, refinement=refinement)
    return run_volume_protocol(session, gt, steps, rule=rule)


def clicks_summary(counts: Sequence[Sequence[int]], steps: Sequence[int]) -> dict:
    """Mean user clicks per volume after each of ``steps`` (``counts``: per volume, after 0..max steps)."""
    arr = np.asarray(counts, float)
    return {int(k): round(float(arr[:, k].mean()), 2) if arr.size else None for k in steps}
