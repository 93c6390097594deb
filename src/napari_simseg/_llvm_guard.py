"""Keep torch from loading triton into a process whose OpenGL driver uses LLVM.

Mesa's llvmpipe/radeonsi OpenGL drivers load ``libLLVM-*.so`` into napari's process
as soon as the canvas exists. Triton's ``libtriton.so`` carries its own, incompatible
LLVM; when it is loaded afterwards (torch imports triton while importing
``torch._dynamo``, which torchvision and segmentation-models-pytorch pull in), its
static initialisers bind to Mesa's LLVM and the process dies with a segmentation
fault. SimSeg runs plain eager PyTorch and never needs triton, so in that situation
triton is made unimportable (``import triton`` raises ImportError, which torch
handles by running without it).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["avoid_triton_llvm_clash"]

logger = logging.getLogger(__name__)


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:  # not Linux: no Mesa LLVM clash known there
        return False


def avoid_triton_llvm_clash() -> bool:
    """Block ``import triton`` if an LLVM library is already loaded and triton is not.

    Call it before importing torch in a process with a napari canvas. Returns whether
    triton was blocked.
    """
    if "triton" in sys.modules:
        return False  # already loaded (or already blocked): nothing left to prevent
    if not _llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    logger.info("napari-simseg: an LLVM-based OpenGL driver is loaded; triton disabled to avoid a crash")
    return True
