"""``hwprune measure``: measure an ONNX model with oracles (latency, memory, params, FLOPs).

Measure an ONNX model with one or more oracles. Timed oracles report the median of many runs
with its spread; results are cached by graph structure, oracle settings and machine.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from hwprune.cli._options import (
    add_cache_options,
    add_command,
    add_output_options,
    check_cache,
    open_cache,
    shows_progress,
)

#: Oracles used when none is named: exact counts plus single-thread CPU latency.
DEFAULT_ORACLES = ("params", "flops", "peak-memory", "onnxruntime:cpu?threads=1")

EXAMPLE = (
    "example: hwprune measure model.onnx --oracle 'onnxruntime:cpu?threads=1' "
    "--oracle params --input-shape input=1x3x224x224"
)

_SHAPE = re.compile(r"^\d+(x\d+)*$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "measure", __doc__, run=run, epilog=EXAMPLE)
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model file to measure")
    p.add_argument(
        "--oracle",
        action="append",
        dest="oracles",
        metavar="SPEC",
        help="oracle spec such as 'onnxruntime:cpu?threads=1', repeatable "
        f"(default: {', '.join(DEFAULT_ORACLES)})",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        dest="input_shapes",
        metavar="NAME=DIMS",
        default=None,
        help="static shape of an input, e.g. input=1x3x224x224 (repeatable; a model with "
        "one input may omit NAME=)",
    )
    p.add_argument("--batch", type=int, default=None, help="override every input's first dimension")
    add_output_options(p, json_help="print a JSON list of measurements")
    add_cache_options(p)


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["input=1x3x224x224"]`` -> ``{"input": (1, 3, 224, 224)}``; bad text raises ConfigError."""
    from hwprune.errors import ConfigError

    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, eq, dims = item.rpartition("=")
        if not eq:
            name, dims = "input", item
        name, dims = name.strip(), dims.strip().lower()
        if not name or not _SHAPE.match(dims) or any(int(d) < 1 for d in dims.split("x")):
            raise ConfigError(
                f"expected --input-shape like NAME=1x3x224x224 (positive integers joined by 'x'), "
                f"got {item!r}"
            )
        if name in shapes:
            raise ConfigError(f"--input-shape given twice for input {name!r}")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def _value(m: Any) -> str:
    if m.statistic == "exact" and float(m.value).is_integer():
        return f"{int(m.value):,}"
    return f"{m.value:.4g}"


def run(args: argparse.Namespace) -> int:
    from hwprune.cli._console import print_table
    from hwprune.errors import ConfigError
    from oracles.model import load_onnx, resolve_input_shapes

    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch must be a positive integer, got {args.batch}")
    given = parse_input_shapes(args.input_shapes)
    check_cache(args)  # the only thing it writes, checked before anything is loaded
    proto = load_onnx(args.model)
    # Every oracle sees the same static shapes; a dynamic dimension nobody fixed is an error now.
    shapes = resolve_input_shapes(proto, given, batch=args.batch)
    chosen = _oracles(args.oracles or list(DEFAULT_ORACLES), proto, shapes)
    data = proto.SerializeToString()
    del proto
    results = _measure_all(chosen, data, shapes, cache=open_cache(args), show=shows_progress(args))
    if args.json:
        print(json.dumps([m.to_dict() for m in results], indent=2, default=str))
    else:
        print_table(_table(args.model, shapes, results))
    return 0


def _oracles(specs: list[str], proto: Any, shapes: dict[str, tuple[int, ...]]) -> list[Any]:
    """Every oracle built and checked before any measures, so a typo fails fast."""
    from hwprune.errors import ConfigError
    from oracles import get_oracle
    from oracles.model import resolve_input_shapes

    chosen = [get_oracle(spec) for spec in specs]
    for oracle in chosen:
        if oracle.input_format != "onnx":
            raise ConfigError(
                f"oracle {oracle.spec!r} measures a PyTorch module, not an ONNX file; "
                "hwprune measure takes ONNX oracles (params, flops, weight-memory, peak-memory, "
                "onnxruntime, tensorrt)"
            )
        # A timed oracle holds several random input sets: refuse shapes that cannot fit
        # before measuring anything, rather than thrash or be killed mid-way.
        batch = oracle.settings().get("batch")
        oracle.check_memory(proto, resolve_input_shapes(proto, shapes, batch=batch))
    return chosen


def _measure_all(
    chosen: list[Any], data: bytes, shapes: dict[str, tuple[int, ...]], *, cache: Any, show: bool
) -> list[Any]:
    """One measurement per oracle, in order, with the stage ``measure``'s progress shown."""
    from hwprune.cli._progress import shown_progress, stage_progress
    from oracles import measure

    results = []
    try:
        with shown_progress(show=show) as view:
            step = stage_progress(view, "measure", len(chosen))
            for i, oracle in enumerate(chosen):
                step(i, message=f"measuring with {oracle.spec}")
                results.append(measure(oracle, data, input_shapes=shapes, cache=cache))
            step(len(chosen))
    finally:
        if cache is not None:
            cache.close()
    return results


def _table(model: str, shapes: dict[str, tuple[int, ...]], results: list[Any]) -> Any:
    from rich import box
    from rich.table import Table

    shown = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
    table = Table(title=f"{model} ({shown})", box=box.SIMPLE_HEAD)
    left = ("oracle", "quantity", "unit", "statistic")
    for col in ("oracle", "quantity", "value", "unit", "statistic", "samples", "IQR", "CV",
                "cached", "seconds"):  # fmt: skip
        table.add_column(col, justify="left" if col in left else
                         "center" if col == "cached" else "right")  # fmt: skip
    for m in results:
        timed = m.statistic != "exact"
        table.add_row(
            m.oracle, m.quantity, _value(m), m.unit, m.statistic, str(m.samples),
            f"{m.iqr:.3g}" if timed else "-", f"{m.cv:.1%}" if timed else "-",
            "yes" if m.cached else "no", f"{m.seconds:.2f}",
        )  # fmt: skip
    return table
