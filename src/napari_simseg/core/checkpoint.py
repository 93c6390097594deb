"""Self-describing, pickle-free checkpoints.

A checkpoint is one ``.safetensors`` file: the network's tensors plus a JSON header
(safetensors' string metadata) with everything needed to use it — class names, memory
kind and depth, click radius, architecture and encoder, intensity normalisation and the
format version. Loading never unpickles anything, so a crafted file cannot run code.
Writes are atomic (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .memory import MEMORY_KINDS, input_channels
from .model import ModelConfig, ModelConfigError, SimSegNet, build_model

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMeta",
    "average_checkpoints",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
    "update_checkpoint_meta",
]

FORMAT_NAME = "napari-simseg"
# 2: context_slices; 3: decision_offsets. A file is written with the lowest version that
# holds its fields, so a plain 2D checkpoint stays readable by version-1 readers.
FORMAT_VERSION = 3


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one actionable line."""


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself.

    Parameters
    ----------
    class_names : list of str
        Class names, index = label value; index 0 is the background.
    memory : {"none", "cim", "sim"}
        Interaction memory the network was trained with.
    depth : int
        SIM depth D (1 for the other kinds).
    click_radius : int
        Disk radius used to encode clicks.
    model : dict
        :class:`ModelConfig` fields.
    normalization : dict
        How images are normalised before the network (see ``core.data``).
    simulation : str
        How clicks were simulated in training (``ddg``, ``sdg`` or ``auto``; e.g.
        ``ddg+sdg`` for an average of runs trained both ways).
    training : dict
        Free-form provenance (epochs, data, metrics).
    context_slices : int
        Neighbouring slices on each side the network sees (0: 2D, as in the paper;
        see ``core.memory``). Absent from older checkpoints, which read as 0.
    decision_offsets : list of float, optional
        Per-class offsets added to the log-probabilities before the argmax that
        decides labels (see ``core.calibration``); ``None``: plain argmax.
    """

    class_names: list
    memory: str
    depth: int
    click_radius: int
    model: dict
    normalization: dict = field(
        default_factory=lambda: {"method": "percentile_zscore", "low": 0.5, "high": 99.5}
    )
    simulation: str = "ddg"
    training: dict = field(default_factory=dict)
    context_slices: int = 0
    decision_offsets: Optional[list] = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def axis(self) -> int:
        """The slicing axis the network was trained on (0 when not recorded)."""
        return int(self.training.get("config", {}).get("axis", 0))

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def validate(self, source: str = "checkpoint") -> "CheckpointMeta":
        if self.format != FORMAT_NAME:
            raise CheckpointError(f"{source}: not a napari-simseg checkpoint (format {self.format!r})")
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: checkpoint format version {self.format_version} is newer than this "
                f"napari-simseg supports ({FORMAT_VERSION}); upgrade napari-simseg"
            )
        if self.memory not in MEMORY_KINDS:
            raise CheckpointError(f"{source}: unknown memory kind {self.memory!r}")
        if len(self.class_names) < 2:
            raise CheckpointError(f"{source}: needs at least 2 classes, has {self.class_names}")
        ctx = self.context_slices
        if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 0:
            raise CheckpointError(f"{source}: context_slices must be an integer >= 0, got {ctx!r}")
        offsets = self.decision_offsets
        if offsets is not None:
            ok = isinstance(offsets, (list, tuple)) and len(offsets) == self.n_classes and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                for v in offsets)
            if not ok:
                raise CheckpointError(
                    f"{source}: decision_offsets must be {self.n_classes} finite numbers (one per "
                    f"class), got {offsets!r}; recalibrate with `simseg calibrate`"
                )
        expected = input_channels(self.memory, self.n_classes, self.depth, ctx)
        cfg = self.model
        if cfg.get("in_channels") != expected or cfg.get("n_classes") != self.n_classes:
            raise CheckpointError(
                f"{source}: network has {cfg.get('in_channels')} input channels and "
                f"{cfg.get('n_classes')} outputs, but memory {self.memory!r} (depth {self.depth}, "
                f"{ctx} context slices) with {self.n_classes} classes needs {expected} and {self.n_classes}"
            )
        return self


@dataclass
class Checkpoint:
    """A loaded checkpoint: its metadata and the network (on CPU, eval mode)."""

    meta: CheckpointMeta
    model: SimSegNet
    path: Optional[str] = None


def save_checkpoint(
    path,
    model: SimSegNet,
    meta: CheckpointMeta,
    half: bool = False,
) -> Path:
    """Write ``model`` and ``meta`` atomically to ``path`` (``.safetensors``).

    Parameters
    ----------
    half : bool
        Store floating-point tensors as float16 (half the size; loaded back as float32).
    """
    meta.model = model.config.to_dict()
    meta.validate(str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    _write_file(path, tensors, meta)
    return path


def _header_for(meta: CheckpointMeta) -> dict:
    """The JSON header, with the lowest format version that holds its fields."""
    doc = asdict(meta)
    version = 1
    if doc["context_slices"] == 0:
        doc.pop("context_slices")  # a 2D checkpoint: readable by versions without the key
    else:
        version = 2
    if doc["decision_offsets"] is None:
        doc.pop("decision_offsets")
    else:
        doc["decision_offsets"] = [float(v) for v in doc["decision_offsets"]]
        version = 3
    # older readers refuse newer versions with "upgrade" instead of misreading the file
    doc["format_version"] = version
    return {"simseg": json.dumps(doc)}


def _write_file(path: Path, tensors: dict, meta: CheckpointMeta) -> None:
    from safetensors.torch import save_file

    header = _header_for(meta)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint is shareable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def update_checkpoint_meta(path, output, **changes) -> Path:
    """Copy a checkpoint to ``output`` with some header fields changed.

    The tensors are copied bit for bit (a float16 checkpoint stays float16);
    ``output`` may be ``path`` itself (the write is atomic).

    Parameters
    ----------
    path, output : str or Path
    **changes
        :class:`CheckpointMeta` fields to replace, e.g. ``decision_offsets=[0, -0.2]``.
    """
    path, output = Path(path), Path(output)
    meta = read_checkpoint_meta(path)
    unknown = sorted(set(changes) - set(asdict(meta)))
    if unknown:
        raise ValueError(f"unknown checkpoint fields {unknown}")
    for k, v in changes.items():
        setattr(meta, k, v)
    meta.validate(str(output))
    tensors = _load_tensors(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_file(output, tensors, meta)
    return output


def _load_tensors(path: Path) -> dict:
    """A checkpoint's tensors; unreadable data is a one-line :class:`CheckpointError`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: corrupt tensor data ({str(exc).splitlines()[0][:120]})") from None


def _read_header(path: Path) -> dict:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a safetensors file"
        raise CheckpointError(
            f"{path}: not a readable napari-simseg checkpoint (safetensors parse failed: "
            f"{str(exc).splitlines()[0][:120]}); pickled PyTorch files are refused for safety"
        ) from None
    if "simseg" not in header:
        raise CheckpointError(f"{path}: safetensors file without napari-simseg metadata")
    return header


def read_checkpoint_meta(path) -> CheckpointMeta:
    """Read and validate a checkpoint's metadata without loading the tensors."""
    path = Path(path)
    header = _read_header(path)
    try:
        raw = json.loads(header["simseg"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt napari-simseg metadata ({exc})") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this napari-simseg "
            f"supports ({FORMAT_VERSION}); upgrade napari-simseg"
        )
    try:
        meta = CheckpointMeta(**raw)
    except TypeError as exc:
        raise CheckpointError(f"{path}: corrupt napari-simseg metadata ({exc})") from None
    return meta.validate(str(path))


def load_checkpoint(
    path,
    expected_classes: Optional[Sequence[str]] = None,
    expected_channels: Optional[int] = None,
) -> Checkpoint:
    """Load a checkpoint, checking it against what the caller needs.

    Parameters
    ----------
    path : str or Path
        ``.safetensors`` checkpoint.
    expected_classes : sequence of str, optional
        Class names the caller works with; a mismatch is a :class:`CheckpointError`.
    expected_channels : int, optional
        Input channel count the caller will feed.

    Raises
    ------
    CheckpointError
        One line naming the file and what does not fit.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    if expected_classes is not None and list(expected_classes) != list(meta.class_names):
        raise CheckpointError(
            f"{path}: trained for classes {meta.class_names}, but this data has "
            f"{list(expected_classes)}; pick a checkpoint trained on these classes or retrain"
        )
    try:
        cfg = meta.model_config
    except ModelConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if expected_channels is not None and cfg.in_channels != expected_channels:
        raise CheckpointError(
            f"{path}: network takes {cfg.in_channels} input channels, caller provides "
            f"{expected_channels}"
        )
    try:
        model = build_model(cfg)
    except ModelConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    tensors = _load_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad_shape = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"{path}: tensors do not match the architecture in its header "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]}, wrong shape {bad_shape[:2]})"
        )
    tensors = {k: v.to(own[k].dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors)
    model.eval()
    return Checkpoint(meta=meta, model=model, path=str(path))


# Header fields that must agree for two checkpoints' weights to be averaged: the same
# network reading the same input the same way. The architecture comes last: a different
# memory or context changes its input channels too, and the message should name the cause.
_AVERAGE_MUST_MATCH = ("class_names", "memory", "depth", "click_radius", "normalization",
                       "context_slices", "model")


def average_checkpoints(paths: Sequence, output, weights: Optional[Sequence[float]] = None,
                        half: Optional[bool] = None) -> Path:
    """Average the weights of several checkpoints of one network (a "model soup").

    Fine-tuning runs that start from the same checkpoint stay in one basin of the loss,
    so the average of their weights is a network in its own right, often better than
    each of them, at the cost of one network (Wortsman et al. 2022, "Model soups",
    uniform soup). Every floating-point tensor is the weighted mean of the inputs',
    computed in float32; this includes batch-norm running means and variances, which
    for runs this close is what re-estimating them would give up to noise. Integer
    buffers (batch-norm step counters, unused at inference) take the largest value.

    The result carries no decision offsets: offsets fitted to one network do not
    belong to another, so run ``simseg calibrate`` on the average (on training
    volumes) if the inputs were calibrated. Its ``training`` header records every
    input (path, weight, epoch, score, simulation, training config) under
    ``averaged_from``; ``config`` holds only what all inputs share and what using the
    network needs (the slicing axis). The training and validation volumes are kept
    when all inputs agree on them; otherwise they are left out with a warning, because
    a volume one input validated on may have been trained on by another.

    Parameters
    ----------
    paths : sequence of str or Path
        Two or more distinct checkpoints of the same architecture, classes, memory,
        click encoding, normalisation, context slices and slicing axis.
    output : str or Path
        Where to write the average (``.safetensors``, atomic write; nothing is written
        when the inputs are refused).
    weights : sequence of float, optional
        One positive weight per checkpoint (normalised to sum to 1); default uniform.
    half : bool, optional
        Store float16; default: float16 only if every input is float16.

    Returns
    -------
    Path
        ``output``.

    Raises
    ------
    CheckpointError
        Fewer than two or repeated inputs, bad weights, or inputs that are not the same
        network; the message names the field and the files.
    """
    import warnings

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise CheckpointError(f"averaging needs at least 2 checkpoints, got {len(paths)}")
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            raise CheckpointError(
                f"checkpoint {p} is given more than once; give it a larger --weights entry instead"
            )
        seen.add(p.resolve())
    if weights is None:
        weights = [1.0] * len(paths)
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise CheckpointError(f"averaging weights must be numbers, got {list(weights)!r}") from None
    if len(weights) != len(paths) or not all(np.isfinite(w) and w > 0 for w in weights):
        raise CheckpointError(
            f"averaging weights must be {len(paths)} positive numbers (one per checkpoint), "
            f"got {weights}"
        )
    total = sum(weights)
    weights = [w / total for w in weights]
    metas = [read_checkpoint_meta(p) for p in paths]
    first = metas[0]
    for path, meta in zip(paths[1:], metas[1:]):
        for name in _AVERAGE_MUST_MATCH:
            if getattr(meta, name) != getattr(first, name):
                raise CheckpointError(
                    f"cannot average {paths[0]} and {path}: their {name} fields do not match "
                    f"({getattr(first, name)!r} vs {getattr(meta, name)!r}); only checkpoints "
                    f"of the same network trained for the same input can be averaged"
                )
        if meta.axis != first.axis:
            raise CheckpointError(
                f"cannot average {paths[0]} and {path}: trained on slices along axis "
                f"{first.axis} and {meta.axis}"
            )
    sums: dict = {}
    all_half = True
    for path, weight in zip(paths, weights):
        tensors = _load_tensors(path)
        if sums and set(tensors) != set(sums):
            odd = sorted(set(tensors) ^ set(sums))
            raise CheckpointError(
                f"cannot average {paths[0]} and {path}: different tensors ({odd[:2]})")
        for key, value in tensors.items():
            if key in sums and (tuple(value.shape) != tuple(sums[key].shape)
                                or value.is_floating_point() != sums[key].is_floating_point()):
                raise CheckpointError(
                    f"cannot average {paths[0]} and {path}: tensor {key} is "
                    f"{sums[key].dtype} {tuple(sums[key].shape)} in one and "
                    f"{value.dtype} {tuple(value.shape)} in the other"
                )
            if value.is_floating_point():
                all_half &= value.dtype == torch.float16
                acc = value.to(torch.float32) * weight
                sums[key] = acc if key not in sums else sums[key] + acc
            else:
                sums[key] = value.clone() if key not in sums else torch.maximum(sums[key], value)
    store_half = all_half if half is None else bool(half)
    out_tensors = {}
    for key, value in sums.items():
        if value.is_floating_point():
            value = value.to(torch.float16 if store_half else torch.float32)
        out_tensors[key] = value.contiguous()
    meta = CheckpointMeta(**asdict(first))
    meta.decision_offsets = None
    meta.format_version = FORMAT_VERSION
    meta.training = {
        "config": {"axis": first.axis},
        "averaged_from": [
            {"path": str(p), "weight": w, "epoch": m.training.get("epoch"),
             "score": m.training.get("score"), "simulation": m.simulation,
             "data": m.training.get("data"), "config": m.training.get("config", {})}
            for p, w, m in zip(paths, weights, metas)
        ],
    }
    data = [m.training.get("data") for m in metas]
    if all(d == data[0] for d in data):
        meta.training["data"] = data[0]
    simulations = {m.simulation for m in metas}
    if len(simulations) > 1:
        meta.simulation = "+".join(sorted(simulations))
    for key in ("train_volumes", "val_volumes"):
        values = [m.training.get(key) for m in metas]
        if all(v == values[0] for v in values):
            if values[0] is not None:
                meta.training[key] = values[0]
        else:
            warnings.warn(
                f"the inputs list different {key}: the average records none, and a volume "
                f"one input validated on may have been trained on by another",
                UserWarning, stacklevel=2,
            )
    meta.validate(str(output))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_file(output, out_tensors, meta)
    return output
