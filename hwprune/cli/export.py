"""``hwprune export``: export a pruned model to ONNX (checked, simplified, compared) and
TensorRT.

Export a model saved by 'hwprune prune' to ONNX: onnx's checker, onnxslim simplification, and a
comparison with the torch outputs on random inputs (fails above --atol). With --tensorrt, also
build a TensorRT engine where TensorRT is installed; with --openvino, also write the OpenVINO
IR, compared with torch the same way.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hwprune.cli._options import add_command

EXAMPLE = "example: hwprune export runs/vgg --onnx vgg.onnx --tensorrt vgg.engine"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", __doc__, run=run, epilog=EXAMPLE)
    p.add_argument("source", metavar="RUN_DIR|MODEL.pt", help="a run directory or its model.pt")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--tensorrt", metavar="OUT.engine", help="also build a TensorRT engine here")
    p.add_argument("--openvino", metavar="DIR",
                   help="also write the OpenVINO IR (model.xml, model.bin) here, checked against "
                        'torch (needs pip install "hwprune[openvino]")')  # fmt: skip
    from hwprune.config import DEFAULT_OPSET

    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest accepted |onnx - torch| difference (default 1e-3)")  # fmt: skip
    p.add_argument("--allow-import", action="store_true",
                   help="allow importing the user model code the checkpoint names")  # fmt: skip
    p.add_argument("--allow-trace-warnings", action="store_true",
                   help="export a model whose forward branches on values computed from its "
                        "input (the ONNX graph keeps one branch; refused by default)")  # fmt: skip
    p.add_argument("--overwrite", "--force", action="store_true",
                   help="replace existing --onnx/--tensorrt/--openvino files (never the run's own)")  # fmt: skip


#: What ``--openvino DIR`` writes into DIR (hwprune.export.openvino's default name).
OPENVINO_FILES = ("model.xml", "model.bin")


def _run_dir(source: Path) -> Path | None:
    """The run directory ``source`` belongs to (it, or the folder of its model.pt), if any."""
    folder = source if source.is_dir() else source.parent
    return folder if (folder / "config.json").is_file() or source.is_dir() else None


def check_targets(
    source: str | Path, targets: dict[str, str | None], *, overwrite: bool
) -> dict[str, Path]:
    """The export targets as paths, checked before anything is loaded (``hwprune.outputs``).

    Refused always: the source checkpoint itself, an existing file of the source's run
    directory (weights, log, report, cache), one path given twice, and what
    ``check_file`` refuses (a folder, a path inside a file, a folder that may not be
    written); ``--openvino`` takes a folder and its model.xml and model.bin are checked
    as files. Refused unless ``overwrite``: any other existing file.
    """
    from hwprune.errors import ConfigError
    from hwprune.outputs import check_file

    src = Path(source)
    run_dir = _run_dir(src)
    checkpoint = (src / "model.pt" if src.is_dir() else src).resolve()
    run_root = run_dir.resolve() if run_dir is not None else None
    out: dict[str, Path] = {}
    files: list[Path] = []

    def check(option: str, value: str, path: Path, example: str) -> None:
        resolved = path.resolve()
        taken = path.exists() and not path.is_dir()  # a folder is refused by check_file
        in_run = run_root is not None and resolved.is_relative_to(run_root) and taken
        if (resolved == checkpoint and taken) or in_run:
            where = f"run directory {str(run_dir)!r}" if run_dir is not None else "the source"
            raise ConfigError(
                f"{option} {value!r} would overwrite {resolved.name}, a file of {where}; "
                "write the export elsewhere (its files are the run's record)"
            )
        if resolved in files:
            raise ConfigError(f"{option} {value!r} is also given for another output")
        files.append(resolved)
        check_file(value, option=option, overwrite=overwrite, example=example)

    for option, value in targets.items():
        if value is None:
            continue
        path = Path(value)
        if option == "--openvino":
            # A folder that receives model.xml and model.bin.
            if path.exists() and not path.is_dir():
                raise ConfigError(f"--openvino {value!r} is a file; give a folder for the IR")
            for name in OPENVINO_FILES:
                check(option, str(path / name), path / name, name)
            out[option] = path
            continue
        check(option, value, path, "model.onnx" if option == "--onnx" else "model.engine")
        out[option] = path
    return out


def run(args: argparse.Namespace) -> int:
    from hwprune.api import load_pruned, model_input_shape
    from hwprune.cli._console import console
    from hwprune.errors import ConfigError, ExportError
    from hwprune.export.final import final_export

    if args.opset < 7:
        raise ExportError(f"--opset must be at least 7, got {args.opset}")
    if args.openvino:  # before any work: a missing OpenVINO fails at once, naming the extra
        from hwprune.export.openvino import require_openvino

        require_openvino()
    if not math.isfinite(args.atol) or args.atol < 0:
        raise ConfigError(
            f"--atol must be a finite number >= 0 (the largest accepted |onnx - torch| "
            f"difference, e.g. 1e-3), got {args.atol:g}"
        )
    targets = check_targets(
        args.source,
        {"--onnx": args.onnx, "--tensorrt": args.tensorrt, "--openvino": args.openvino},
        overwrite=args.overwrite,
    )
    module = load_pruned(args.source, allow_import=args.allow_import)
    shape = (1, *model_input_shape(args.source))
    result = final_export(
        module,
        input_shape=shape,
        onnx_path=targets["--onnx"],
        engine_path=targets.get("--tensorrt"),
        opset=args.opset,
        atol=args.atol,
        allow_trace_warnings=args.allow_trace_warnings,
    )
    console.print(
        f"wrote {result.onnx_path} (opset {result.opset}, "
        f"{'simplified' if result.simplified else 'not simplified'}; "
        f"max |onnx - torch| = {result.max_abs_diff:.3g})",
        highlight=False,
    )
    if args.tensorrt and result.engine_path is None:
        raise ExportError(f"no engine written to {args.tensorrt}: {result.tensorrt_message}")
    if args.tensorrt:
        console.print(result.tensorrt_message, highlight=False)
    if args.openvino:
        from hwprune.export.openvino import export_openvino

        ir = export_openvino(
            result.onnx_path,
            targets["--openvino"],
            module=module,
            input_shape=shape,
            atol=args.atol,
        )
        console.print(
            f"wrote {ir.xml_path} and {ir.bin_path.name} (OpenVINO "
            f"{ir.openvino_version.split('-')[0]}; max |openvino - torch| = {ir.max_abs_diff:.3g})",
            highlight=False,
        )
    return 0
