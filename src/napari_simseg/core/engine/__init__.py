"""The machinery shared by training, evaluation and calibration: the batched interaction
rounds, the losses, a training run's options, one DDG / SDG training batch, the
non-learning baselines.

Layer 6. ``rounds`` runs the virtual user's rounds on a batch; ``losses`` is focal + soft
Dice; ``train_config`` is :class:`TrainConfig`; ``data_generation`` fills the memory of one
training batch and takes the step; ``baselines`` are the random walker and GrabCut.
"""
