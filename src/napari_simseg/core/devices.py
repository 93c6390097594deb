"""Where networks run: device names, device resolution and mixed precision.

``DEVICES`` is importable without torch (the widget lists it); the functions import
torch when called.
"""

from __future__ import annotations

from contextlib import nullcontext

__all__ = ["DEVICES", "autocast_for", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available(torch) -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str = "auto"):
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into an available ``torch.device``.

    ``auto`` picks CUDA, then MPS, then CPU.

    Raises
    ------
    ValueError
        For an unknown name or an absent accelerator, saying what is available.
    """
    import torch

    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    if base == "mps" and not _mps_available(torch):
        raise ValueError("device 'mps' requested but MPS is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def autocast_for(device, amp: bool):
    """float16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    if amp and device.type == "cuda":
        import torch

        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()
