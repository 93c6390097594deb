"""The ``simseg`` command: ``train``, ``evaluate``, ``calibrate``, ``average``, ``benchmark``,
``report``, ``check-data`` and ``demo``."""

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
        elif base in (list, list) or typing.get_origin(base) is list:
            parser.add_argument(flag, dest=f.name, type=_parse_list, default=None, metavar="A,B,...", help=text)
        elif base in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=base, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text)


def main_train(args) -> int:
    """``simseg train``: the YAML ``--config`` (else the default recipe for the data),
    overridden by the flags typed; prints the best checkpoint last."""
    import os

    import yaml

    from napari_simseg.core.jobs.training import TrainConfig, train

    typed = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if args.config:
        try:
            values = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"simseg train: cannot read config {args.config}: {exc}", file=sys.stderr)
            return 2
    else:
        values = _recipe_values(typed)
    values.update(typed)
    if "steps_per_epoch" in typed:
        values["plan_steps"] = False  # the user's own schedule
    if not args.config and typed.get("data") and int(os.environ.get("RANK", "0")) == 0:
        from napari_simseg.core.jobs.recipe import describe_recipe

        print(describe_recipe(values), flush=True)
    try:
        cfg = TrainConfig.from_dict(values).validate()
    except (TypeError, ValueError) as exc:
        print(f"simseg train: {exc}", file=sys.stderr)
        return 2
    # the run's warnings (classes not learnt, a budget too short) also reach a terminal whose
    # output goes to a file; the exit status stays 0: the checkpoint is whole and may serve
    # the classes it did learn
    best = train(cfg, log=lambda m: print(m, file=sys.stderr if m.startswith("WARNING") else sys.stdout, flush=True))
    if int(os.environ.get("RANK", "0")) == 0:
        from shlex import quote

        print(f"next: simseg calibrate --checkpoint {quote(str(best))} --data {quote(str(cfg.data))} --split train "
              f"--output {quote(str(Path(best).with_name('calibrated.safetensors')))}  (fits decision offsets and "
              "picks whether a slice's first rounds show the network's own labels)", flush=True)
        print(best, flush=True)
    return 0


def _recipe_values(typed: dict) -> dict:
    """The default recipe's options for ``typed["data"]``."""
    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.jobs.recipe import case_shapes, default_recipe

    if not typed.get("data"):
        return {}  # TrainConfig.validate says what is missing
    spec = discover_dataset(typed["data"])
    return default_recipe(case_shapes(spec), spec.class_names, spec.channel_names,
                          max_minutes=typed.get("max_minutes") or 20.0, n_cases=len(spec.cases))


def main_benchmark(args) -> int:
    """``simseg benchmark``: inference latency; ``--round``: rounds and automatic mode at real
    sizes; ``--train``: the training-step cost and the default recipe's steps per second
    (with ``--data``, its minutes to a first useful checkpoint)."""
    import json

    from napari_simseg.core.jobs.benchmark import benchmark_inference, benchmark_rounds, benchmark_training

    if args.round:
        auto = None
        if args.auto_volume:
            depth, size = (int(v) for v in args.auto_volume.lower().split("x"))
            auto = (depth, size)
        benchmark_rounds(checkpoint=args.checkpoint, device=args.device, json_path=args.json,
                         sizes=[int(s) for s in args.sizes.split(",")], auto_volume=auto,
                         auto_slices=args.auto_slices, repeats=args.repeats or 10)
    elif args.train and args.recipe:
        from napari_simseg.core.jobs.benchmark import benchmark_recipe

        benchmark_recipe(data=args.data, device=args.device, max_minutes=args.max_minutes,
                         useful_dice=args.useful_dice, out=args.out, json_path=args.json)
    elif args.train:
        from napari_simseg.core.io.atomic import atomic_write_text
        from napari_simseg.core.jobs.benchmark import benchmark_recipe

        result = benchmark_training(device=args.device, encoder=args.encoder, size=args.size or 64,
                                    batch_size=args.batch_size, repeats=args.repeats or 5)
        result["recipe"] = benchmark_recipe(data=args.data, device=args.device, max_minutes=args.max_minutes,
                                            useful_dice=args.useful_dice, out=args.out)
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=1))
    else:
        benchmark_inference(device=args.device, size=args.size or 256, json_path=args.json,
                            encoder=args.encoder, repeats=args.repeats or 20)
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``simseg evaluate``."""
    p.add_argument("--checkpoint", default="demo", help="checkpoint file, or 'demo' (default)")
    p.add_argument("--data", required=True, help="dataset folder (MSD layout or images/ + labels/)")
    p.add_argument("--split", default=None, choices=["all", "train", "val", "test"],
                   help="which volumes (default: test, else val, of a saved split that applies; 'all' when "
                        "none does)")
    p.add_argument("--split-file", default=None,
                   help="split.json to use (default: DIR/split.json, else the checkpoint folder's, each only when "
                        "its cases are this data set's: another folder is evaluated whole)")
    p.add_argument("--clicks", default="0,1,2,3,6",
                   help="rounds to report, e.g. 0,1,2,3,6: per slice (--protocol slice) or per volume (volume)")
    p.add_argument("--protocol", default="slice", choices=["slice", "volume"],
                   help="slice (default): every slice gets its own rounds; volume: each round corrects the "
                        "slice with the largest error and propagates it (one interactive session per volume)")
    p.add_argument("--method", default="model", choices=["model", "random_walker", "grabcut"])
    p.add_argument("--memory", default=None, choices=["none", "cim", "sim"],
                   help="override the checkpoint's memory (e.g. cim for SDG-CIM on an SDG-base model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="slices per forward pass")
    p.add_argument("--locality", default="click", choices=["click", "connected", "none"],
                   help="what a corrective round may change of the labels shown before it: 'click' (default: "
                        "only pixels turning to a clicked class, connected to that click), 'connected' (any "
                        "change connected to a click) or 'none' (the network's new labels everywhere)")
    p.add_argument("--no-follow-clicks", dest="follow_clicks", action="store_false",
                   help="do not spread a click's class around a click the network's labels contradict")
    p.add_argument("--min-lead", type=float, default=None,
                   help="a pixel the network changes keeps its old label unless its new class leads the "
                        "runner-up by this much in log-probability (default log 2; 0: any win)")
    p.add_argument("--spread", type=float, default=None,
                   help="spread each click's class over the region it corrects, where the network finds it "
                        "within this log-probability of its top class (0: off)")
    p.add_argument("--zoom", type=float, default=None,
                   help="where the working grid is coarser than the image, refine each click in a focus "
                        "view up to this many times finer than the working grid (1: off)")
    p.add_argument("--network-rounds", type=int, default=None,
                   help="show the network's own labels, unrefined, in each slice's first N corrective rounds "
                        "(default: the number simseg calibrate chose for the checkpoint, else 0)")
    p.add_argument("--noc-clicks", type=int, default=0,
                   help="also compute NoC@85/90/95 with this click budget, e.g. 20 (runs that many "
                        "rounds on every slice; default 0: no NoC)")
    p.add_argument("--max-volumes", type=int, default=None, help="evaluate only the first N volumes")
    p.add_argument("--max-slices", type=int, default=None,
                   help="stop after the volume that brings the slices evaluated to N")
    p.add_argument("--axis", type=int, default=None, help="slicing axis (default: the checkpoint's)")
    p.add_argument("--no-honour-clicks", dest="honour_clicks", action="store_false",
                   help="score the network's argmax alone, without giving clicked pixels their class")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="run the network once per round instead of averaging it over four flips")
    p.add_argument("--no-decision-offsets", dest="decision_offsets", action="store_false",
                   help="decide labels by the plain argmax, ignoring the checkpoint's calibrated "
                        "per-class offsets")
    p.add_argument("--name", default=None, help="row name in tables and plots")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG of Dice per class against clicks")
    p.add_argument("--table", default=None, help="Markdown table (IoU and Dice per class)")


def main_evaluate(args) -> int:
    """``simseg evaluate``: print the report; write the JSON, table and plot asked for."""
    import json

    from napari_simseg.core.interaction.refinement import Refinement
    from napari_simseg.core.io.atomic import atomic_write_text
    from napari_simseg.core.jobs.evaluation import evaluate, format_report, write_plot, write_table

    clicks = [int(k) for k in str(args.clicks).split(",") if k.strip()]
    result = evaluate(
        checkpoint=args.checkpoint, data=args.data, split=args.split, split_file=args.split_file,
        clicks=clicks, method=args.method, memory=args.memory, device=args.device,
        batch_size=args.batch_size, noc_clicks=args.noc_clicks, max_volumes=args.max_volumes,
        max_slices=args.max_slices,
        axis=args.axis, name=args.name, honour_clicks=args.honour_clicks,
        tta=args.tta, decision_offsets=args.decision_offsets, protocol=args.protocol,
        refinement=Refinement(locality=args.locality, follow_clicks=args.follow_clicks,
                              **({} if args.min_lead is None else {"min_lead": args.min_lead}),
                              **({} if args.zoom is None else {"zoom": args.zoom}),
                              **({} if args.spread is None else {"spread": args.spread}),
                              network_rounds=args.network_rounds),
    )
    print(format_report(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    if args.table:
        write_table([result], args.table)
    if args.plot:
        write_plot([result], args.plot)
    return 0


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``simseg calibrate``."""
    p.add_argument("--checkpoint", default="demo", help="checkpoint file, or 'demo'")
    p.add_argument("--data", required=True, help="dataset folder the checkpoint was trained on")
    p.add_argument("--output", required=True,
                   help="checkpoint to write (may equal --checkpoint to update it in place)")
    p.add_argument("--split", default="train", choices=["train", "all", "val", "test"],
                   help="volumes to fit on (default: train; never the split you report)")
    p.add_argument("--split-file", default=None,
                   help="split.json (default: DIR/split.json, else the checkpoint folder's)")
    p.add_argument("--max-volumes", type=int, default=40, help="fit on the first N volumes (0: all)")
    p.add_argument("--rounds", type=int, default=3, help="click rounds to fit over (0..N)")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="fit for the network run once per round instead of flip averaging")
    p.add_argument("--no-offsets", dest="offsets", action="store_false",
                   help="keep the checkpoint's decision offsets as they are (only choose the network rounds)")
    p.add_argument("--choice-rounds", type=int, default=10,
                   help="rounds per slice when choosing whether a slice's first rounds show the network's own "
                        "labels (0: no choice, the checkpoint's stays)")
    p.add_argument("--choice-slices", type=int, default=32,
                   help="that choice runs on the split's first volumes until this many slices are reached "
                        "(default 32; each volume whole)")
    p.add_argument("--device", default="auto")


def main_calibrate(args) -> int:
    """``simseg calibrate``: fit and write; print the offsets and the objective as JSON."""
    import json

    from napari_simseg.core.jobs.calibration import calibrate

    result = calibrate(args.checkpoint, args.data, args.output, split=args.split,
                       split_file=args.split_file, max_volumes=args.max_volumes or None,
                       rounds=args.rounds, tta=args.tta, device=args.device, offsets=args.offsets,
                       choice_rounds=args.choice_rounds, choice_slices=args.choice_slices)
    print(json.dumps({k: result[k] for k in ("offsets", "dice_before", "dice_after", "volumes", "network_rounds")}))
    return 0


def main_average(args) -> int:
    """``simseg average``: write the weighted mean of several checkpoints."""
    from napari_simseg.core.jobs.averaging import average_checkpoints

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


def main_report(args) -> int:
    """``simseg report``: several evaluation JSONs as one table and plot."""
    import json

    from napari_simseg.core.jobs.evaluation import format_report, write_plot, write_table

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


def add_check_data_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``simseg check-data``."""
    p.add_argument("data", help="data set folder (MSD, nnU-Net, images/ + labels/ or images/ + masks/<class>/)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")


def main_check_data(args) -> int:
    """``simseg check-data``: print what the folder holds; exit 0 when usable, 2 otherwise."""
    import json

    from napari_simseg.core.io.atomic import atomic_write_text
    from napari_simseg.core.jobs.datacheck import check_data, format_data_check

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rchecked {done}/{total} case(s)", end="\n" if done == total else "", file=sys.stderr,
                  flush=True)

    summary = check_data(args.data, progress=progress)
    print(format_data_check(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=1))
    return 0 if summary["usable"] else 2


def main_demo(args) -> int:
    """``simseg demo``: napari with the sample and the demo model, or ``--headless``."""
    from napari_simseg.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    from napari_simseg.core.jobs.training import TrainConfig

    parser = argparse.ArgumentParser(
        prog="simseg",
        description="Interactive multi-class medical image segmentation (DDG-SIM).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network on labelled volumes",
                       description="Train a SimSeg network. Options override the YAML --config.")
    p.add_argument("--config", help="YAML file with training options (see training/configs/)")
    _add_dataclass_options(p, TrainConfig)
    p.set_defaults(func=main_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint with the virtual user")
    add_evaluate_arguments(p)
    p.set_defaults(func=main_evaluate)

    p = sub.add_parser("calibrate", help="fit per-class decision offsets on the training split",
                       description="Fit the per-class offsets that turn the network's probabilities "
                                   "into labels (see napari_simseg.core.jobs.calibration) and write a "
                                   "checkpoint carrying them.")
    add_calibrate_arguments(p)
    p.set_defaults(func=main_calibrate)

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
    p.set_defaults(func=main_average)

    p = sub.add_parser("benchmark", help="measure latency and training-step cost")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    p.add_argument("--size", type=int, default=None, help="slice size (default 256; 64 with --train)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--train", action="store_true", help="time a DDG-SIM vs an SDG training step")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--batch-size", type=int, default=4, help="batch size for --train")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats (default 20; 5 with --train; 10 rounds with --round)")
    p.add_argument("--round", action="store_true",
                   help="time rounds and automatic mode of a checkpoint at real image sizes, with peak memory")
    p.add_argument("--checkpoint", default="demo", help="checkpoint for --round (default: the bundled model)")
    p.add_argument("--sizes", default="512,2048", help="slice sizes for --round rounds")
    p.add_argument("--auto-volume", default="300x512", help="DEPTHxSIZE volume for --round's automatic run")
    p.add_argument("--auto-slices", type=int, default=8, help="slices of that volume to segment")
    p.add_argument("--recipe", action="store_true",
                   help="with --train: only the default recipe's figures (--train alone adds them to the "
                        "DDG/SDG step times under 'recipe')")
    p.add_argument("--data", default=None,
                   help="with --train: time the recipe for this folder and train it to a first useful checkpoint "
                        "(default: the recipe for 1024x1024 radiograph shapes, timed only)")
    p.add_argument("--max-minutes", type=float, default=20.0, help="budget of the --train --recipe run")
    p.add_argument("--out", default=None,
                   help="keep the --train --data run's folder here (default: a temporary folder, deleted afterwards)")
    p.add_argument("--useful-dice", type=float, default=0.8,
                   help="validation Dice at 3 clicks that makes a checkpoint useful (--train --recipe --data)")
    p.set_defaults(func=main_benchmark)

    p = sub.add_parser("report", help="combine evaluation JSONs into one table and plot")
    p.add_argument("--json", nargs="+", required=True, help="results written by simseg evaluate --json")
    p.add_argument("--table", help="Markdown table (one row per result, or per click count)")
    p.add_argument("--plot", help="PNG, one panel per result: Dice per class against clicks")
    p.add_argument("--clicks", type=int, default=None, help="only this click count in the table")
    p.add_argument("--title", default=None)
    p.set_defaults(func=main_report)

    p = sub.add_parser("check-data", help="check a data set folder before training",
                       description="Read every case of a data set folder once and print its layout, "
                                   "cases, classes (voxels per class), channels, shapes, spacings, mask "
                                   "overlaps, notes and problems (by file), and the working resolution and "
                                   "seconds per training step `simseg train` would use here. Exit status 0 "
                                   "when at least 2 cases are usable, 2 otherwise.")
    add_check_data_arguments(p)
    p.set_defaults(func=main_check_data)

    p = sub.add_parser("demo", help="open napari with the sample and the demo model")
    p.add_argument("--headless", action="store_true",
                   help="no GUI: run the evaluation virtual user on the sample and print Dice per class")
    p.add_argument("--checkpoint", default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--clicks", default="0,1,2,3")
    p.set_defaults(func=main_demo)
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
