"""``hwprune demo``: the built-in demo, offline and on the CPU, in a few minutes.

Trains (or reuses a cached) width-0.5 CIFAR-style VGG-11 on the built-in
digits set, prunes it with ppo-lagrangian to half the dense model's latency
on single-thread ONNX Runtime CPU, fine-tunes, verifies, exports, reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hwprune.cli._options import add_command, add_output_options

DEMO_MODEL = "vgg11_cifar"
DEMO_WIDTH = 0.5
DEMO_DATA = "digits"
DEMO_BUDGET = "latency<=50%"
DEMO_ORACLE = "latency=onnxruntime:cpu?threads=1"
DEMO_TRAIN_EPOCHS = 5
# Sized so that two demos started at once on a 2-core machine each finish in under 300 s
# (docs/benchmarks.md, "The demo"): 60 evaluations and 6 epochs took 363-378 s there.
DEMO_EVALUATIONS = 40
DEMO_FINETUNE_EPOCHS = 4
# The latency-staircase probe's time budget: a few hundred one-layer timings, 30-40 s on a
# quiet 2-core machine; on a busy one every timing runs to its cap, and past this budget the
# units not yet probed are built unrounded (report.md says which).
DEMO_STAIRCASE_SECONDS = 30.0


#: Where the demo runs without --out.
DEMO_OUT = "hwprune-demo"


def add_parser(sub: argparse._SubParsersAction) -> None:
    # The text names the demo's settings, so it is built here rather than in the docstring.
    about = (
        "``hwprune demo``: run the built-in demo (no data, network or GPU needed).\n\n"
        f"Train (or reuse) a width-{DEMO_WIDTH} {DEMO_MODEL} on the built-in digits set, prune it "
        f"with ppo-lagrangian to {DEMO_BUDGET} of the dense latency on onnxruntime:cpu "
        "(1 thread), fine-tune, verify, export and report. Run again where an earlier demo "
        "was interrupted, it resumes that demo; where it finished, it is refused (naming the "
        "report) unless --overwrite is given."
    )
    p = add_command(sub, "demo", about, run=run)
    p.add_argument("--out", metavar="RUN_DIR", help=f"run directory (default: ./{DEMO_OUT})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo (finished or not) in the run directory")  # fmt: skip
    add_output_options(p, json_help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """``hwprune demo`` (and ``hwprune prune --demo``): the demo with the options given."""
    return run_demo(quiet=args.quiet, as_json=args.json, out=args.out,
                    overwrite=bool(args.overwrite))  # fmt: skip


def home() -> Path:
    """hwprune's own folder (``oracles.home_dir()``: $HWPRUNE_HOME, else ~/.cache/hwprune)."""
    from oracles import home_dir

    return home_dir()


def demo_checkpoint_path(*, seed: int = 0) -> Path:
    """Where the trained demo model is kept between demos."""
    name = f"{DEMO_MODEL}-w{DEMO_WIDTH}-{DEMO_DATA}-e{DEMO_TRAIN_EPOCHS}-s{seed}.pt"
    return home() / "demo" / name


def demo_checkpoint(*, progress: Any = None, seed: int = 0) -> tuple[Path, float | None]:
    """The trained demo model's checkpoint (trained now unless cached) and the training seconds."""
    import time

    from hwprune.data import get_dataset
    from hwprune.models import get_model, read_checkpoint, save_checkpoint
    from hwprune.train import train

    path = demo_checkpoint_path(seed=seed)
    if path.is_file():
        try:
            read_checkpoint(path)
            return path, None
        except Exception:  # a damaged cache entry is retrained, not trusted
            path.unlink()
    t0 = time.perf_counter()
    data = get_dataset(DEMO_DATA, seed=seed)
    model = get_model(DEMO_MODEL, num_classes=data.num_classes, width=DEMO_WIDTH)
    result = train(model, data, epochs=DEMO_TRAIN_EPOCHS, seed=seed, progress=progress)
    save_checkpoint(
        model,
        path,
        meta={
            "model": DEMO_MODEL,
            "width": DEMO_WIDTH,
            "num_classes": data.num_classes,
            "input_size": int(data.input_shape[-1]),
            "dataset": DEMO_DATA,
            "train": {"epochs": DEMO_TRAIN_EPOCHS, "test_accuracy": result.test_accuracy},
        },
    )
    return path, time.perf_counter() - t0


def demo_options(weights: str | Path) -> dict[str, Any]:
    """The demo's prune options (``hwprune.config.PruneConfig`` fields) for its checkpoint."""
    return dict(
        model=DEMO_MODEL,
        weights=str(weights),
        width=DEMO_WIDTH,
        data=DEMO_DATA,
        budgets=[DEMO_BUDGET],
        oracles=[DEMO_ORACLE],
        agent="ppo-lagrangian",
        evaluations=DEMO_EVALUATIONS,
        finetune_epochs=DEMO_FINETUNE_EPOCHS,
        staircase_seconds=DEMO_STAIRCASE_SECONDS,
    )


def _is_demo(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` was started by the demo (its config.json says what)."""
    from hwprune.config import read_run_config

    saved, expected = read_run_config(run_dir).to_dict(), demo_options("")
    return all(saved[k] == expected[k] for k in ("model", "width", "data", "budgets", "agent"))


def _earlier_demo(run_dir: Path, *, overwrite: bool) -> bool:
    """What a new demo does with ``run_dir``, decided before any training: True to resume the
    interrupted demo there; False to start (in a new or empty folder, or replacing an earlier
    run with ``overwrite``). A finished demo, another run or other files are refused in one
    line (``hwprune.outputs``: nothing is replaced without --overwrite)."""
    from hwprune.errors import RunDirError
    from hwprune.outputs import RUN, check_folder

    # overwrite=True: a run in the folder is not refused here but looked at below.
    holds = check_folder(run_dir, kind=RUN, overwrite=True)
    if not holds or overwrite:
        return False
    where = str(run_dir)
    if not _is_demo(run_dir):
        raise RunDirError(
            f"{where!r} holds a hwprune run that is not the demo; resume it with 'hwprune prune "
            f"--resume {where}', pass --overwrite to replace it, or choose another --out"
        )
    if (run_dir / "report.json").is_file():
        raise RunDirError(
            f"{where!r} holds a finished demo (its report: {str(run_dir / 'report.md')!r}); "
            "pass --overwrite to run it again, or choose another --out"
        )
    return True


def _measured(run_dir: Path) -> int:
    """How many candidates the episodes log of ``run_dir`` holds (its other records, such as
    the surrogate's settings, and a half-written last line are not candidates)."""
    import json

    try:
        lines = (run_dir / "episodes.jsonl").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    count = 0
    for line in lines.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        count += isinstance(record, dict) and "index" in record
    return count


def run_demo(
    *, quiet: bool = False, as_json: bool = False, out: str | None = None, overwrite: bool = False
) -> int:
    """Train or reuse the demo model, then prune it (see the module docstring); an interrupted
    demo in the run directory is resumed."""
    from hwprune.cli._console import err_console
    from hwprune.cli._progress import (
        Terminated,
        shown_progress,
        sigterm_interrupts,
        train_progress,
    )
    from hwprune.cli.prune import execute
    from hwprune.outputs import check_home

    run_dir = Path(out or DEMO_OUT)
    # Everything the demo writes, checked before it trains: its folder, hwprune's own folder.
    resume = _earlier_demo(run_dir, overwrite=overwrite)
    check_home(writable=not demo_checkpoint_path().is_file())
    if resume:
        err_console.print(
            f"resuming the interrupted demo in {run_dir} ({_measured(run_dir)} candidates "
            "measured; --overwrite starts afresh)",
            highlight=False,
            soft_wrap=True,
        )
    show = not quiet
    try:
        with sigterm_interrupts(), shown_progress(show=show) as view:
            ckpt, seconds = demo_checkpoint(progress=train_progress(view))
    except KeyboardInterrupt as exc:
        err_console.print("interrupted while training the demo model", highlight=False)
        return 143 if isinstance(exc, Terminated) else 130
    if show:
        how = "cached" if seconds is None else f"trained in {seconds:.1f}s"
        err_console.print(f"demo model: {ckpt} ({how})", highlight=False, soft_wrap=True)
    if resume:
        return execute({}, resume_dir=str(run_dir), quiet=quiet, as_json=as_json)
    options = {**demo_options(ckpt), "out": str(run_dir), "overwrite": overwrite}
    return execute(options, resume_dir=None, quiet=quiet, as_json=as_json)
