"""The one way a checkpoint becomes a running network: :class:`Predictor`.

The session, the evaluation, the calibration and the widget all load networks here;
flip averaging (:class:`FlipEnsemble`) is part of the predictor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from napari_simseg.core.imaging.regions import TILE_BATCH_BYTES
from napari_simseg.core.imaging.transforms import Flip
from napari_simseg.core.io.resources import resolve_checkpoint
from napari_simseg.core.network.checkpoint import Checkpoint, load_checkpoint
from napari_simseg.core.network.devices import autocast_for, check_memory, resolve_device
from napari_simseg.core.network.model import ModelConfig, RecurrentState

__all__ = ["FlipEnsemble", "Predictor"]


class FlipEnsemble(nn.Module):
    """Test-time augmentation: a network averaged over the four flips of its input.

    ``forward(x, state)`` runs ``net`` once on a batch holding ``x``, ``x`` flipped
    left-right, up-down and both, flips the outputs back and averages the class
    probabilities; it returns their logarithm as logits (so that ``softmax`` gives the
    averaged probabilities exactly). The recurrent state is that of the ``4B`` flipped
    images, so the ConvLSTM of each flip sees its own history: it is a state like any
    other to the session, which stores and restores it without looking inside. Memory
    inputs (clicks, earlier probabilities) are flipped with the image. The network was
    trained with random flips, so its flipped predictions are as good as its plain ones;
    the average removes part of their independent errors at 4x the compute.

    Inputs of more than :attr:`ONE_CALL_PIXELS` pixels over all views (a round on a
    large region) run one view at a time, with the same result and state: the peak
    memory is that of one view, not four.

    Parameters
    ----------
    net : SimSegNet
    flips : sequence of {"vertical", "horizontal"}
        The flips to average over: those the network was trained with (a network
        trained without horizontal flips, e.g. for left and right lungs as two classes,
        must not be averaged over them). Default both: the four views.
    """

    FLIPS = (Flip(), Flip(horizontal=True), Flip(vertical=True), Flip(vertical=True, horizontal=True))
    ONE_CALL_PIXELS = 2**20  # views x batch x height x width run in one network call, at most
    _DIMS = {"vertical": -2, "horizontal": -1}

    def __init__(self, net: nn.Module, flips: Sequence[str] = ("vertical", "horizontal")):
        super().__init__()
        self.net = net
        allowed = {self._DIMS[f] for f in flips}
        self.flips = tuple(f for f in self.FLIPS if set(f.axes) <= allowed)

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def recurrent(self) -> bool:
        return self.net.recurrent

    def one_view_at_a_time(self, batch: int, height: int, width: int) -> bool:
        """Whether a call on ``batch`` inputs of ``height x width`` runs its views one by one."""
        return len(self.flips) > 1 and len(self.flips) * batch * height * width > self.ONE_CALL_PIXELS

    def forward(self, x: torch.Tensor, state: RecurrentState = None):
        b = x.shape[0]
        if self.one_view_at_a_time(b, *x.shape[-2:]):
            return self._forward_view_by_view(x, state)
        views = torch.cat([f.transform(x) for f in self.flips], dim=0)
        logits, new_state = self.net(views, state)
        probs = torch.softmax(logits.float(), dim=1)
        mean = sum(f.inverse(p) for p, f in zip(probs.split(b), self.flips)) / len(self.flips)
        return torch.log(mean.clamp_min(1e-12)), new_state

    def _forward_view_by_view(self, x: torch.Tensor, state: RecurrentState):
        """:meth:`forward` with one network call per view; the state keeps the views'
        order (view ``k`` holds batch rows ``k*B .. (k+1)*B``)."""
        b = x.shape[0]
        mean, states = 0, []
        for k, f in enumerate(self.flips):
            own = None if state is None else tuple((h[k * b:(k + 1) * b], c[k * b:(k + 1) * b]) for h, c in state)
            logits, new = self.net(f.transform(x), own)
            probs = torch.softmax(logits.float(), dim=1)
            mean = mean + f.inverse(probs)
            states.append(new)
        mean = mean / len(self.flips)
        new_state = None if states[0] is None else tuple(
            (torch.cat([s[i][0] for s in states]), torch.cat([s[i][1] for s in states])) for i in range(len(states[0])))
        return torch.log(mean.clamp_min(1e-12)), new_state


class Predictor:
    """A loaded network ready to predict slices.

    Parameters
    ----------
    checkpoint : str, Path or Checkpoint
        Loaded once, here. ``"demo"`` names the bundled demo model.
    device : str
        ``auto`` (default), ``cpu``, ``cuda`` or ``mps``.
    amp : bool
        Mixed precision (float16 autocast) on CUDA; ignored elsewhere.
    tta : bool
        Average the network over the flips of each input it was trained with
        (:class:`FlipEnsemble`; all four views for a network trained with both flips):
        measurably better labels on the demo data at 4x the compute per round.
        ``False``, or a network trained without flips, runs the network once.
    channels_last : bool, optional
        Run the network on channels-last tensors (default: on the CPU, where its
        convolutions are 10-20 % faster; the probabilities differ from the contiguous
        layout's by float rounding, about 1e-7).
    expected_classes : sequence of str, optional
        The class names the caller works with (a data set's, an existing labels
        layer's); a checkpoint trained for other classes is refused with a
        :class:`~napari_simseg.core.network.checkpoint.CheckpointError`.

    Attributes
    ----------
    model : torch.nn.Module
        The network as run: the :class:`FlipEnsemble` with ``tta``, else the network.
    network : SimSegNet
        The bare network, on :attr:`device`, in eval mode.
    """

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        device: str = "auto",
        amp: bool = True,
        tta: bool = True,
        expected_classes: Sequence[str] | None = None,
        channels_last: bool | None = None,
    ):
        self.device = resolve_device(device)  # an unavailable device fails before the load
        if isinstance(checkpoint, Checkpoint):
            ckpt = checkpoint
            if expected_classes is not None and list(expected_classes) != list(ckpt.meta.class_names):
                from napari_simseg.core.network.checkpoint import CheckpointError

                raise CheckpointError(
                    f"{ckpt.path}: trained for classes {list(ckpt.meta.class_names)}, but "
                    f"{list(expected_classes)} are expected; pick a checkpoint trained on these classes"
                )
        else:
            ckpt = load_checkpoint(resolve_checkpoint(checkpoint), expected_classes=expected_classes)
        self.checkpoint = ckpt
        self.meta = ckpt.meta
        self.network = ckpt.model.to(self.device).eval()
        # CPU convolutions run 10-20 % faster on channels-last tensors (same labels)
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        self.tta = bool(tta) and bool(self.meta.trained_flips)
        self.model = FlipEnsemble(self.network, self.meta.trained_flips).eval() if self.tta else self.network
        self.amp = bool(amp) and self.device.type == "cuda"
        # time of the last network call: all four views with flip averaging, one without
        self.last_forward_ms = float("nan")

    # convenience views of the metadata
    @property
    def class_names(self) -> list:
        return list(self.meta.class_names)

    @property
    def n_classes(self) -> int:
        return self.meta.n_classes

    @property
    def memory_kind(self) -> str:
        return self.meta.memory

    @property
    def depth(self) -> int:
        return self.meta.depth

    @property
    def context_slices(self) -> int:
        """Neighbouring slices on each side the network sees (0: the slice alone)."""
        return int(self.meta.context_slices)

    @property
    def channel_names(self) -> list:
        """The image channels (modalities) the network reads, in order."""
        return list(self.meta.channel_names)

    @property
    def n_channels(self) -> int:
        return self.meta.n_channels

    @property
    def working_size(self):
        """Longest slice side the network works at (None: every slice at its own resolution)."""
        return self.meta.working_size

    @property
    def click_radius(self) -> int:
        return self.meta.click_radius

    @property
    def in_channels(self) -> int:
        return self.meta.model_config.in_channels

    @property
    def recurrent(self) -> bool:
        return self.model.recurrent

    def _autocast(self):
        return autocast_for(self.device, self.amp)

    def predict_tensor(self, x: torch.Tensor, state=None):
        """Run the network on a ``(B, C, H, W)`` tensor; returns (probabilities tensor, state)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            self._sync()
            t0 = time.perf_counter()
            logits, new_state = self.model(x, state)
            self._sync()
            self.last_forward_ms = (time.perf_counter() - t0) * 1e3
            probs = torch.softmax(logits.float(), dim=1)
        return probs, new_state

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict(self, inputs: np.ndarray, state=None):
        """Predict one slice ``(C, H, W)`` or a batch ``(B, C, H, W)``.

        Parameters
        ----------
        inputs : ndarray
            Network input(s) built by an interaction memory.
        state : recurrent state or None
            The ConvLSTM state of the previous round of these slices (None = fresh).

        Returns
        -------
        probabilities : ndarray, float32
            ``(N, H, W)`` or ``(B, N, H, W)``, summing to 1 over classes.
        state : recurrent state or None
            To pass back in at the next round of the same slice(s).
        """
        arr = np.asarray(inputs, dtype=np.float32)
        single = arr.ndim == 3
        if single:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1] != self.in_channels:
            raise ValueError(
                f"network input must be (C, H, W) or (B, C, H, W) with C={self.in_channels}, "
                f"got {np.asarray(inputs).shape}"
            )
        self.check_memory(arr.shape[0], arr.shape[-2], arr.shape[-1])
        probs, new_state = self.predict_tensor(torch.from_numpy(arr), state)
        out = probs.cpu().numpy()
        return (out[0] if single else out), new_state

    @property
    def views(self) -> int:
        """How many views of each input one call runs (the flips averaged over, or 1)."""
        return len(self.model.flips) if isinstance(self.model, FlipEnsemble) else 1

    def required_bytes(self, batch: int, height: int, width: int) -> int:
        """About the memory one call on ``batch`` inputs of ``height x width`` takes.

        Half the sum of every layer's output (measured: a forward pass holds about 0.37
        of it at its peak), for every view, plus the input and the output.
        """
        at_once = self.views
        if isinstance(self.model, FlipEnsemble) and self.model.one_view_at_a_time(batch, height, width):
            at_once = 1
        floats = 0.5 * self.network.activation_floats_per_pixel() * at_once
        floats += self.in_channels + 2 * self.n_classes
        return int(4 * floats * batch * height * width)

    def batch_for(self, requested: int, height: int, width: int, budget: int = TILE_BATCH_BYTES) -> int:
        """How many ``height x width`` inputs one call may take: at most ``requested``, as
        many as ``budget`` bytes hold (:meth:`required_bytes`), at least one."""
        lo, hi = 1, max(1, int(requested))
        while lo < hi:  # the largest batch that fits (required_bytes grows with the batch)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.required_bytes(mid, height, width) <= budget else (lo, mid - 1)
        return lo

    def check_memory(self, batch: int, height: int, width: int) -> None:
        """Refuse a call that would not fit in memory
        (:class:`~napari_simseg.core.network.devices.MemoryGuardError`)."""
        views = f" on {self.views} flipped views" if self.views > 1 else ""
        check_memory(self.device, self.required_bytes(batch, height, width),
                     f"running the network on {batch} x {height}x{width} pixels{views}",
                     "use a checkpoint with a working size (simseg train --working-size 256), "
                     "switch flip averaging off (Predictor(..., tta=False)), or free memory")
