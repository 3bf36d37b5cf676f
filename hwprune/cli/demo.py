"""``hwprune demo``: the built-in demo, offline and on the CPU, in a few minutes.

Trains (or reuses a cached) width-0.5 CIFAR-style VGG-11 on the built-in
digits set, prunes it with ppo-lagrangian to half the dense model's latency
on single-thread ONNX Runtime CPU, fine-tunes, verifies, exports, reports.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEMO_MODEL = "vgg11_cifar"
DEMO_WIDTH = 0.5
DEMO_DATA = "digits"
DEMO_BUDGET = "latency<=50%"
DEMO_ORACLE = "latency=onnxruntime:cpu?threads=1"
DEMO_TRAIN_EPOCHS = 5
DEMO_EVALUATIONS = 60
DEMO_FINETUNE_EPOCHS = 6
# The latency-staircase probe's time budget: a few hundred one-layer timings, 30-40 s on a
# quiet 2-core machine; on a busy one every timing runs to its cap, and past this budget the
# units not yet probed are built unrounded (report.md says which).
DEMO_STAIRCASE_SECONDS = 60.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the built-in demo (no data, network or GPU needed)",
        description=(
            f"Train (or reuse) a width-{DEMO_WIDTH} {DEMO_MODEL} on the built-in digits set, prune it "
            f"with ppo-lagrangian to {DEMO_BUDGET} of the dense latency on onnxruntime:cpu "
            "(1 thread), fine-tune, verify, export and report."
        ),
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: ./hwprune-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=lambda a: run_demo(quiet=a.quiet, as_json=a.json, out=a.out,
                                           overwrite=a.overwrite))  # fmt: skip


def home() -> Path:
    """hwprune's cache folder: $HWPRUNE_HOME, else ~/.cache/hwprune."""
    env = os.environ.get("HWPRUNE_HOME")
    return Path(env) if env else Path.home() / ".cache" / "hwprune"


def demo_checkpoint(*, progress: Any = None, seed: int = 0) -> tuple[Path, float | None]:
    """The trained demo model's checkpoint (trained now unless cached) and the training seconds."""
    import time

    from hwprune.data import get_dataset
    from hwprune.models import get_model, read_checkpoint, save_checkpoint
    from hwprune.train import train

    path = (
        home() / "demo" / f"{DEMO_MODEL}-w{DEMO_WIDTH}-{DEMO_DATA}-e{DEMO_TRAIN_EPOCHS}-s{seed}.pt"
    )
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


def run_demo(
    *, quiet: bool = False, as_json: bool = False, out: str | None = None, overwrite: bool = False
) -> int:
    """Train or reuse the demo model, then prune it (see the module docstring)."""
    import contextlib

    from hwprune.cli._console import err_console
    from hwprune.cli._progress import (
        Terminated,
        progress_view,
        sigterm_interrupts,
        train_progress,
    )
    from hwprune.cli.prune import execute

    show = not (quiet or as_json)
    view = progress_view(err_console, show=show)
    try:
        with sigterm_interrupts(), view if view is not None else contextlib.nullcontext():
            ckpt, seconds = demo_checkpoint(progress=train_progress(view) if view else None)
    except KeyboardInterrupt as exc:
        err_console.print("interrupted while training the demo model", highlight=False)
        return 143 if isinstance(exc, Terminated) else 130
    if show:
        how = "cached" if seconds is None else f"trained in {seconds:.1f}s"
        err_console.print(f"demo model: {ckpt} ({how})", highlight=False, soft_wrap=True)
    options = dict(
        model=DEMO_MODEL,
        weights=str(ckpt),
        width=DEMO_WIDTH,
        data=DEMO_DATA,
        budgets=[DEMO_BUDGET],
        oracles=[DEMO_ORACLE],
        agent="ppo-lagrangian",
        evaluations=DEMO_EVALUATIONS,
        finetune_epochs=DEMO_FINETUNE_EPOCHS,
        staircase_seconds=DEMO_STAIRCASE_SECONDS,
        out=out or "hwprune-demo",
        overwrite=overwrite or (out is None),
    )
    return execute(options, resume_dir=None, quiet=quiet, as_json=as_json)
