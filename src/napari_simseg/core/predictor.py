"""Run a checkpoint on slices: the one place inference happens."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .model import FlipEnsemble

__all__ = ["DEVICES", "Predictor", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into an available ``torch.device``.

    ``auto`` picks CUDA, then MPS, then CPU. Asking for an absent accelerator is an error
    that says what is available.
    """
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    if base == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' requested but MPS is not available; use 'cpu' or 'auto'")
    return torch.device(name)


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
        Average the network over the four flips of each input
        (:class:`~napari_simseg.core.model.FlipEnsemble`): measurably better labels on
        the demo data at 4x the compute per round. ``False`` runs the network once.
    """

    def __init__(
        self,
        checkpoint: Union[str, Path, Checkpoint],
        device: str = "auto",
        amp: bool = True,
        tta: bool = True,
    ):
        if isinstance(checkpoint, Checkpoint):
            ckpt = checkpoint
        else:
            from .resources import resolve_checkpoint

            ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
        self.checkpoint = ckpt
        self.meta = ckpt.meta
        self.device = resolve_device(device)
        self.network = ckpt.model.to(self.device).eval()
        self.tta = bool(tta)
        self.model = FlipEnsemble(self.network).eval() if self.tta else self.network
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
    def click_radius(self) -> int:
        return self.meta.click_radius

    @property
    def in_channels(self) -> int:
        return self.meta.model_config.in_channels

    @property
    def recurrent(self) -> bool:
        return self.model.recurrent

    def _autocast(self):
        from .simulation import autocast_for

        return autocast_for(self.device, self.amp)

    def predict_tensor(self, x: torch.Tensor, state=None):
        """Run the network on a ``(B, C, H, W)`` tensor; returns (probabilities tensor, state)."""
        x = x.to(self.device, non_blocking=True)
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
        probs, new_state = self.predict_tensor(torch.from_numpy(arr), state)
        out = probs.cpu().numpy()
        return (out[0] if single else out), new_state
