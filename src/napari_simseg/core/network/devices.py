"""Where networks run: device names, device resolution and mixed precision.

``DEVICES`` is importable without torch (the widget lists it); the functions import
torch when called.
"""

from __future__ import annotations

from contextlib import nullcontext

__all__ = ["DEVICES", "MemoryGuardError", "autocast_for", "available_memory", "check_memory", "cpu_bf16_supported",
           "format_bytes", "resolve_device"]

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


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16 or
    AMX): there, bfloat16 autocast about halves a training step; elsewhere it is emulated
    and slower, so it is not used."""
    import torch

    try:
        # the CPU's own instructions: oneDNN's "bf16 supported" also says yes on plain
        # AVX512 (Skylake, Cascade Lake), where it emulates bfloat16
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(torch.backends.mkldnn.is_available() and native)
    except (AttributeError, RuntimeError):
        return False


def autocast_for(device, amp: bool):
    """Mixed precision when ``amp``: float16 autocast on CUDA, bfloat16 on a CPU that
    supports it natively (:func:`cpu_bf16_supported`); a no-op context elsewhere."""
    if amp and device.type == "cuda":
        import torch

        return torch.autocast("cuda", dtype=torch.float16)
    if amp and device.type == "cpu" and cpu_bf16_supported():
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


class MemoryGuardError(MemoryError):
    """A computation refused before it starts because it would not fit in memory.

    The message names the size and what helps; nothing has changed when it is raised.
    """


def available_memory(device) -> int | None:
    """Bytes the next computation on ``device`` can still use (``None``: unknown).

    CPU: the system's available memory (``MemAvailable``); CUDA: the free memory of the
    device; anything else: unknown (no guard).
    """
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if getattr(device, "type", str(device)) != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in GB (or MB below one GB), for messages."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_memory(device, needed: int, what: str, helps: str) -> None:
    """Refuse (:class:`MemoryGuardError`) when ``needed`` bytes would not fit on ``device``.

    Parameters
    ----------
    what : str
        The computation and its size, e.g. ``"a round on a 2048x2048 region"``.
    helps : str
        What the user can do about it.
    """
    free = available_memory(device)
    if free is not None and needed > 0.9 * free:
        raise MemoryGuardError(
            f"{what} needs about {format_bytes(needed)} but only {format_bytes(free)} are free on "
            f"{getattr(device, 'type', device)}: {helps}"
        )
