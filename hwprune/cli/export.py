"""``hwprune export``: a pruned model (run directory or model.pt) to ONNX, and TensorRT where installed."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a pruned model to ONNX (checked, simplified, compared) and TensorRT",
        description=(
            "Export a model saved by 'hwprune prune' to ONNX: onnx's checker, onnxslim "
            "simplification, and a comparison with the torch outputs on random inputs (fails "
            "above --atol). With --tensorrt, also build a TensorRT engine where TensorRT is "
            "installed; with --openvino, also write the OpenVINO IR, compared with torch the "
            "same way."
        ),
        epilog="example: hwprune export runs/vgg --onnx vgg.onnx --tensorrt vgg.engine",
    )
    p.add_argument("source", metavar="RUN_DIR|MODEL.pt", help="a run directory or its model.pt")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    p.add_argument("--tensorrt", metavar="OUT.engine", help="also build a TensorRT engine here")
    p.add_argument("--openvino", metavar="DIR",
                   help="also write the OpenVINO IR (model.xml, model.bin) here, checked against "
                        'torch (needs pip install "hwprune[openvino]")')  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest accepted |onnx - torch| difference (default 1e-3)")  # fmt: skip
    p.add_argument("--allow-import", action="store_true",
                   help="allow importing the user model code the checkpoint names")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hwprune.cli._console import console
    from hwprune.errors import ExportError
    from hwprune.export.final import final_export
    from hwprune.pipeline import load_pruned, model_input_shape

    if args.opset < 7:
        raise ExportError(f"--opset must be at least 7, got {args.opset}")
    if args.openvino:  # before any work: a missing OpenVINO fails at once, naming the extra
        from hwprune.export.openvino import require_openvino

        require_openvino()
    module = load_pruned(args.source, allow_import=args.allow_import)
    shape = (1, *model_input_shape(args.source))
    result = final_export(
        module,
        input_shape=shape,
        onnx_path=Path(args.onnx),
        engine_path=Path(args.tensorrt) if args.tensorrt else None,
        opset=args.opset,
        atol=args.atol,
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
            result.onnx_path, Path(args.openvino), module=module, input_shape=shape, atol=args.atol
        )
        console.print(
            f"wrote {ir.xml_path} and {ir.bin_path.name} (OpenVINO "
            f"{ir.openvino_version.split('-')[0]}; max |openvino - torch| = {ir.max_abs_diff:.3g})",
            highlight=False,
        )
    return 0
