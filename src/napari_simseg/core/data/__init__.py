"""Labelled data on disk to training slices: layouts, cases, splits, augmentation, slice
datasets, and synthetic data sets.

Layer 5. ``layouts`` recognises MSD, nnU-Net v2, images/labels and images/masks folders;
``datasets`` reads and checks a case and loads it preprocessed; ``splits`` makes and
stores train / val / test splits; ``augmentation`` is the ``Augmenter``; ``slices`` are the
torch slice datasets; ``phantom`` writes synthetic data sets.
"""
