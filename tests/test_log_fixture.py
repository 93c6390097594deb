"""An interaction log saved before the redesign (tests/fixtures, made with commit 3f55e71)
loads and replays with today's code: the same labels, probabilities to float rounding
(oneDNN picks its convolution kernels by the CPU's instruction set, so another CPU, or
the channels-last layout, sums in another order), and on one machine bit for bit from
one replay to the next."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_simseg.core.io.images import read_image
from napari_simseg.core.io.resources import SAMPLE_DIR

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("channels_last", [False, True])
def test_pre_redesign_log_replays(channels_last):
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession, replay_log

    volume = read_image(SAMPLE_DIR / "images" / "hippocampus_015.nii.gz").array
    expected = np.load(FIXTURES / "pre_redesign_expected.npz")
    predictor = Predictor("demo", device="cpu", channels_last=channels_last)
    predictor.network.config.canvas = None  # the network as the log was made: padded to the stride only
    session = InteractiveSession(volume, predictor)
    replay_log(session, FIXTURES / "pre_redesign.simseg.json")
    np.testing.assert_array_equal(session.get_labels(), expected["labels"])
    again = InteractiveSession(volume, predictor)
    replay_log(again, FIXTURES / "pre_redesign.simseg.json")
    for z in (12, 14, 18):
        probs = session.memory(z).last.probabilities
        np.testing.assert_allclose(probs, expected[f"probs{z}"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(again.memory(z).last.probabilities, probs)
    # the replayed session keeps the undo history of the log: slice 14's undone round redoes
    assert session.memory(14).can_redo and session.n_rounds(14) == 1
    assert session.n_rounds(16) == 0 and session.n_rounds(12) == 2
