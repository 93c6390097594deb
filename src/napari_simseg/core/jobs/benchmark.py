"""``simseg benchmark``: inference latency, session overhead and training-step cost.

Figures are printed and written as JSON; nothing here asserts a time.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from napari_simseg.core.interaction.memory import input_channels
from napari_simseg.core.io.atomic import atomic_write_text
from napari_simseg.core.network.devices import autocast_for, cpu_bf16_supported, resolve_device
from napari_simseg.core.network.model import ModelConfig, build_model

__all__ = ["BenchmarkOptions", "benchmark_inference", "benchmark_training"]


@dataclass
class BenchmarkOptions:
    """The network and the timing of :func:`benchmark_inference` and :func:`benchmark_training`.

    Attributes
    ----------
    device : str
    size : int, optional
        Slice side (default 256 for inference, 64 for training).
    batch_size : int
        Training batch.
    depth, n_classes : int
        Memory depth D and classes N of the SIM network.
    encoder : str
    repeats, warmup : int, optional
        Timed and untimed repetitions (defaults 20 and 5 for inference, 5 and 2 for training).
    """

    device: str = "auto"
    size: int | None = None
    batch_size: int = 4
    depth: int = 3
    n_classes: int = 5
    encoder: str = "resnet34"
    repeats: int | None = None
    warmup: int | None = None


def _stats(ms: list) -> dict:
    return {
        "mean": round(statistics.fmean(ms), 3),
        "std": round(statistics.pstdev(ms), 3),
        "median": round(statistics.median(ms), 3),
    }


def _time_forward(net, x, device, repeats, warmup):
    ms = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def benchmark_inference(options: BenchmarkOptions | None = None, json_path: str | None = None, log=print,
                        **fields) -> dict:
    """Per-slice forward latency of the DDG-SIM network and of a plain smp U-Net,
    and the overhead of one session round beyond the network itself.

    Both networks take the same ``1 + 2DN``-channel input (batch 1, ``size x size``),
    share the encoder and run on the same device, random-initialised. The session
    overhead is, per round, the wall time of ``InteractiveSession.add_clicks`` (click
    encoding, memory, network, softmax, labels, log) minus that round's bare forward
    time; the median over rounds is reported.
    """
    import segmentation_models_pytorch as smp

    from napari_simseg.core.network.checkpoint import Checkpoint, CheckpointMeta
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession

    o = replace(options or BenchmarkOptions(), **fields)
    device, size, depth, n_classes, encoder = o.device, o.size or 256, o.depth, o.n_classes, o.encoder
    repeats, warmup = o.repeats or 20, 5 if o.warmup is None else o.warmup
    dev = resolve_device(device)
    torch.manual_seed(0)
    channels = input_channels("sim", n_classes, depth)
    sim = build_model(ModelConfig(in_channels=channels, n_classes=n_classes, encoder=encoder)).to(dev).eval()
    unet = smp.Unet(encoder, encoder_weights=None, in_channels=channels, classes=n_classes).to(dev).eval()
    x = torch.randn(1, channels, size, size, device=dev)
    sim_ms = _time_forward(sim, x, dev, repeats, warmup)
    unet_ms = _time_forward(unet, x, dev, repeats, warmup)
    # interleave a second pass so drift in machine load hits both alike
    sim_ms += _time_forward(sim, x, dev, repeats, 1)
    unet_ms += _time_forward(unet, x, dev, repeats, 1)

    names = ["background"] + [f"class_{i}" for i in range(1, n_classes)]
    meta = CheckpointMeta(class_names=names, memory="sim", depth=depth, click_radius=3, model=sim.config.to_dict())
    # the bare network, as timed above (the session default, tta, runs it on four flips)
    predictor = Predictor(Checkpoint(meta=meta, model=sim.cpu()), device=str(dev), tta=False)
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(4, size, size)).astype(np.float32)
    session = InteractiveSession(volume, predictor)
    overhead = []
    for r in range(warmup + repeats):
        clicks = [(c, rng.integers(0, size), rng.integers(0, size)) for c in range(n_classes)]
        res = session.add_clicks(r % 4, clicks)
        if r >= warmup:
            overhead.append(res.total_ms - predictor.last_forward_ms)

    result = {
        "device": str(dev),
        "size": int(size),
        "sim_ms": _stats(sim_ms),
        "unet_ms": _stats(unet_ms),
        "ratio": round(statistics.median(sim_ms) / statistics.median(unet_ms), 3),
        "session_overhead_ms": round(statistics.median(overhead), 3),
        "config": {"depth": depth, "n_classes": n_classes, "encoder": encoder, "channels": channels,
                   "batch": 1, "repeats": 2 * repeats, "torch_threads": torch.get_num_threads()},
    }
    log(f"inference benchmark on {dev}, {size}x{size}, batch 1, D={depth}, N={n_classes}, {encoder}")
    log(f"  {'network':<22}{'mean ms':>10}{'std':>8}{'median':>10}")
    for name, key in (("DDG-SIM (ConvLSTM)", "sim_ms"), ("plain smp U-Net", "unet_ms")):
        ms = result[key]
        log(f"  {name:<22}{ms['mean']:>10.2f}{ms['std']:>8.2f}{ms['median']:>10.2f}")
    log(f"  ratio (median) {result['ratio']:.2f}  (target <= 2.0)")
    log(f"  session overhead per round {result['session_overhead_ms']:.2f} ms  (target <= 15)")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1))
    return result


def benchmark_training(options: BenchmarkOptions | None = None, json_path: str | None = None, log=print,
                       **fields) -> dict:
    """Time a DDG-SIM training step (its no-grad rounds and virtual user included) and
    an SDG step of the same network on the same phantom batch and device.

    DDG runs all ``t = depth`` rounds here (``random_rounds`` off): the worst case; with
    the default random rounds a step costs on average two thirds of it."""
    from napari_simseg.core.data.phantom import make_phantom
    from napari_simseg.core.engine.data_generation import StepContext, training_step
    from napari_simseg.core.engine.losses import FocalLoss
    from napari_simseg.core.engine.train_config import TrainConfig

    o = replace(options or BenchmarkOptions(), **fields)
    device, size, batch_size, depth, n_classes = o.device, o.size or 64, o.batch_size, o.depth, o.n_classes
    encoder, repeats, warmup = o.encoder, o.repeats or 5, 2 if o.warmup is None else o.warmup
    dev = resolve_device(device)
    depth_z = max(4, batch_size)
    image, labels, names = make_phantom(shape=(depth_z, max(32, size), max(32, size)), seed=0)
    # the middle slices hold every class; the batch takes them
    mid = depth_z // 2 - batch_size // 2
    image, labels = image[mid : mid + batch_size, :size, :size], labels[mid : mid + batch_size, :size, :size]
    names = list(names)[:n_classes]
    labels = np.minimum(labels, len(names) - 1)
    n = len(names)
    img = (image - image.mean()) / (image.std() + 1e-6)
    batch = {
        "image": torch.from_numpy(img[:, None].astype(np.float32)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
    }
    # the precision `simseg train` uses (TrainConfig.amp): float16 on CUDA, bfloat16 on a CPU with it
    amp = dev.type == "cuda" or (dev.type == "cpu" and cpu_bf16_supported())

    def autocast():
        return autocast_for(dev, amp)

    result = {"device": str(dev), "precision": ("float16" if dev.type == "cuda" else "bfloat16") if amp else "float32"}
    for name, sim_kind in (("ddg", "ddg"), ("sdg", "sdg")):
        # the same network (SIM memory, ConvLSTM decoder) for both: only the simulation differs
        cfg = TrainConfig(
            data="-",
            out="-",
            memory="sim",
            depth=depth,
            max_clicks=depth,
            decoder="convlstm",
            simulation=sim_kind,
            encoder=encoder,
            random_rounds=False,
        )
        torch.manual_seed(0)
        net = build_model(cfg.model_config(n)).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        loss_fn = FocalLoss(None)
        rng = np.random.default_rng(0)
        context = StepContext(net, net, cfg, n, dev, autocast, loss_fn, opt, scaler)
        ms = []
        for i in range(warmup + repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            training_step(context, batch, rng)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                ms.append((time.perf_counter() - t0) * 1e3)
        result[f"{name}_step_ms"] = round(statistics.median(ms), 2)
    result["ratio"] = round(result["ddg_step_ms"] / result["sdg_step_ms"], 3)
    result["config"] = {
        "size": size,
        "batch_size": batch_size,
        "depth": depth,
        "n_classes": n,
        "encoder": encoder,
        "repeats": repeats,
    }
    log(
        f"training-step benchmark on {dev} ({result['precision']}): batch {batch_size} x {size}x{size}, D={depth}, "
        f"N={n}, {encoder}"
    )
    log(f"  DDG-SIM step {result['ddg_step_ms']:.1f} ms (t-1 no-grad rounds + virtual user + training step)")
    log(f"  SDG step     {result['sdg_step_ms']:.1f} ms")
    log(f"  ratio {result['ratio']:.2f}  (target <= 2.0)")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------- rounds at real sizes
def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KB on Linux


def _synthetic_image(shape, seed: int = 0) -> np.ndarray:
    """Noise with a few bright discs: something for the network to segment, at any size."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, size=shape).astype(np.float32)
    h, w = shape[-2:]
    yy, xx = np.ogrid[:h, :w]
    for cy, cx, r in ((0.5, 0.5, 0.03), (0.3, 0.6, 0.05), (0.7, 0.35, 0.04)):
        image[..., (yy - cy * h) ** 2 + (xx - cx * w) ** 2 < (r * min(h, w)) ** 2] += 60
    return image


def round_scenario(checkpoint: str, device: str, size: int, repeats: int) -> dict:
    """Median time of a round with clicks on one structure of a ``size`` x ``size`` slice,
    and the process's peak resident memory (run it in a fresh process)."""
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(_synthetic_image((size, size)), checkpoint, device=device)
    rng = np.random.default_rng(0)
    ms, boxes = [], []
    centre = size / 2
    for r in range(repeats + 1):
        jitter = rng.uniform(-15, 15, size=(3, 2))
        clicks = [(c, centre + dy, centre + dx) for c, (dy, dx) in zip((1, 2, 0), jitter)]
        res = session.add_clicks(None, clicks)
        if r:  # the first round loads and warms up
            ms.append(res.total_ms)
        boxes.append(res.box)
    return {
        "size": size,
        "round_ms": _stats(ms),
        "region": list(boxes[-1]),
        "rounds": repeats,
        "peak_rss_gb": round(_peak_rss_bytes() / 2**30, 3),
    }


def auto_scenario(checkpoint: str, device: str, depth: int, size: int, slices: int) -> dict:
    """Automatic segmentation of the first ``slices`` slices of a ``depth x size x size``
    volume: seconds per slice and the process's peak resident memory."""
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(_synthetic_image((depth, size, size)), checkpoint, device=device)
    t0 = time.perf_counter()
    for _ in session.iter_auto(range(min(slices, depth))):
        pass
    seconds = time.perf_counter() - t0
    return {
        "volume": [depth, size, size],
        "slices_done": min(slices, depth),
        "seconds_per_slice": round(seconds / min(slices, depth), 3),
        "peak_rss_gb": round(_peak_rss_bytes() / 2**30, 3),
    }


def _in_fresh_process(function: str, *args) -> dict:
    """Run one scenario in a new Python process, so its peak memory is its own."""
    import subprocess
    import sys

    code = (
        "import json, sys; from napari_simseg.core.jobs import benchmark as b; "
        f"print(json.dumps(b.{function}(*json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(args))],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark scenario {function}{args} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark_rounds(
    checkpoint: str = "demo",
    device: str = "cpu",
    sizes=(512, 2048),
    auto_volume=(300, 512),
    auto_slices: int = 8,
    repeats: int = 10,
    json_path: str | None = None,
    log=print,
) -> dict:
    """Rounds and automatic segmentation at real image sizes, each in a fresh process.

    A round clicks three classes around the middle of a synthetic slice (so the
    session's region covers one structure); the automatic run segments the first
    ``auto_slices`` slices of a ``depth x size x size`` volume (its memory does not grow
    with the slices done: labels are all the session keeps of them). Figures are
    printed and written as JSON; nothing here asserts a time.
    """
    result = {
        "checkpoint": str(checkpoint),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "round": [],
        "auto_volume": None,
    }
    for size in sizes:
        res = _in_fresh_process("round_scenario", checkpoint, device, int(size), int(repeats))
        result["round"].append(res)
        log(
            f"round on a {size}x{size} slice: {res['round_ms']['median']:.0f} ms median "
            f"(region {res['region']}), peak memory {res['peak_rss_gb']:.2f} GB"
        )
    if auto_volume:
        depth, size = auto_volume
        res = _in_fresh_process("auto_scenario", checkpoint, device, int(depth), int(size), int(auto_slices))
        result["auto_volume"] = res
        log(
            f"automatic segmentation of a {depth}x{size}x{size} volume ({res['slices_done']} slices done): "
            f"{res['seconds_per_slice']:.2f} s per slice, peak memory {res['peak_rss_gb']:.2f} GB"
        )
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------- the default recipe
def benchmark_recipe(
    data: str | None = None,
    device: str = "cpu",
    max_minutes: float = 20.0,
    useful_dice: float = 0.8,
    out: str | None = None,
    json_path: str | None = None,
    log=print,
) -> dict:
    """The default recipe's speed here and, with ``data``, its time to a first useful checkpoint.

    Without ``data``: the recipe for 2D radiographs of 1024 x 1024 pixels with five
    structures (the working size, crop and batch it picks), and its seconds per
    training step timed on random data. With ``data``: the recipe for that folder, its
    step timed the same way, then a real training run that stops at the first epoch whose
    validation score (mean foreground Dice at 3 clicks) reaches ``useful_dice``: the
    minutes to that first useful checkpoint. The run is written to ``out`` and kept, or,
    without ``out``, to a temporary folder deleted afterwards (``run`` is then ``None``
    in the result).
    """
    import tempfile

    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.engine.train_config import TrainConfig
    from napari_simseg.core.jobs.recipe import case_shapes, default_recipe, estimate_step_seconds, item_shape
    from napari_simseg.core.jobs.training import train

    if data is None:
        shapes, names, channels = (
            [(1024, 1024)] * 8,
            ["background", "right lung", "left lung", "heart", "right clavicle", "left clavicle"],
            ["image"],
        )
    else:
        spec = discover_dataset(data)
        shapes, names, channels = case_shapes(spec), list(spec.class_names), list(spec.channel_names)
    options = default_recipe(
        shapes, names, channels, max_minutes=max_minutes, n_cases=len(spec.cases) if data is not None else None
    )
    item = item_shape(options, shapes)
    step_s = estimate_step_seconds(options, len(names), len(channels), item, device=device)
    result = {
        "data": data or "synthetic 1024x1024 radiograph shapes",
        "device": str(device),
        "working_size": options["working_size"],
        "item_shape": list(item),
        "batch_size": options["batch_size"],
        "seconds_per_step": round(step_s, 3),
        "steps_per_second": round(1.0 / step_s, 2),
        "torch_threads": torch.get_num_threads(),
    }
    log(
        f"default recipe: working size {options['working_size'] or 'own'}, items {item[0]}x{item[1]}, batch "
        f"{options['batch_size']}: {step_s:.2f} s per step ({1 / step_s:.2f} steps/s, all DDG rounds)"
    )
    if data is not None:
        scratch = None if out else tempfile.TemporaryDirectory(prefix="simseg-bench-")
        folder = Path(out) if out else Path(scratch.name)
        reached: dict = {}

        def on_epoch(row):
            if row.get("score", 0) >= useful_dice and not reached:
                reached.update(minutes=row["minutes"], epoch=row["epoch"], score=row["score"])
            return bool(reached)

        cfg = TrainConfig(data=str(data), out=str(folder), device=device, progress=False, **options)
        t0 = time.monotonic()
        try:
            train(cfg.validate(), log=lambda m: None, on_epoch=on_epoch)
        finally:
            if scratch is not None:
                scratch.cleanup()
        result.update(
            useful_dice=useful_dice,
            run=str(folder) if out else None,
            minutes_run=round((time.monotonic() - t0) / 60, 2),
            first_useful=reached or None,
        )
        log(
            f"first checkpoint with validation Dice >= {useful_dice} at 3 clicks: "
            + (
                f"{reached['minutes']:.1f} min (epoch {reached['epoch']}, {reached['score']:.3f})"
                if reached
                else f"not within {max_minutes} min"
            )
        )
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1))
    return result
