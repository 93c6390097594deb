"""Channel layers found by name: a channel's name as a word of the layer's name first,
so that BraTS-like "t1" and "t1ce" layers are told apart, and "red" does not fit
"predicted"."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from napari.layers import Image

from napari_simseg.annotator.layers import match_channel_layers


def _viewer(*names):
    return SimpleNamespace(layers=[Image(np.zeros((4, 5)), name=n) for n in names])


def test_a_channel_name_as_a_word_tells_t1_from_t1ce():
    viewer = _viewer("BraTS_001_t1ce", "BraTS_001_t1", "BraTS_001_flair", "BraTS_001_t2")
    found = match_channel_layers(viewer, ["t1", "t1ce", "t2", "flair"])
    assert [la.name for la in found] == ["BraTS_001_t1", "BraTS_001_t1ce", "BraTS_001_t2", "BraTS_001_flair"]


def test_words_before_substrings_and_none_where_ambiguous():
    viewer = _viewer("predicted map", "scan red", "scan green", "scanblue")
    found = match_channel_layers(viewer, ["red", "green", "blue"])
    assert [la.name for la in found] == ["scan red", "scan green", "scanblue"]  # substring as a fallback
    assert match_channel_layers(_viewer("a T2 one", "b T2 two"), ["T2"]) == [None]  # two fit: none chosen
