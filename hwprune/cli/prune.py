"""``hwprune prune``: prune a model until it meets budgets measured on the serving runtime.

Measure the dense model, search per-layer pruning with an agent, fine-tune the best candidate,
re-measure it with every budget's oracle, export ONNX (and TensorRT where installed) and write a
report into the run directory. Your own model: --task package.module:factory, where factory()
returns (model, example_inputs, task) and task has score(model) and calibrate(model) (optionally
finetune(model, teacher) and evaluate(model)); see hwprune.task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from hwprune.cli._options import add_command, add_output_options

# Options that only start a new run: refused beside --resume (the run's config.json rules).
RUN_ONLY = ("out", "overwrite", "config")

EXAMPLE = (
    "example: hwprune prune --model vgg11_cifar --weights vgg.pt --data digits "
    "--budget 'latency<=50%' --agent ppo-lagrangian --evaluations 100 --out runs/vgg"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "prune", __doc__, run=run, epilog=EXAMPLE)
    add_options(p)
    p.add_argument("--demo", action="store_true",
                   help="run the built-in demo (same as 'hwprune demo')")  # fmt: skip


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else None
    if default in (None, (), {}) or f.metadata["kind"] == "bool":
        return ""
    return f" (default {default})"


def add_options(p: argparse.ArgumentParser) -> None:
    """The prune options, one per PruneConfig field (defaults None here, so a config file's
    values are overridden only by what the command line gives)."""
    from hwprune.config import PruneConfig

    p.add_argument("--config", metavar="FILE", help="TOML (or YAML with pyyaml) file of options "
                   "(names as below, e.g. task = \"pkg.mod:factory\"); the command line "
                   "overrides it")  # fmt: skip
    types = {"int": int, "float": float, "str": str, "path": str, "round_to": str}
    for f in dataclasses.fields(PruneConfig):
        meta, flag = f.metadata, _flag(f)
        # The fields' help is plain text ('latency<=50%'); argparse reads % as formatting.
        help_text = (meta["help"] + _default_text(f)).replace("%", "%%")
        if meta["kind"] == "bool":
            negate = bool(meta.get("negate"))
            action = "store_false" if negate else "store_true"
            text = f"do not {help_text}" if negate else help_text
            p.add_argument(flag, dest=f.name, action=action, default=None, help=text)
        elif meta["kind"] in ("strs", "oracles"):
            p.add_argument(flag, dest=f.name, action="append", metavar=meta.get("metavar"),
                           help=help_text)  # fmt: skip
        else:
            p.add_argument(flag, dest=f.name, type=types[meta["kind"]], help=help_text,
                           choices=meta.get("choices"), metavar=meta.get("metavar"))  # fmt: skip
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (every option from "
                   "its config.json; --evaluations may raise the budget)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing run in --out")  # fmt: skip
    add_output_options(p, json_help="print the result as JSON")


def collect_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's options, then the command line's (only those given)."""
    from hwprune.config import PruneConfig, read_config_file

    options: dict[str, Any] = {}
    given = vars(args)  # the parsed options by name; an option not given is None
    if args.config:
        options.update(read_config_file(args.config))
    for name in [f.name for f in dataclasses.fields(PruneConfig)] + ["out", "overwrite"]:
        value = given.get(name)
        if value is not None:
            options[name] = value
    return options


def summary_table(result: Any) -> Any:
    """A rich table: per budget (its oracle beneath it) dense, bound, final re-measured value, met.

    The oracle sits under its budget rather than in a column of its own and the box has no
    inner rules, so the table stays whole in an 80-column terminal; text that still does not
    fit is folded, never cut with an ellipsis.
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from hwprune.budgets import format_value

    table = Table(title="budgets (final model re-measured without cache)", box=box.SIMPLE_HEAD)
    longest = max((len(s) for b in result.budgets for s in (b.budget, b.oracle)), default=6)
    table.add_column("budget / oracle", overflow="fold", min_width=min(longest, 32))
    for col in ("dense", "bound", "final", "met", "margin"):
        table.add_column(col, no_wrap=True, justify="right" if col != "met" else "center")
    for b in result.budgets:
        table.add_row(
            f"{escape(b.budget)}\n[dim]{escape(b.oracle)}[/dim]",
            format_value(b.dense, b.unit), format_value(b.bound, b.unit),
            format_value(b.final, b.unit), "yes" if b.met else "NO", f"{100 * b.margin:.1f}%",
        )  # fmt: skip
    return table


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def print_result(result: Any, *, as_json: bool) -> None:
    from rich.markup import escape

    from hwprune.cli._console import console

    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    console.print(summary_table(result))
    if result.accuracy_dense is not None:
        console.print(
            f"accuracy (test): dense {_pct(result.accuracy_dense)}, pruned "
            f"{_pct(result.accuracy_pruned)}, fine-tuned {_pct(result.accuracy_finetuned)}",
            highlight=False,
        )
    elif result.metrics.get("final"):
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics["final"].items())
        console.print(f"final metrics: {escape(shown)}", highlight=False)
    else:
        console.print("the task has no evaluate(model): no final metrics", highlight=False)
    if not result.finetuned:
        console.print("the task has no finetune(model, teacher): not fine-tuned", highlight=False)
    console.print(f"parameters {result.params_dense:,} -> {result.params_final:,}", highlight=False)
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    console.print(f"stage wall times: {times}", highlight=False)
    console.print(f"TensorRT: {escape(result.tensorrt)}", highlight=False)
    if result.openvino_max_abs_diff is not None:
        console.print(
            f"OpenVINO IR: {escape(str(result.paths['openvino']))} (max |openvino - torch| = "
            f"{result.openvino_max_abs_diff:.3g})",
            highlight=False,
        )
    console.print(f"report: {Path(result.run_dir) / 'report.md'}", highlight=False)


def execute(options: dict[str, Any], *, resume_dir: str | None, quiet: bool, as_json: bool,
            changes: dict[str, Any] | None = None) -> int:  # fmt: skip
    """Run (or resume) a prune with progress (bars on a terminal, lines in a file or pipe);
    Ctrl-C or SIGTERM leaves the run resumable (exit 130 or 143)."""
    import contextlib
    import warnings

    from hwprune import api
    from hwprune.cli._console import err_console
    from hwprune.cli._progress import Terminated, progress_view, sigterm_interrupts
    from hwprune.config import PruneConfig
    from hwprune.errors import ConfigError

    # Library chatter (gymnasium dtype casts, SB3 creating folders) is not for the user.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(gymnasium|stable_baselines3)")
    run_dir = resume_dir or options.get("out")
    view = progress_view(err_console, show=not quiet)
    if not resume_dir:
        options = dict(options)
        out, overwrite = options.pop("out", None), bool(options.pop("overwrite", False))
        config = PruneConfig.from_mapping(options)
        config.require_runnable()
        if not out:
            raise ConfigError("--out RUN_DIR is required (the run directory to create)")
    try:
        with sigterm_interrupts(), view if view is not None else contextlib.nullcontext():
            if resume_dir:
                result = api.resume(resume_dir, progress=view, **(changes or {}))
            else:
                result = api.start(config, out=out, overwrite=overwrite, progress=view)
    except KeyboardInterrupt as exc:
        if run_dir and (Path(run_dir) / "config.json").is_file():
            err_console.print(
                f"interrupted; everything measured is kept. Resume with: hwprune prune --resume {run_dir}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            err_console.print("interrupted", highlight=False)
        return 143 if isinstance(exc, Terminated) else 130
    print_result(result, as_json=as_json)
    return 0


# What a finished run holds: its report (written last) and the model it ships.
FINISHED = ("report.json", "report.md", "model.pt", "model.onnx")


def finished_evaluations(run_dir: Path) -> int | None:
    """The evaluation budget a finished run in ``run_dir`` was searched with, or None when the
    run is not finished (no report yet, or one of its outputs is missing)."""
    if not all((run_dir / name).is_file() for name in FINISHED):
        return None
    try:
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        evaluations = report["options"]["evaluations"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return evaluations if isinstance(evaluations, int) else None


def _say_complete(run_dir: Path, *, evaluations: int | None, as_json: bool) -> bool:
    """Whether ``--resume`` of ``run_dir`` has nothing to do: the run finished and no larger
    --evaluations asks for more search. Then say so in one line (or print its report.json
    with --json) and touch nothing."""
    from hwprune.cli._console import console
    from hwprune.config import read_run_config
    from hwprune.run.context import RunLock

    # Not a run directory: the resume's own error. A raised --evaluations that an earlier,
    # stopped resume wrote into config.json still asks for more search.
    wanted = read_run_config(run_dir, require_model=False).evaluations
    # Held while looking, so a run another process is still finishing is not called complete.
    lock = RunLock(run_dir).acquire()
    try:
        done = finished_evaluations(run_dir)
        if done is None or max(wanted, evaluations or 0) > done:
            return False
        if as_json:
            print((run_dir / "report.json").read_text(encoding="utf-8"), end="")
        else:
            console.print(
                f"run {str(run_dir)!r} is complete ({done} evaluations); report: "
                f"{run_dir / 'report.md'}. Nothing changed; to search further, resume with "
                f"--evaluations above {done}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
        return True
    finally:
        lock.release()


def run(args: argparse.Namespace) -> int:
    from hwprune.errors import ConfigError

    if args.demo:
        from hwprune.cli import subcommand

        return subcommand("demo").run(args)
    if args.resume:
        given = collect_options(args)
        # How much to search and how to execute it may change; what to prune may not.
        changes = {k: given.pop(k) for k in ("evaluations", "workers", "ray") if k in given}
        if given or args.config:
            names = sorted({*given, *(["config"] if args.config else [])})
            raise ConfigError(
                f"--resume takes its options from the run's config.json; drop "
                f"{', '.join('--' + n.replace('_', '-') for n in names)} (only --evaluations "
                "may be given, to raise the search budget, and --workers/--ray)"
            )
        if _say_complete(Path(args.resume), evaluations=changes.get("evaluations"),
                         as_json=args.json):  # fmt: skip
            return 0
        return execute({}, resume_dir=args.resume, quiet=args.quiet, as_json=args.json,
                       changes=changes)  # fmt: skip
    return execute(collect_options(args), resume_dir=None, quiet=args.quiet, as_json=args.json)
