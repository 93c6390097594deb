"""The options of a training run: :class:`TrainConfig`, one YAML key and one CLI flag each."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from napari_simseg.core.imaging.preprocessing import PAD_MODES
from napari_simseg.core.interaction.memory import MEMORY_KINDS, image_channel_indices, input_channels
from napari_simseg.core.network.checkpoint import FLIP_AXES, MAX_SIDE
from napari_simseg.core.network.model import ModelConfig

__all__ = ["CLASS_WEIGHTINGS", "IGNORE_INDEX", "LR_SCHEDULES", "SIMULATIONS", "TrainConfig"]

SIMULATIONS = ("ddg", "sdg", "auto")
LR_SCHEDULES = ("constant", "cosine", "onecycle")
CLASS_WEIGHTINGS = ("inverse_sqrt_frequency", "inverse_frequency", "median_frequency", "uniform")
IGNORE_INDEX = -100  # padded pixels in the training targets


def _as_float(value) -> float:
    """``value`` as a float (YAML and CLI give text too); NaN when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a YAML key and a CLI option."""

    data: str = ""
    out: str = ""
    # system
    memory: str = "sim"
    depth: int = 3
    decoder: str = "convlstm"
    simulation: str = "ddg"
    # network
    encoder: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: list = field(default_factory=lambda: [256, 128, 64, 32, 16])
    lstm_kernel_size: int = 3
    lstm_separable: bool = True
    encoder_stem_stride: int = 2
    encoder_weights: str | None = None
    init_from: str | None = None
    init_transfer: bool = False
    # virtual user
    click_radius: int = 2
    max_clicks: int = 3
    max_clicks_per_component: int = 3
    drop_class: bool = True
    drop_fraction: float = 0.8
    decreasing_probability: bool = True
    ddg_rounds: int | None = None
    random_rounds: bool = True
    mix_rounds: bool = False  # rounds (and auto_fraction) drawn per item, not per batch
    prior_fraction: float = 0.0  # items whose memory starts with a neighbouring slice's labels (propagation)
    corrective_start_fraction: float = 0.0  # items whose first clicks correct the automatic result (as at test time)
    clicked_region_weight: float = 0.0  # extra loss weight on the mislabelled regions the last round's clicks point at
    auto_fraction: float = 0.0
    # data
    axis: int = 0
    train_axes: list | None = None
    context_slices: int = 0
    pad_to: list | None = None
    pad_mode: str = "edge"  # image padding of items and inputs: border pixels repeated ("constant": mean grey)
    n4: bool = False
    on_error: str = "stop"
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    max_volumes: int | None = None
    max_empty_fraction: float | None = None  # training slices without any structure: at most this share
    augment: bool = True
    aug_rotate_degrees: float = 0.0
    aug_scale: list | None = None
    aug_flips: list = field(default_factory=lambda: ["vertical", "horizontal"])
    working_size: int | None = None
    crop_size: int | None = None
    val_max_slices: int | None = None
    # optimisation
    epochs: int = 75
    batch_size: int = 4
    lr: float = 5e-5
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.02
    focal_gamma: float = 2.0
    dice_loss_weight: float = 0.0
    ema_decay: float = 0.0
    class_weighting: str = "inverse_sqrt_frequency"
    max_minutes: float | None = None
    stop_after_epoch: int | None = None
    steps_per_epoch: int | None = None
    plan_steps: bool = False
    time_schedule: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    resume: bool = False
    val_clicks: int = 3
    val_batch_size: int = 32
    half_checkpoint: bool = False
    progress: bool = True

    def _check_simulation_options(self) -> None:
        """The options of the simulated rounds (neighbour priors, corrective starts, the
        clicked-region loss): numbers in range, and the simulation each needs."""
        prior = _as_float(self.prior_fraction)
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"prior_fraction must be a number in [0, 1], got {self.prior_fraction!r}")
        self.prior_fraction = prior
        if prior > 0 and not (self.memory == "sim" and self.simulation == "ddg" and self.mix_rounds):
            raise ValueError("prior_fraction needs memory 'sim', simulation 'ddg' and mix_rounds: the prior is a "
                             "SIM state (probability maps) given per item")
        corrective = _as_float(self.corrective_start_fraction)
        if not 0.0 <= corrective <= 1.0:
            raise ValueError(f"corrective_start_fraction must be a number in [0, 1], "
                             f"got {self.corrective_start_fraction!r}")
        self.corrective_start_fraction = corrective
        if corrective > 0 and not (self.simulation == "ddg" and self.mix_rounds):
            raise ValueError("corrective_start_fraction needs simulation 'ddg' and mix_rounds: the automatic "
                             "result the first clicks correct is drawn per item")
        clicked = _as_float(self.clicked_region_weight)
        if not clicked >= 0.0:
            raise ValueError(f"clicked_region_weight must be a number >= 0, got {self.clicked_region_weight!r}")
        self.clicked_region_weight = clicked
        if clicked > 0 and self.simulation != "ddg":
            raise ValueError("clicked_region_weight needs simulation 'ddg': only its rounds click on the network's "
                             "own errors")

    def validate(self) -> TrainConfig:
        if not self.data:
            raise ValueError("no data folder given (--data DIR)")
        if not self.out:
            raise ValueError("no output folder given (--out DIR)")
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {self.memory!r}")
        if self.simulation not in SIMULATIONS:
            raise ValueError(f"simulation must be one of {SIMULATIONS}, got {self.simulation!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ValueError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {self.class_weighting!r}")
        flips = list(self.aug_flips or [])
        if any(f not in FLIP_AXES for f in flips) or len(set(flips)) != len(flips):
            raise ValueError(f"aug_flips must be distinct entries out of {list(FLIP_AXES)} (or empty), "
                             f"got {self.aug_flips!r}")
        self.aug_flips = flips
        for name in ("working_size", "crop_size", "val_max_slices"):
            value = getattr(self, name)
            top = None if name == "val_max_slices" else MAX_SIDE  # a checkpoint's canvas holds at most that
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 16
                                      or (top is not None and value > top)):
                bounds = ">= 16" if top is None else f"16..{top}"
                raise ValueError(f"{name} must be an integer {bounds} (or null), got {value!r}")
        if (self.plan_steps or self.time_schedule) and self.max_minutes is None:
            raise ValueError("plan_steps and time_schedule size the schedule to max_minutes: give --max-minutes too")
        if self.stop_after_epoch is not None and self.stop_after_epoch < 1:
            raise ValueError(f"stop_after_epoch must be >= 1, got {self.stop_after_epoch}")
        if self.max_volumes is not None and (isinstance(self.max_volumes, bool) or not isinstance(self.max_volumes, int)
                                             or self.max_volumes < 2):
            raise ValueError(f"max_volumes must be an integer >= 2 (a training and a validation case; null: every "
                             f"case), got {self.max_volumes!r}")
        if not 0.0 <= float(self.aug_rotate_degrees) <= 180.0:
            raise ValueError(f"aug_rotate_degrees must be in [0, 180], got {self.aug_rotate_degrees}")
        if self.aug_scale is not None:
            sc = list(self.aug_scale)
            if len(sc) != 2 or not 0 < float(sc[0]) <= float(sc[1]):
                raise ValueError(f"aug_scale must be [low, high] zoom factors with 0 < low <= high, "
                                 f"got {self.aug_scale}")
            self.aug_scale = [float(v) for v in sc]
        dice_weight = _as_float(self.dice_loss_weight)
        if not (np.isfinite(dice_weight) and dice_weight >= 0):
            raise ValueError(f"dice_loss_weight must be a number >= 0 (0: the paper's focal loss "
                             f"alone), got {self.dice_loss_weight!r}")
        self.dice_loss_weight = dice_weight
        ema_decay = _as_float(self.ema_decay)
        if not 0.0 <= ema_decay < 1.0:  # also refuses NaN
            raise ValueError(f"ema_decay must be a number in [0, 1) (0: no averaging; e.g. 0.999 "
                             f"averages over the last ~1000 steps), got {self.ema_decay!r}")
        self.ema_decay = ema_decay
        if self.max_empty_fraction is not None:
            empty = _as_float(self.max_empty_fraction)
            if not 0.0 <= empty < 1.0:
                raise ValueError(f"max_empty_fraction must be a number in [0, 1) (null: every slice), "
                                 f"got {self.max_empty_fraction!r}")
            self.max_empty_fraction = empty
        self._check_simulation_options()
        if not 0.0 <= self.auto_fraction <= 1.0:
            raise ValueError(f"auto_fraction must be in [0, 1], got {self.auto_fraction}")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}")
        if self.train_axes is not None:
            axes = list(self.train_axes)
            if (not axes or any(isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= 2 for a in axes)
                    or len(set(axes)) != len(axes) or self.axis not in axes):
                raise ValueError(f"train_axes must be distinct axes out of 0, 1, 2 that include axis "
                                 f"{self.axis} (the one validation and the checkpoint use), e.g. "
                                 f"[0, 1, 2]; got {self.train_axes!r}")
            self.train_axes = axes
        if isinstance(self.context_slices, bool) or not isinstance(self.context_slices, int) \
                or self.context_slices < 0:
            raise ValueError(f"context_slices must be an integer >= 0, got {self.context_slices!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def effective_depth(self) -> int:
        return self.depth if self.memory == "sim" else 1

    def model_config(self, n_classes: int, n_channels: int = 1) -> ModelConfig:
        return ModelConfig(
            in_channels=input_channels(self.memory, n_classes, self.effective_depth, self.context_slices,
                                       n_channels),
            n_classes=n_classes,
            encoder=self.encoder,
            encoder_depth=self.encoder_depth,
            decoder=self.decoder,
            decoder_channels=tuple(self.decoder_channels),
            lstm_kernel_size=self.lstm_kernel_size,
            lstm_separable=self.lstm_separable,
            encoder_stem_stride=self.encoder_stem_stride,
            encoder_weights=self.encoder_weights,
            edge_padded_channels=None if self.pad_mode == "constant" else tuple(image_channel_indices(
                self.memory, n_classes, self.effective_depth, self.context_slices, n_channels)),
        )

    def learning_rate(self, epoch: int, progress: float = 0.0) -> float:
        """Learning rate of 0-based ``epoch`` (``progress``: the fraction of it done).

        ``constant``: ``lr`` throughout. ``cosine``: a half cosine from ``lr`` in the
        first epoch to ``lr * lr_final_fraction`` in the last one, set per epoch.
        ``onecycle``: a linear warm-up over the first 5 % of all steps, then a half
        cosine to ``lr * lr_final_fraction`` at the last step, set per step (fast
        training at a high rate). Both depend only on the position in the run, so a
        resumed run follows the same curve.
        """
        if self.lr_schedule == "onecycle":
            t = min(max((epoch + progress) / max(self.epochs, 1), 0.0), 1.0)
            final = self.lr * self.lr_final_fraction
            if t < 0.05:
                return float(self.lr * max(t / 0.05, 0.02))
            u = (t - 0.05) / 0.95
            return float(final + 0.5 * (self.lr - final) * (1.0 + math.cos(math.pi * u)))
        if self.lr_schedule == "constant" or self.epochs <= 1:
            return float(self.lr)
        t = min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        final = self.lr * self.lr_final_fraction
        return float(final + 0.5 * (self.lr - final) * (1.0 + math.cos(math.pi * t)))

    def augmenter(self):
        """The training augmentation these options ask for (``None`` without ``augment``)."""
        from napari_simseg.core.data.augmentation import Augmenter

        if not self.augment:
            return None
        return Augmenter(rotate_degrees=self.aug_rotate_degrees,
                         scale=None if self.aug_scale is None else tuple(self.aug_scale),
                         flip_vertical="vertical" in self.aug_flips, flip_horizontal="horizontal" in self.aug_flips)

    def ddg_config(self):
        from napari_simseg.core.interaction.virtual_user import DDGConfig

        return DDGConfig(
            max_rounds=self.max_clicks,
            max_clicks_per_component=self.max_clicks_per_component,
            drop_class=self.drop_class,
            drop_fraction=self.drop_fraction,
            decreasing_probability=self.decreasing_probability,
        )
