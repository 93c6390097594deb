"""The segmentation network: a U-Net whose decoder can carry a convolutional LSTM.

``build_model(config)`` is the one factory. The encoder is any
segmentation-models-pytorch encoder (ResNet34 by default, random initialisation by
default: nothing is ever downloaded; a local weights file can be given). The decoder
mirrors smp's U-Net decoder (upsample, concatenate the skip, 3x3 conv-BN-ReLU) and
then, per stage,

* ``plain``: a second 3x3 conv-BN-ReLU (the standard U-Net block), or
* ``convlstm``: a convolutional LSTM cell (paper, section 5.1.1: "a standard
  convolutional layer and a matching convolutional LSTM layer at every step of the
  upsampling path").

How the recurrence runs (our reading of the paper)
--------------------------------------------------
The paper feeds the whole interaction memory as one ``1 + 2DN``-channel tensor and says
the RNN keeps an internal memory "by passing hidden states from step to step",
separate from the (external) interaction memory. We read a *step* as one interaction
round on one slice: every call of the network is one time step, the LSTM's hidden and
cell states of every decoder stage are returned with the logits and passed back in at
the next round of the same slice. A new slice, a reset or an automatic (zero-click)
prediction starts from zero states; undoing a round restores the states of the round
before. During DDG training the states flow through the ``D`` simulated rounds (under
no-grad) into the training step, detached. This costs one forward pass per round (no
unrolling over the ``D`` states inside a call), which keeps inference within about 2x of
a plain U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_simseg.core.imaging.transforms import Canvas

__all__ = [
    "DECODERS",
    "ConvLSTMCell",
    "ModelConfig",
    "ModelConfigError",
    "SimSegNet",
    "build_model",
]

DECODERS = ("convlstm", "plain")

# Per decoder stage: (hidden, cell) for convlstm; the whole tuple is the recurrent state.
RecurrentState = tuple[tuple[torch.Tensor, torch.Tensor], ...] | None


class ModelConfigError(ValueError):
    """An invalid model configuration."""


@dataclass
class ModelConfig:
    """Architecture of a SimSeg network.

    Parameters
    ----------
    in_channels : int
        Input channels (``1 + N`` for none/cim memories, ``1 + 2DN`` for SIM).
    n_classes : int
        Output logits N, background included.
    encoder : str
        Any segmentation-models-pytorch encoder name (default ``resnet34``).
    encoder_depth : int
        Encoder stages (3 to 5); inputs are padded to the encoder's total stride,
        ``2 ** encoder_depth`` (``2 ** (encoder_depth - 1)`` with ``encoder_stem_stride=1``).
    decoder : {"convlstm", "plain"}
        Decoder kind.
    decoder_channels : sequence of int
        Channels of each decoder stage, one per encoder stage.
    lstm_kernel_size : int
        Spatial kernel of the ConvLSTM gates convolution.
    lstm_separable : bool
        Compute the gates with a depthwise ``k x k`` convolution followed by a
        pointwise one (default) instead of one dense ``k x k`` convolution. The dense
        form costs about 8x a standard 3x3 layer per stage and makes the network
        ~2.5x slower than a plain U-Net on CPU; the separable one keeps it within 2x.
    encoder_stem_stride : {2, 1}
        Stride of the encoder's first convolution. ``2`` is the encoder as published.
        ``1`` keeps the stem's features at the input resolution, so the decoder gets a
        full-resolution skip (image and click maps seen at every pixel) and each later
        stage works at twice the usual resolution: for structures a few pixels wide
        (hippocampus slices are ~35x50), at ~2.6x the time per training step (measured
        on CPU, ResNet18 at 64x64). The parameters are the same, so weights move
        between the two settings.
    encoder_weights : str or None
        ``None`` (random initialisation) or the path of a local state-dict file
        (``.pth``/``.pt`` loaded with ``weights_only=True``, or ``.safetensors``) for the
        encoder. Names such as ``"imagenet"`` are refused: nothing is downloaded.
    edge_padded_channels : sequence of int, optional
        The input channels (the image's, context slices included) that a padded input
        (smaller than ``canvas`` or not a multiple of the stride) gets by repeating their
        border pixels; the others (click masks, probabilities) and every channel when None (the
        checkpoints made before this option) are padded with zeros, i.e. with the mean
        of a standardised image. Training pads its items the same way
        (``TrainConfig.pad_mode``): a network trained on crops never sees padding, and
        a band of mean grey beside black air at test time made it see structures there.
    canvas : (int, int), optional
        The ``(H, W)`` the network was trained on (training pads every item to one
        size): a smaller input is padded, centred, to it (then to the stride), so that
        a slice sits in the canvas it was trained in. None (checkpoints made before this
        option): padded to the stride only. Measured on the bundled model, whose 35 x 50
        hippocampus slices were trained in 64 x 64 and ran in 48 x 64 or 64 x 48:
        automatic Dice 0.812 / 0.820 -> 0.878 / 0.853 on 6 unseen volumes.
    """

    in_channels: int
    n_classes: int
    encoder: str = "resnet34"
    encoder_depth: int = 5
    decoder: str = "convlstm"
    decoder_channels: Sequence[int] = field(default_factory=lambda: (256, 128, 64, 32, 16))
    lstm_kernel_size: int = 3
    lstm_separable: bool = True
    encoder_stem_stride: int = 2
    encoder_weights: str | None = None
    edge_padded_channels: Sequence[int] | None = None
    canvas: Sequence[int] | None = None

    def validate(self) -> ModelConfig:
        from segmentation_models_pytorch.encoders import get_encoder_names

        if self.decoder not in DECODERS:
            raise ModelConfigError(
                f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}"
            )
        if self.in_channels < 1:
            raise ModelConfigError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.n_classes < 2:
            raise ModelConfigError(
                f"n_classes must be >= 2 (background + one class), got {self.n_classes}"
            )
        names = get_encoder_names()
        if self.encoder not in names:
            close = [n for n in names if self.encoder.split("_")[0] in n][:8]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ModelConfigError(f"unknown smp encoder {self.encoder!r}{hint}")
        if not 3 <= self.encoder_depth <= 5:
            raise ModelConfigError(f"encoder_depth must be 3..5, got {self.encoder_depth}")
        if len(self.decoder_channels) != self.encoder_depth:
            raise ModelConfigError(
                f"decoder_channels needs {self.encoder_depth} entries (one per encoder "
                f"stage), got {len(self.decoder_channels)}"
            )
        if self.lstm_kernel_size < 1 or self.lstm_kernel_size % 2 == 0:
            raise ModelConfigError(
                f"lstm_kernel_size must be odd and >= 1, got {self.lstm_kernel_size}"
            )
        if self.encoder_stem_stride not in (1, 2):
            raise ModelConfigError(
                f"encoder_stem_stride must be 1 or 2, got {self.encoder_stem_stride}"
            )
        edge = self.edge_padded_channels
        if edge is not None and (len(set(edge)) != len(edge) or not all(0 <= int(c) < self.in_channels for c in edge)):
            raise ModelConfigError(f"edge_padded_channels must be distinct channels of 0..{self.in_channels - 1}, "
                                   f"got {list(edge)}")
        if self.canvas is not None and (len(self.canvas) != 2 or not all(int(v) >= 1 for v in self.canvas)):
            raise ModelConfigError(f"canvas must be two sizes (H, W) >= 1, got {list(self.canvas)}")
        if self.encoder_weights is not None and not Path(str(self.encoder_weights)).is_file():
            raise ModelConfigError(
                f"encoder_weights must be None or a local weights file; {self.encoder_weights!r} "
                "is not a file (napari-simseg never downloads weights)"
            )
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = [int(c) for c in self.decoder_channels]
        if self.edge_padded_channels is None:
            del d["edge_padded_channels"]  # headers as before: older readers load them
        else:
            d["edge_padded_channels"] = [int(c) for c in self.edge_padded_channels]
        if self.canvas is None:
            del d["canvas"]
        else:
            d["canvas"] = [int(v) for v in self.canvas]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ModelConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "decoder_channels" in d:
            d["decoder_channels"] = tuple(int(c) for c in d["decoder_channels"])
        for key in ("edge_padded_channels", "canvas"):
            if d.get(key) is not None:
                d[key] = tuple(int(c) for c in d[key])
        return cls(**d)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015) with one fused gates convolution."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        separable: bool = True,
    ):
        super().__init__()
        self.hidden_channels = hidden_channels
        both = in_channels + hidden_channels
        pad = kernel_size // 2
        if separable and kernel_size > 1:
            # depthwise kxk then pointwise 1x1: the same receptive field for ~1/9 the cost
            spatial = nn.Conv2d(both, both, kernel_size, padding=pad, groups=both, bias=False)
            pointwise = nn.Conv2d(both, 4 * hidden_channels, 1)
            self.gates = nn.Sequential(spatial, pointwise)
            bias = pointwise.bias
        else:
            self.gates = nn.Conv2d(both, 4 * hidden_channels, kernel_size, padding=pad)
            bias = self.gates.bias
        with torch.no_grad():  # forget-gate bias 1: remember by default
            bias.zero_()
            bias[hidden_channels : 2 * hidden_channels] = 1.0

    def forward(self, x, state=None):
        h = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[2:]) if state is None else state[0]
        # the gates in plain (NCHW) layout: on a channels-last tensor the four gate slices
        # are strided and the element-wise work below runs ~2x slower on CPU
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).contiguous().chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        if state is not None:  # a zero cell state adds nothing
            c = c + torch.sigmoid(f) * state[1]
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class _DecoderStage(nn.Module):
    def __init__(self, in_ch, skip_ch, out_ch, recurrent: bool, lstm_kernel: int, separable: bool):
        super().__init__()
        from segmentation_models_pytorch.base.modules import Conv2dReLU

        self.conv1 = Conv2dReLU(in_ch + skip_ch, out_ch, kernel_size=3, padding=1)
        self.recurrent = recurrent
        if recurrent:
            self.lstm = ConvLSTMCell(out_ch, out_ch, lstm_kernel, separable)
        else:
            self.conv2 = Conv2dReLU(out_ch, out_ch, kernel_size=3, padding=1)

    def forward(self, x, size, skip, state):
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.conv1(x)
        if self.recurrent:
            return self.lstm(x, state)
        return self.conv2(x), None


class SimSegNet(nn.Module):
    """U-Net (smp encoder) with a plain or ConvLSTM decoder.

    ``forward(x, state=None)`` takes ``(B, C, H, W)`` of any ``H, W`` (padded to the
    encoder's stride and cropped back) and returns ``(logits (B, N, H, W), state)``;
    ``state`` is ``None`` for the plain decoder.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        config.validate()
        self.config = config
        self.encoder = get_encoder(
            config.encoder,
            in_channels=config.in_channels,
            depth=config.encoder_depth,
            weights=None,
        )
        if config.encoder_stem_stride == 1:
            _unstride_stem(self.encoder, config)
        self.stride = 2 ** (config.encoder_depth - (2 - config.encoder_stem_stride))
        edge = torch.zeros(1, config.in_channels, 1, 1, dtype=torch.bool)
        edge[0, list(config.edge_padded_channels or []), 0, 0] = True
        self._edge_padded = edge  # not a buffer: DistributedDataParallel would broadcast it
        self._pads_edge = bool(config.edge_padded_channels)
        if config.encoder_depth < 5:
            _drop_unused_children(self.encoder, config.in_channels, self.stride)
        if config.encoder_weights is not None:
            load_encoder_weights(self.encoder, config.encoder_weights)
        enc_ch = list(self.encoder.out_channels)[1:][::-1]  # deepest first
        dec_ch = [int(c) for c in config.decoder_channels]
        in_chs = [enc_ch[0]] + dec_ch[:-1]
        skip_chs = enc_ch[1:] + [0]
        recurrent = config.decoder == "convlstm"
        self.stages = nn.ModuleList(
            _DecoderStage(i, s, o, recurrent, config.lstm_kernel_size, config.lstm_separable)
            for i, s, o in zip(in_chs, skip_chs, dec_ch)
        )
        self.head = nn.Conv2d(dec_ch[-1], config.n_classes, kernel_size=3, padding=1)

    @property
    def recurrent(self) -> bool:
        return self.config.decoder == "convlstm"

    def _channels_last(self) -> bool:
        """Whether the network was put in channels-last memory format (its inputs follow)."""
        first = self.head.weight
        return first.ndim == 4 and first.is_contiguous(memory_format=torch.channels_last) \
            and not first.is_contiguous()

    def activation_floats_per_pixel(self) -> float:
        """The floats every layer's output takes per input pixel, summed (measured once on
        a small input): an upper bound of what one image's forward pass holds at once."""
        if getattr(self, "_floats_per_pixel", None) is None:
            total = [0]

            def count(module, inputs, output):
                outputs = output if isinstance(output, tuple) else (output,)
                total[0] += sum(t.numel() for t in outputs if torch.is_tensor(t))

            leaves = [m for m in self.modules() if not list(m.children())]
            hooks = [m.register_forward_hook(count) for m in leaves]
            size = 2 * self.stride
            try:
                with torch.no_grad():
                    was_training = self.training
                    self.eval()
                    weight = next(self.parameters())  # the network's own device (a CUDA one too)
                    self(torch.zeros(1, self.config.in_channels, size, size, device=weight.device))
                    self.train(was_training)
            finally:
                for h in hooks:
                    h.remove()
            self._floats_per_pixel = total[0] / (size * size)
        return self._floats_per_pixel

    def forward(self, x: torch.Tensor, state: RecurrentState = None):
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        # centred, as the trainer pads slices, to the training canvas (rounded up to the
        # stride): the network then sees a slice where it saw it in training
        canvas = Canvas(x.shape[-2:], self.config.canvas, self.stride)
        if not canvas.identity:
            if self._pads_edge:
                if self._edge_padded.device != x.device:  # moved once, not every forward
                    self._edge_padded = self._edge_padded.to(x.device)
                x = torch.where(self._edge_padded, canvas.transform(x, "edge"), canvas.transform(x))
            else:
                x = canvas.transform(x)
        if state is not None:
            expected = (x.shape[0], self.stages[0].lstm.hidden_channels)
            got = tuple(state[0][0].shape[:2])
            if len(state) != len(self.stages) or got != expected:
                raise ValueError("recurrent state does not match this input; reset the memory")
        if self._channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.encoder(x)
        sizes = [f.shape[-2:] for f in features][::-1]
        skips = features[1:][::-1]
        y = skips[0]
        new_state = []
        for i, stage in enumerate(self.stages):
            skip = skips[i + 1] if i + 1 < len(skips) else None
            y, s = stage(y, sizes[i + 1], skip, None if state is None else state[i])
            new_state.append(s)
        logits = canvas.inverse(self.head(y))
        return logits, (tuple(new_state) if self.recurrent else None)


def _unstride_stem(encoder: nn.Module, config: ModelConfig) -> None:
    """Give the encoder's first convolution stride 1 (``encoder_stem_stride=1``).

    Checked on a dummy input: the first feature map must then have the input's size,
    otherwise the encoder has no single strided stem and the option is refused.
    """
    first = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or tuple(first.stride) != (2, 2):
        raise ModelConfigError(
            f"encoder_stem_stride=1 needs an encoder whose first convolution has stride 2; "
            f"{config.encoder!r} has none (use encoder_stem_stride=2)"
        )
    first.stride = (1, 1)
    size = 2 ** config.encoder_depth
    with torch.no_grad():
        encoder.eval()
        feats = encoder(torch.zeros(1, config.in_channels, size, size))
        encoder.train()
    if len(feats) < 2 or tuple(feats[1].shape[-2:]) != (size, size):
        raise ModelConfigError(
            f"encoder_stem_stride=1 is not supported for {config.encoder!r}: its first "
            "stage does not follow the stem's stride (use encoder_stem_stride=2)"
        )


def _drop_unused_children(encoder: nn.Module, in_channels: int, stride: int) -> None:
    """Remove encoder stages a shallow encoder never runs.

    smp keeps e.g. ResNet's ``layer3``/``layer4`` at ``depth=3``; unused parameters
    waste memory and break DistributedDataParallel's gradient reduction.
    """
    called = set()
    hooks = [
        child.register_forward_hook(lambda m, i, o, name=name: called.add(name))
        for name, child in encoder.named_children()
    ]
    try:
        with torch.no_grad():
            encoder.eval()
            encoder(torch.zeros(1, in_channels, 2 * stride, 2 * stride))
            encoder.train()
    finally:
        for h in hooks:
            h.remove()
    for name, child in list(encoder.named_children()):
        if name not in called and any(True for _ in child.parameters()):
            setattr(encoder, name, nn.Identity())


def load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Load a local encoder state dict, adapting the first convolution's input channels.

    A first convolution stored for 3 channels (ImageNet) is adapted to the model's
    channel count the way smp does it: the mean over the stored channels, tiled and
    rescaled. Other mismatches are an error naming the tensors.
    """
    path = str(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - summarise any loader failure in one line
        raise ModelConfigError(f"cannot read encoder weights {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = encoder.state_dict()
    pruned = {n for n, c in encoder.named_children() if isinstance(c, nn.Identity)}
    state = {
        k: v for k, v in state.items() if not k.startswith("fc.") and k.split(".")[0] not in pruned
    }
    for key, value in list(state.items()):
        if key in own and value.ndim == 4 and own[key].shape != value.shape:
            target = own[key]
            if value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
                c = target.shape[1]
                mean = value.mean(dim=1, keepdim=True)
                state[key] = mean.repeat(1, c, 1, 1) * (value.shape[1] / c)
    bad = [k for k in own if k not in state and not k.startswith("fc.")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad or unexpected or wrong:
        raise ModelConfigError(
            f"encoder weights {path} do not fit this encoder: missing {bad[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}"
        )
    # smp encoders override load_state_dict (they drop "fc." keys) and return nothing
    encoder.load_state_dict(state)


def build_model(config: ModelConfig | dict) -> SimSegNet:
    """Build a SimSeg network from a :class:`ModelConfig` (or a dict of its fields)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return SimSegNet(config)
