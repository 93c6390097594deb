"""The ``simseg`` command: ``train``, ``evaluate``, ``calibrate``, ``average``, ``benchmark``,
``report`` and ``demo``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

__all__ = ["main"]


def _parse_list(text: str) -> list:
    items = [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        return [int(t) for t in items]
    except ValueError:
        return items


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--kebab-case`` option per dataclass field; defaults stay None so that
    only what the user typed overrides the YAML config."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        text = f"default: {default}"
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif base in (list, typing.List) or typing.get_origin(base) is list:
            parser.add_argument(flag, dest=f.name, type=_parse_list, default=None, metavar="A,B,...", help=text)
        elif base in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=base, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text)


def _train(args) -> int:
    import yaml

    from .core.training import TrainConfig, train

    values = {}
    if args.config:
        try:
            values = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"simseg train: cannot read config {args.config}: {exc}", file=sys.stderr)
            return 2
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    try:
        cfg = TrainConfig.from_dict(values).validate()
    except (TypeError, ValueError) as exc:
        print(f"simseg train: {exc}", file=sys.stderr)
        return 2
    best = train(cfg, log=lambda m: print(m, flush=True))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(best, flush=True)
    return 0


def _benchmark(args) -> int:
    from .core.benchmark import benchmark_inference, benchmark_training

    if args.train:
        benchmark_training(device=args.device, json_path=args.json, encoder=args.encoder,
                           size=args.size or 64, batch_size=args.batch_size, repeats=args.repeats or 5)
    else:
        benchmark_inference(device=args.device, size=args.size or 256, json_path=args.json,
                            encoder=args.encoder, repeats=args.repeats or 20)
    return 0


def _evaluate(args) -> int:
    from .core.evaluation import main_evaluate

    return main_evaluate(args)


def _calibrate(args) -> int:
    from .core.calibration import main_calibrate

    return main_calibrate(args)


def _average(args) -> int:
    from .core.checkpoint import average_checkpoints

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    out = average_checkpoints(args.checkpoints, args.output, weights=weights, half=args.half)
    print(f"{out}: average of {len(args.checkpoints)} checkpoints "
          f"({out.stat().st_size / 2**20:.1f} MB), no decision offsets: run `simseg calibrate` "
          f"on it to fit them")
    return 0


def _report(args) -> int:
    import json

    from .core.evaluation import format_report, write_plot, write_table

    results = []
    for path in args.json:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read evaluation result {path}: {exc}") from None
    for res in results:
        print(format_report(res))
        print()
    if args.table:
        write_table(results, args.table, clicks=args.clicks)
        print(Path(args.table).read_text())
    if args.plot:
        write_plot(results, args.plot, title=args.title)
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    from .core.training import TrainConfig

    parser = argparse.ArgumentParser(
        prog="simseg",
        description="Interactive multi-class medical image segmentation (DDG-SIM).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network on labelled volumes",
                       description="Train a SimSeg network. Options override the YAML --config.")
    p.add_argument("--config", help="YAML file with training options (see training/configs/)")
    _add_dataclass_options(p, TrainConfig)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint with the virtual user")
    from .core.evaluation import add_evaluate_arguments

    add_evaluate_arguments(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("calibrate", help="fit per-class decision offsets on the training split",
                       description="Fit the per-class offsets that turn the network's probabilities "
                                   "into labels (see napari_simseg.core.calibration) and write a "
                                   "checkpoint carrying them.")
    from .core.calibration import add_calibrate_arguments

    add_calibrate_arguments(p)
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("average", help="average the weights of fine-tuned checkpoints (model soup)",
                       description="Write one checkpoint whose weights are the (weighted) mean of "
                                   "several checkpoints of the same network, e.g. fine-tuning runs "
                                   "from one starting point (a uniform model soup). The result has "
                                   "no decision offsets: calibrate it with `simseg calibrate`.")
    p.add_argument("checkpoints", nargs="+", help="two or more .safetensors checkpoints")
    p.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    p.add_argument("--weights", default=None, help="comma-separated positive weights (default: equal)")
    p.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                   help="store float16 (default: only if every input is float16)")
    p.set_defaults(func=_average)

    p = sub.add_parser("benchmark", help="measure latency and training-step cost")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    p.add_argument("--size", type=int, default=None, help="slice size (default 256; 64 with --train)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--train", action="store_true", help="time a DDG-SIM vs an SDG training step")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--batch-size", type=int, default=4, help="batch size for --train")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 20; 5 with --train)")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("report", help="combine evaluation JSONs into one table and plot")
    p.add_argument("--json", nargs="+", required=True, help="results written by simseg evaluate --json")
    p.add_argument("--table", help="Markdown table (one row per result, or per click count)")
    p.add_argument("--plot", help="PNG, one panel per result: Dice per class against clicks")
    p.add_argument("--clicks", type=int, default=None, help="only this click count in the table")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="open napari with the sample and the demo model")
    p.add_argument("--headless", action="store_true",
                   help="no GUI: run the evaluation virtual user on the sample and print Dice per class")
    p.add_argument("--checkpoint", default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--clicks", default="0,1,2,3")
    p.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        # our errors are one actionable line; do not bury them in a traceback
        print(f"simseg {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
