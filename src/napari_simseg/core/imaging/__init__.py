"""Pixel arrays, no torch: image checks and normalisation, slicing, padding, resampling, the
regions a round runs on, and the metrics.

Layer 1: imports only :mod:`napari_simseg.core.io`. ``preprocessing`` checks and
normalises images, cuts slices and 2.5D context stacks, resamples to the working size and
pads; ``transforms`` holds the geometry transforms (working size, focus crop, canvas,
flips), each with ``transform`` and ``inverse``; ``regions`` picks the part of a large
slice a round runs on and the tiles of automatic mode; ``metrics`` computes Dice, IoU and
NoC.
"""
