"""``hwprune prune``: search, fine-tune, prove the budgets, export, report (resumable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Defaults of options a config file or the command line may set (None: decided by prune()).
DEFAULTS: dict[str, Any] = {
    "model": None, "weights": None, "width": None, "data": "digits", "data_root": None,
    "budgets": None, "oracles": None, "agent": "ppo-lagrangian", "evaluations": 100,
    "finetune_epochs": 5, "finetune_lr": 0.01, "finetune_batch_size": 128, "distill": False,
    "seed": 0, "round_to": None, "min_keep": 0.1,
    "granularity": "channel", "importance": "l2", "device": "cpu", "opset": 17, "tensorrt": True,
    "out": None, "overwrite": False,
}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model until it meets budgets measured on the serving runtime",
        description=(
            "Measure the dense model, search per-layer pruning with an agent, fine-tune the best "
            "candidate, re-measure it with every budget's oracle, export ONNX (and TensorRT "
            "where installed) and write a report into the run directory."
        ),
        epilog=(
            "example: hwprune prune --model vgg11_cifar --weights vgg.pt --data digits "
            "--budget 'latency<=50%%' --agent ppo-lagrangian --evaluations 100 --out runs/vgg"
        ),
    )
    add_options(p)
    p.add_argument("--demo", action="store_true",
                   help="run the built-in demo (same as 'hwprune demo')")  # fmt: skip
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser) -> None:
    """The prune options (defaults None so a config file's values are not overridden silently)."""
    p.add_argument("--config", metavar="FILE", help="TOML (or YAML with pyyaml) file of options; "
                   "command-line values override it")  # fmt: skip
    p.add_argument("--model", help="registered model name or package.module:callable")
    p.add_argument("--weights", metavar="CKPT", help="checkpoint of the dense model (weights only)")
    p.add_argument("--width", type=float, help="width multiplier of *_cifar models")
    p.add_argument("--data", help="dataset: digits (built in), cifar10, cifar100, imagefolder:PATH")
    p.add_argument("--data-root", help="folder of downloadable datasets")
    p.add_argument("--budget", action="append", dest="budgets", metavar="B",
                   help="budget such as 'latency<=50%%', 'latency<=2.5ms', 'params<=1M' "
                   "(repeatable)")  # fmt: skip
    p.add_argument("--oracle", action="append", dest="oracles", metavar="QUANTITY=SPEC",
                   help="oracle judging a quantity, e.g. latency=onnxruntime:cpu?threads=1")  # fmt: skip
    p.add_argument("--agent", help="searcher: ppo-lagrangian, qlp, amc, uniform, global-magnitude, "
                   "random (default ppo-lagrangian)")  # fmt: skip
    p.add_argument("--evaluations", type=int, help="candidates to evaluate (default 100)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 5)")
    p.add_argument("--finetune-lr", type=float,
                   help="peak learning rate of fine-tuning (default 0.01; cosine schedule)")  # fmt: skip
    p.add_argument("--finetune-batch-size", type=int,
                   help="fine-tuning batch size (default 128; a small training set wants fewer, "
                   "for more steps per epoch)")  # fmt: skip
    p.add_argument("--distill", action="store_true", default=None,
                   help="distil from the dense model while fine-tuning")  # fmt: skip
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (options from its "
                   "config.json)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing run in --out")  # fmt: skip
    p.add_argument("--seed", type=int)
    p.add_argument("--round-to", type=int, help="channel multiple (default 1; 8 for GPU oracles)")
    p.add_argument("--min-keep", type=float, help="smallest fraction kept per unit (default 0.1)")
    p.add_argument("--granularity", choices=["channel", "weight", "2:4"])
    p.add_argument("--importance", help="channel importance: l1, l2, taylor, random (default l2)")
    p.add_argument("--device", help="training/evaluation device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--opset", type=int, help="ONNX opset of the export (default 17)")
    p.add_argument("--no-tensorrt", dest="tensorrt", action="store_false", default=None,
                   help="do not build a TensorRT engine even where TensorRT is installed")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def collect_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the config file, then the command line."""
    from hwprune.pipeline import read_config_file

    options = dict(DEFAULTS)
    if getattr(args, "config", None):
        options.update(read_config_file(args.config))
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    return options


class ProgressView:
    """Rich progress bars, one per stage, fed by the pipeline's ProgressEvents."""

    STAGES = {
        "load": "load data and model",
        "dense": "measure dense model",
        "search": "search",
        "finetune": "fine-tune",
        "verify": "verify budgets",
        "export": "export",
    }

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        stage = event.stage
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(
                self.STAGES.get(stage, stage), total=event.total, info=""
            )
        self.progress.update(
            self.tasks[stage], completed=event.done, total=event.total, info=self._info(event)
        )

    @staticmethod
    def _info(event: Any) -> str:
        info = event.info or {}
        parts = []
        acc = info.get("best_feasible_accuracy")
        if event.stage == "search":
            parts.append("best feasible: " + ("-" if acc is None else f"{100 * acc:.1f}%"))
            values = info.get("values") or {}
            parts += [f"{k}={v:.4g}" for k, v in values.items()]
        elif event.stage == "finetune" and info.get("search_accuracy") is not None:
            parts.append(f"search acc {100 * info['search_accuracy']:.1f}%")
        elif event.stage == "verify" and "met" in info:
            parts += [f"{k}: {'met' if ok else 'MISSED'}" for k, ok in info["met"].items()]
        elif event.message:
            parts.append(event.message)
        return "  ".join(parts)


def summary_table(result: Any) -> Any:
    """A rich table: per budget dense, bound, final re-measured value, met."""
    from rich.table import Table

    from hwprune.constraints import format_value

    table = Table(title="budgets (final model re-measured without cache)")
    for col in ("budget", "oracle", "dense", "bound", "final", "met", "margin"):
        table.add_column(col)
    for b in result.budgets:
        table.add_row(
            b.budget, b.oracle, format_value(b.dense, b.unit), format_value(b.bound, b.unit),
            format_value(b.final, b.unit), "yes" if b.met else "NO", f"{100 * b.margin:.1f}%",
        )  # fmt: skip
    return table


def print_result(result: Any, *, as_json: bool) -> None:
    from hwprune.cli._console import console

    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    console.print(summary_table(result))
    console.print(
        f"accuracy (test): dense {100 * result.accuracy_dense:.2f}%, pruned "
        f"{100 * result.accuracy_pruned:.2f}%, fine-tuned {100 * result.accuracy_finetuned:.2f}%; "
        f"parameters {result.params_dense:,} -> {result.params_final:,}",
        highlight=False,
    )
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    console.print(f"stage wall times: {times}", highlight=False)
    from rich.markup import escape

    console.print(f"TensorRT: {escape(result.tensorrt)}", highlight=False)
    console.print(f"report: {Path(result.run_dir) / 'report.md'}", highlight=False)


def execute(options: dict[str, Any], *, resume_dir: str | None, quiet: bool, as_json: bool) -> int:
    """Run (or resume) a prune with progress bars; Ctrl-C leaves the run resumable (exit 130)."""
    import contextlib
    import warnings

    from hwprune import pipeline
    from hwprune.cli._console import err_console
    from hwprune.errors import ConfigError

    # Library chatter (gymnasium dtype casts, SB3 creating folders) is not for the user.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(gymnasium|stable_baselines3)")
    run_dir = resume_dir or options.get("out")
    show = not (quiet or as_json)
    view = ProgressView(err_console) if show else None
    try:
        with view if view is not None else contextlib.nullcontext():
            if resume_dir:
                result = pipeline.resume(resume_dir, progress=view)
            else:
                if not options.get("model"):
                    raise ConfigError(
                        "--model is required (a registered name or package.module:callable)"
                    )
                if not options.get("budgets"):
                    raise ConfigError(
                        "at least one --budget is required, e.g. --budget 'latency<=50%'"
                    )
                if not options.get("out"):
                    raise ConfigError("--out RUN_DIR is required (the run directory to create)")
                kwargs = {k: v for k, v in options.items() if v is not None or k in ("round_to",)}
                result = pipeline.prune(**kwargs, progress=view)
    except KeyboardInterrupt:
        if run_dir and (Path(run_dir) / "config.json").is_file():
            err_console.print(
                f"interrupted; everything measured is kept. Resume with: hwprune prune --resume {run_dir}",
                highlight=False,
            )
        else:
            err_console.print("interrupted", highlight=False)
        return 130
    print_result(result, as_json=as_json)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.demo:
        from hwprune.cli.demo import run_demo

        return run_demo(quiet=args.quiet, as_json=args.json, out=args.out,
                        overwrite=bool(args.overwrite))  # fmt: skip
    if args.resume:
        return execute({}, resume_dir=args.resume, quiet=args.quiet, as_json=args.json)
    return execute(collect_options(args), resume_dir=None, quiet=args.quiet, as_json=args.json)
