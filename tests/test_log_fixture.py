"""An interaction log saved before the redesign (tests/fixtures, made with commit 3f55e71)
loads and replays bit for bit with today's code (in the tensor layout of that time; the
CPU's default channels-last layout gives the same labels, probabilities to float rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_simseg.core.io import read_image
from napari_simseg.core.resources import SAMPLE_DIR

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("channels_last", [False, True])
def test_pre_redesign_log_replays_bit_for_bit(channels_last):
    from napari_simseg.core.predictor import Predictor
    from napari_simseg.core.session import InteractiveSession, replay_log

    volume = read_image(SAMPLE_DIR / "images" / "hippocampus_015.nii.gz").array
    expected = np.load(FIXTURES / "pre_redesign_expected.npz")
    session = InteractiveSession(volume, Predictor("demo", device="cpu", channels_last=channels_last))
    replay_log(session, FIXTURES / "pre_redesign.simseg.json")
    np.testing.assert_array_equal(session.get_labels(), expected["labels"])
    for z in (12, 14, 18):
        probs = session.memory(z).last.probabilities
        if channels_last:  # other summation order in the convolutions
            np.testing.assert_allclose(probs, expected[f"probs{z}"], rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(probs, expected[f"probs{z}"])
    # the replayed session keeps the undo history of the log: slice 14's undone round redoes
    assert session.memory(14).can_redo and session.n_rounds(14) == 1
    assert session.n_rounds(16) == 0 and session.n_rounds(12) == 2
