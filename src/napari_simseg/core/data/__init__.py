"""Labelled data on disk to training slices: layouts, cases, splits, augmentation, slice
datasets, and synthetic data sets.

Layer 5. ``cases`` holds what a data set is made of (``Case``, ``DatasetSpec``, the
errors); ``layouts`` recognises MSD, nnU-Net v2, images/labels and images/masks folders;
``class_lists`` reads (or infers) their class names; ``reading`` reads and checks a case,
every problem by file; ``datasets`` loads a case preprocessed and documents the layouts;
``splits`` makes and stores train / val / test splits; ``augmentation`` is the
``Augmenter``; ``slices`` are the torch slice datasets (``SliceOptions``); ``phantom``
writes synthetic data sets.
"""
