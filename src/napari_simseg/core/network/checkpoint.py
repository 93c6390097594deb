"""Self-describing, pickle-free checkpoints.

A checkpoint is one ``.safetensors`` file: the network's tensors plus a JSON header
(safetensors' string metadata) with everything needed to use it — class names, memory
kind and depth, click radius, architecture and encoder, intensity normalisation and the
format version. Loading never unpickles anything, so a crafted file cannot run code.
Writes are atomic (:mod:`.atomic`: a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_simseg.core.interaction.memory import MEMORY_KINDS, input_channels
from napari_simseg.core.io.atomic import atomic_path
from napari_simseg.core.io.resources import folder_hint
from napari_simseg.core.network.model import DECODERS, ModelConfig, ModelConfigError, SimSegNet, build_model

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_SIDE",
    "NORMALIZATION_METHODS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMeta",
    "check_header",
    "load_checkpoint",
    "load_tensors",
    "read_checkpoint_meta",
    "remove_killed_tensor_writes",
    "save_checkpoint",
    "update_checkpoint_meta",
    "write_tensors",
]

FORMAT_NAME = "napari-simseg"
# 2: context_slices; 3: decision_offsets; 4: channel_names, working_size, flips;
# 5: neighbour_prior. A file is
# written with the lowest version that holds its fields, so a plain 2D checkpoint stays
# readable by version-1 readers.
FORMAT_VERSION = 5
#: The flips a network can be trained with (and averaged over at inference).
FLIP_AXES = ("vertical", "horizontal")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one actionable line."""


#: Upper bounds of header numbers: a crafted header must not make a session allocate
#: without limit (a click radius of 100000 draws a disk of 2e5 x 2e5 pixels).
MAX_DEPTH = 16
MAX_CLICK_RADIUS = 64
MAX_CONTEXT_SLICES = 16
MAX_CHANNELS = 4096
#: Largest side of a header's ``model.canvas`` and ``working_size``: every input is padded to
#: the canvas, so [100000, 100000] would ask for hundreds of GB at the first round.
MAX_SIDE = 4096
#: The intensity normalisations a checkpoint may name: what
#: ``core.imaging.preprocessing.normalize_volume`` does (percentile clip, then z-score).
NORMALIZATION_METHODS = ("percentile_zscore",)


def _int_in(lo, hi=None):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)

    return check


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _names(minimum: int):
    def check(v):
        return (isinstance(v, list) and minimum <= len(v) <= MAX_CHANNELS
                and all(isinstance(n, str) and n.strip() for n in v) and len(set(v)) == len(v))

    return check


# header field -> (what it must be, check); every field of a header is checked before use
_FIELDS = {
    "format": ("a string", lambda v: isinstance(v, str)),
    "format_version": ("an integer >= 1", _int_in(1)),
    "class_names": (f"a list of 2..{MAX_CHANNELS} distinct, non-empty names", _names(2)),
    "memory": (f"one of {list(MEMORY_KINDS)}", lambda v: isinstance(v, str) and v in MEMORY_KINDS),
    "depth": (f"an integer 1..{MAX_DEPTH}", _int_in(1, MAX_DEPTH)),
    "click_radius": (f"an integer 0..{MAX_CLICK_RADIUS}", _int_in(0, MAX_CLICK_RADIUS)),
    "model": ("an object of network options", lambda v: isinstance(v, dict)),
    "normalization": ("an object", lambda v: isinstance(v, dict)),
    "simulation": ("a string", lambda v: isinstance(v, str)),
    "training": ("an object", lambda v: isinstance(v, dict)),
    "context_slices": (f"an integer 0..{MAX_CONTEXT_SLICES}", _int_in(0, MAX_CONTEXT_SLICES)),
    "decision_offsets": ("", lambda v: True),  # checked against the class count in CheckpointMeta.validate
    "channel_names": (f"a list of 1..{MAX_CHANNELS} distinct, non-empty names", _names(1)),
    "working_size": (f"an integer 16..{MAX_SIDE} or null", lambda v: v is None or _int_in(16, MAX_SIDE)(v)),
    "flips": (f"a list of distinct entries out of {list(FLIP_AXES)} or null",
              lambda v: v is None or (isinstance(v, list) and all(f in FLIP_AXES for f in v)
                                      and len(set(v)) == len(v))),
    "neighbour_prior": ("true or false", lambda v: isinstance(v, bool)),
}
_MODEL_FIELDS = {
    "in_channels": (f"an integer 1..{MAX_CHANNELS}", _int_in(1, MAX_CHANNELS)),
    "n_classes": (f"an integer 2..{MAX_CHANNELS}", _int_in(2, MAX_CHANNELS)),
    "encoder": ("an encoder name", lambda v: isinstance(v, str) and bool(v)),
    "encoder_depth": ("an integer 3..5", _int_in(3, 5)),
    "decoder": (f"one of {list(DECODERS)}", lambda v: isinstance(v, str) and v in DECODERS),
    "decoder_channels": (f"a list of 3 to 5 integers 1..{MAX_CHANNELS}",
                         lambda v: isinstance(v, (list, tuple)) and 3 <= len(v) <= 5
                         and all(_int_in(1, MAX_CHANNELS)(c) for c in v)),
    "lstm_kernel_size": ("an odd integer 1..15", lambda v: _int_in(1, 15)(v) and v % 2 == 1),
    "lstm_separable": ("true or false", lambda v: isinstance(v, bool)),
    "encoder_stem_stride": ("1 or 2", lambda v: _int_in(1, 2)(v)),
    "encoder_weights": ("a string or null (provenance only)", lambda v: v is None or isinstance(v, str)),
    "edge_padded_channels": (f"a list of distinct integers 0..{MAX_CHANNELS - 1} or null",
                             lambda v: v is None or (isinstance(v, list) and len(set(v)) == len(v)
                                                     and all(_int_in(0, MAX_CHANNELS - 1)(c) for c in v))),
    "canvas": (f"two sizes [H, W] of 1..{MAX_SIDE} pixels or null",
               lambda v: v is None or (isinstance(v, list) and len(v) == 2
                                       and all(_int_in(1, MAX_SIDE)(c) for c in v))),
}
_NORMALIZATION_FIELDS = {
    "method": (f"one of {list(NORMALIZATION_METHODS)}", lambda v: isinstance(v, str) and v in NORMALIZATION_METHODS),
    "low": ("a number 0..100", lambda v: _finite_number(v) and 0 <= v <= 100),
    "high": ("a number 0..100", lambda v: _finite_number(v) and 0 <= v <= 100),
    "n4": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_fields(values: dict, rules: dict, source: str, prefix: str = "") -> None:
    """Each value against its rule; the first that fails is a :class:`CheckpointError` naming the field."""
    for name, (what, check) in rules.items():
        if name in values and not check(values[name]):
            shown = repr(values[name])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise CheckpointError(f"{source}: header field '{prefix}{name}' must be {what}, got {shown}")


def check_header(raw, source: str = "checkpoint") -> dict:
    """A checkpoint header's fields checked against their schema (types and ranges).

    Returns
    -------
    dict
        ``raw``, every known field of the right type and range (unknown fields are
        refused, required ones must be there).

    Raises
    ------
    CheckpointError
        Naming the first field that is missing, unknown or out of its range.
    """
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: corrupt napari-simseg metadata (not a JSON object)")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise CheckpointError(f"{source}: unknown header field(s) {unknown}; written by a newer napari-simseg?")
    missing = [k for k in ("class_names", "memory", "depth", "click_radius", "model") if k not in raw]
    if missing:
        raise CheckpointError(f"{source}: header field(s) {missing} missing; not a complete napari-simseg checkpoint")
    _check_fields(raw, _FIELDS, source)
    model = raw["model"]
    unknown = sorted(set(model) - set(_MODEL_FIELDS))
    if unknown or not {"in_channels", "n_classes"} <= set(model):
        what = f"unknown field(s) {unknown}" if unknown else "no in_channels or n_classes"
        raise CheckpointError(f"{source}: header field 'model' has {what}")
    _check_fields(model, _MODEL_FIELDS, source, "model.")
    if "decoder_channels" in model and len(model["decoder_channels"]) != model.get("encoder_depth", 5):
        raise CheckpointError(f"{source}: header field 'model.decoder_channels' needs one entry per encoder "
                              f"stage ({model.get('encoder_depth', 5)}), got {model['decoder_channels']!r}")
    norm = raw.get("normalization", {})
    unknown = sorted(set(norm) - set(_NORMALIZATION_FIELDS))
    if unknown:  # a normalisation we do not do would be silently skipped
        raise CheckpointError(f"{source}: header field 'normalization' has unknown field(s) {unknown}; "
                              f"known: {list(_NORMALIZATION_FIELDS)}")
    _check_fields(norm, _NORMALIZATION_FIELDS, source, "normalization.")
    if norm.get("low", 0.5) >= norm.get("high", 99.5):
        raise CheckpointError(f"{source}: header field 'normalization.low' must be below 'normalization.high', "
                              f"got {norm.get('low')} and {norm.get('high')}")
    return raw


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
        How images are normalised before the network (see ``core.imaging.preprocessing``).
    simulation : str
        How clicks were simulated in training (``ddg``, ``sdg`` or ``auto``; e.g.
        ``ddg+sdg`` for an average of runs trained both ways).
    training : dict
        Free-form provenance (epochs, data, metrics).
    context_slices : int
        Neighbouring slices on each side the network sees (0: 2D, as in the paper;
        see ``core.interaction.memory``). Absent from older checkpoints, which read as 0.
    decision_offsets : list of float, optional
        Per-class offsets added to the log-probabilities before the argmax that
        decides labels (see ``core.network.decision``); ``None``: plain argmax.
    channel_names : list of str
        The image channels (modalities) the network reads, in order; ``["image"]`` for
        a single-channel image.
    working_size : int, optional
        The working resolution: slices whose longest side exceeds it are shrunk to it
        before the network (see ``core.imaging.preprocessing.working_scale``); ``None`` (older
        checkpoints): every slice at its own resolution.
    flips : list of str, optional
        The flips of the training augmentation (``"vertical"``, ``"horizontal"``);
        flip averaging at inference uses only these. ``None`` (older checkpoints):
        both.
    neighbour_prior : bool
        Trained with neighbour priors (``TrainConfig.prior_fraction``): propagation then
        starts a slice's memory with the labels of the slice before it as a prior state
        (see ``core.session.propagation``). False for older checkpoints.
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
    decision_offsets: list | None = None
    channel_names: list = field(default_factory=lambda: ["image"])
    working_size: int | None = None
    flips: list | None = None
    neighbour_prior: bool = False
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_channels(self) -> int:
        """C, the image channels the network reads."""
        return len(self.channel_names)

    @property
    def trained_flips(self) -> tuple:
        """The flips the network was trained with (both for older checkpoints)."""
        return FLIP_AXES if self.flips is None else tuple(self.flips)

    @property
    def axis(self) -> int:
        """The slicing axis the network was trained on (0 when not recorded)."""
        return int(self.training.get("config", {}).get("axis", 0))

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def validate(self, source: str = "checkpoint") -> CheckpointMeta:
        """Check every field (:func:`check_header`) and that they fit together."""
        if self.format != FORMAT_NAME:
            raise CheckpointError(f"{source}: not a napari-simseg checkpoint (format {self.format!r})")
        version = self.format_version
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: checkpoint format version {self.format_version} is newer than this "
                f"napari-simseg supports ({FORMAT_VERSION}); upgrade napari-simseg"
            )
        check_header(asdict(self), source)
        ctx = self.context_slices
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
        names = self.channel_names
        expected = input_channels(self.memory, self.n_classes, self.depth, ctx, len(names))
        cfg = self.model
        if cfg.get("in_channels") != expected or cfg.get("n_classes") != self.n_classes:
            raise CheckpointError(
                f"{source}: network has {cfg.get('in_channels')} input channels and "
                f"{cfg.get('n_classes')} outputs, but memory {self.memory!r} (depth {self.depth}, "
                f"{ctx} context slices, {len(names)} image channels) with {self.n_classes} classes "
                f"needs {expected} and {self.n_classes}"
            )
        return self


@dataclass
class Checkpoint:
    """A loaded checkpoint: its metadata and the network (on CPU, eval mode)."""

    meta: CheckpointMeta
    model: SimSegNet
    path: str | None = None


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
    # self-contained: the encoder weights file only initialised the network, its tensors
    # are all here; where it came from stays in the training record
    meta.model = {**model.config.to_dict(), "encoder_weights": None}
    origin = model.config.encoder_weights
    if origin is not None and "initial_encoder_weights" not in meta.training:
        meta.training = {**meta.training, "initial_encoder_weights": str(origin)}
    meta.validate(str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    write_tensors(path, tensors, meta)
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
    # fields of version 4, left out when they hold what older readers assume
    defaults = {"channel_names": ["image"], "working_size": None, "flips": None}
    for key, default in defaults.items():
        if doc[key] == default:
            doc.pop(key)
        else:
            version = 4
    if doc["neighbour_prior"]:
        version = 5
    else:
        doc.pop("neighbour_prior")
    # older readers refuse newer versions with "upgrade" instead of misreading the file
    doc["format_version"] = version
    return {"simseg": json.dumps(doc)}


def write_tensors(path: Path, tensors: dict, meta: CheckpointMeta) -> None:
    """Write ``tensors`` with ``meta``'s header to ``path``, atomically (no validation)."""
    from safetensors.torch import save_file

    header = _header_for(meta)
    # own_folder: safetensors writes a .tmpXXXXXX of its own first; a kill leaves it in our folder
    with atomic_path(path, own_folder=True) as tmp:
        save_file(tensors, str(tmp), metadata=header)


#: safetensors' own temporary file (Rust ``tempfile``): ``.tmp`` and six letters or digits.
_TENSOR_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def remove_killed_tensor_writes(folder, older_than: float) -> list[Path]:
    """Remove the ``.tmpXXXXXX`` files a killed checkpoint write left in ``folder``.

    safetensors writes a temporary file of its own beside the path it is given; versions
    of napari-simseg that gave it a path in the target's folder left it there when killed
    (about the checkpoint's size). Only files of that name, modified before
    ``older_than`` (a time stamp: a run's start) and holding nothing or the start of a
    safetensors file (its header's length, then ``{``) are removed.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed = []
    try:
        entries = [p for p in Path(folder).iterdir() if _TENSOR_TMP.fullmatch(p.name)]
    except OSError:
        return removed
    for path in entries:
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime >= older_than:
                continue
            with open(path, "rb") as f:
                head = f.read(9)
            if head and not (len(head) == 9 and struct.unpack("<Q", head[:8])[0] < 2**31 and head[8:] == b"{"):
                continue  # not a safetensors file: not ours
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


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
    tensors = load_tensors(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(output, tensors, meta)
    return output


def load_tensors(path: Path) -> dict:
    """A checkpoint's tensors; unreadable data is a one-line :class:`CheckpointError`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: corrupt tensor data ({str(exc).splitlines()[0][:120]})") from None


def _read_header(path: Path) -> dict:
    from safetensors import safe_open

    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; {folder_hint(path)}")
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
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this napari-simseg "
            f"supports ({FORMAT_VERSION}); upgrade napari-simseg"
        )
    if isinstance(raw, dict) and raw.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a napari-simseg checkpoint (format {raw.get('format')!r})")
    meta = CheckpointMeta(**check_header(raw, str(path)))  # every field checked before use
    return meta.validate(str(path))


def load_checkpoint(
    path,
    expected_classes: Sequence[str] | None = None,
    expected_channels: int | None = None,
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
        # the header's encoder_weights (older checkpoints) is provenance: every tensor is in the file
        cfg = replace(meta.model_config, encoder_weights=None)
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
    tensors = load_tensors(path)
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
