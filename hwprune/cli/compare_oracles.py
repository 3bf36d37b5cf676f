"""``hwprune compare-oracles``: measure pruned variants of a model with several oracles and
correlate them.

Sample pruned variants of a model over the whole range of pruning, measure each with every
oracle, and report rank correlations (Spearman, Kendall) and each oracle's error as a linear
predictor of the reference oracle.
"""

from __future__ import annotations

import argparse
from typing import Any

from hwprune.cli._options import (
    add_cache_options,
    add_command,
    add_output_options,
    bounded_int,
    check_cache,
    open_cache,
    shows_progress,
)
from hwprune.config import SEED_RANGE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "compare-oracles", __doc__, run=run)
    p.add_argument(
        "--model", required=True, help="model name (e.g. resnet18, vgg16_cifar) or module:callable"
    )
    p.add_argument(
        "--weights", help="checkpoint (state dict) to load; weights do not change latency"
    )
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="channel multiplier of *_cifar models (default: the checkpoint's, else 1.0)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier outputs (default: 10 for CIFAR-style models, 1000 otherwise)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input height/width (default: 32 for CIFAR-style models, 224 otherwise)",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="batch size of the measured input (default 1)"
    )
    p.add_argument(
        "--oracle",
        action="append",
        dest="oracles",
        metavar="SPEC",
        help="oracle spec, repeatable (default: params, flops, peak-memory, "
        "onnxruntime:cpu?threads=1, onnxruntime:cpu?threads=2, torch:cpu, and "
        "openvino:cpu?threads=1 where openvino is installed; on a CUDA machine "
        "also torch:cuda, and onnxruntime:cuda, onnxruntime:tensorrt, tensorrt where installed)",
    )
    p.add_argument(
        "--reference", metavar="SPEC", help="oracle to predict (default: the first latency oracle)"
    )
    p.add_argument("--samples", type=int, default=12, help="number of pruned variants (default 12)")
    p.add_argument(
        "--min-keep", type=float, default=0.1, help="smallest keep ratio sampled (default 0.1)"
    )
    p.add_argument("--seed", type=bounded_int(*SEED_RANGE), default=0,
                   help="seed of the sampled pruned variants (default 0)")  # fmt: skip
    add_cache_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="folder for report.md, comparison.json and plots "
        "(new or empty; another comparison there is replaced only with --overwrite)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier comparison in --out (never other files)")  # fmt: skip
    add_output_options(p, json_help="print the comparison as JSON")


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def run(args: argparse.Namespace) -> int:
    from hwprune.cli._console import console, print_table
    from hwprune.cli._progress import shown_progress, stage_progress
    from hwprune.compare import compare_oracles, default_oracles, write_report
    from hwprune.outputs import COMPARISON, check_folder, clear_folder, make_folder

    _check_numbers(args)
    # Where it writes, before any model is built or measured (hwprune.outputs).
    check_folder(args.out, kind=COMPARISON, overwrite=args.overwrite)
    check_cache(args)
    model, size = _model(args)
    with shown_progress(show=shows_progress(args)) as view:
        # compare_oracles opens the stage once its oracles and the memory needed are checked.
        step = stage_progress(view, "compare", args.samples)
        result = compare_oracles(
            model=model,
            model_name=args.model,
            input_shape=(args.batch, 3, size, size),
            oracle_specs=args.oracles or list(default_oracles()),
            reference=args.reference,
            samples=args.samples,
            seed=args.seed,
            min_keep=args.min_keep,
            cache=open_cache(args),
            progress=step,
        )
    # Checked again: the folder may have changed while measuring.
    if check_folder(args.out, kind=COMPARISON, overwrite=args.overwrite):
        clear_folder(args.out)  # no plot of the earlier comparison stays beside the new one
    make_folder(args.out, kind=COMPARISON)
    report = write_report(result, args.out)
    if args.json:
        print(result.to_json())
        return 0
    print_table(_table(result))
    console.print(f"report: {report}")
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    from hwprune.errors import ConfigError

    if args.samples < 3:
        raise ConfigError(f"--samples must be at least 3, got {args.samples}")
    if not 0.0 < args.min_keep <= 1.0:
        raise ConfigError(f"--min-keep must be in (0, 1], got {args.min_keep}")
    if args.batch < 1:
        raise ConfigError(f"--batch must be a positive integer, got {args.batch}")


def _model(args: argparse.Namespace) -> tuple[Any, int]:
    """The dense model in eval mode (its checkpoint's weights, when given) and its input size."""
    from hwprune.errors import ConfigError
    from hwprune.models import get_model, load_checkpoint, read_checkpoint

    meta: dict = {}
    if args.weights:
        meta = dict(read_checkpoint(args.weights).meta)
        if meta.get("pruned"):
            raise ConfigError(
                f"checkpoint {args.weights!r} holds a pruned model; compare oracles on the "
                "base model's checkpoint"
            )
    cifar = args.model.endswith("_cifar")
    num_classes = args.num_classes or _meta_int(meta, "num_classes") or (10 if cifar else 1000)
    size = args.input_size or _meta_int(meta, "input_size") or (32 if cifar else 224)
    width = args.width if args.width is not None else meta.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise ConfigError(
            f"checkpoint {args.weights!r} has a width that is not a number: {width!r}"
        )
    model = get_model(args.model, num_classes=num_classes, width=float(width))
    if args.weights:
        load_checkpoint(model, args.weights)
    return model.eval(), size


def _table(result: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"{result.model}: oracles as predictors of {result.reference}")
    for col in ("oracle", "Spearman", "Kendall", "mean rel. err", "smallest/dense"):
        table.add_column(col, justify="left" if col == "oracle" else "right")
    pairs = {(p.a, p.b): p for p in result.pairs} | {(p.b, p.a): p for p in result.pairs}
    for p in result.predictors:
        pair = pairs[(p.oracle, result.reference)]
        table.add_row(
            p.oracle,
            f"{pair.spearman:.3f}",
            f"{pair.kendall:.3f}",
            f"{p.mean_rel_error:.1%}",
            f"{result.ratio[p.oracle]:.3f}",
        )
    return table
