"""``hwprune measure``: real oracles on a small ONNX file, and one-line errors on bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwprune.cli import main

FAST = "warmup=2&min_runs=10&max_runs=200&min_time=0.05&max_time=2&rel_ci=0.05"


def write_model(path: Path, *, dynamic: bool = False) -> Path:
    """A conv -> relu -> global pool net with input 'input' of shape [1|N, 3, 16, 16]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    dim: int | str = "N" if dynamic else 1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["out"]),
        ],
        "cli_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [dim, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [dim, 8, 1, 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return write_model(tmp_path / "net.onnx")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    return lines[0]


def test_json_output_parses_and_second_call_is_cached(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = str(tmp_path / "c.sqlite")
    argv = [
        "measure", str(model_path), "--oracle", f"onnxruntime:cpu?{FAST}",
        "--oracle", "params", "--json", "--cache", cache,
    ]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert [m["quantity"] for m in first] == ["latency", "params"]
    latency, params = first
    assert latency["unit"] == "ms" and latency["value"] > 0 and latency["statistic"] == "median"
    assert latency["ci_low"] <= latency["value"] <= latency["ci_high"]
    assert params["value"] == 8 * 3 * 3 * 3
    assert not latency["cached"] and not params["cached"]
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert all(m["cached"] for m in second)
    assert second[0]["value"] == latency["value"]


def test_no_cache_measures_afresh(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["measure", str(model_path), "--oracle", "params", "--json", "--no-cache"]
    for _ in range(2):
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)[0]["cached"] is False


def test_table_lists_default_oracles(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("oracles.static") is None:
        pytest.skip("the static oracles are not written yet")
    assert main(["measure", str(model_path)]) == 0
    out = capsys.readouterr().out
    for name in ("params", "flops", "peak-memory", "onnxruntime:cpu", "latency", "median"):
        assert name in out
    assert "input=1x3x16x16" in out


def test_input_shape_and_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_model(tmp_path / "dyn.onnx", dynamic=True)
    spec = f"onnxruntime:cpu?{FAST}"
    assert (
        main(["measure", str(path), "--oracle", spec, "--input-shape", "input=2x3x16x16", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["batch"] == 2
    assert main(["measure", str(path), "--oracle", spec, "--batch", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["batch"] == 3


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["measure", str(tmp_path / "nope.onnx"), "--oracle", "params"])
    assert "model file not found" in line and "nope.onnx" in line


def test_file_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 20)
    line = _error(capsys, ["measure", str(bad), "--oracle", "params"])
    assert "is not an ONNX model" in line


def test_dynamic_dimension_without_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_model(tmp_path / "dyn.onnx", dynamic=True)
    line = _error(capsys, ["measure", str(path), "--oracle", "params"])
    assert "dynamic shape" in line and "--input-shape input=" in line


def test_unknown_oracle_suggests(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["measure", str(model_path), "--oracle", "onnxrutime:cpu"])
    assert "unknown oracle 'onnxrutime'" in line and "Did you mean 'onnxruntime'" in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("onnxruntime:cpu?threads=zero", "'threads' must be an integer, got 'zero'"),
        ("onnxruntime:cpu?threads=0", "'threads' must be an integer from 1 to"),
        ("onnxruntime:cpu?threads", "expected settings as key=value"),
    ],
)
def test_malformed_spec(
    model_path: Path, capsys: pytest.CaptureFixture[str], spec: str, expected: str
) -> None:
    assert expected in _error(capsys, ["measure", str(model_path), "--oracle", spec])


@pytest.mark.parametrize("shape", ["input=1x3xfoo", "input=", "input=0x3x16x16", "1,3,16,16"])
def test_bad_input_shape(model_path: Path, capsys: pytest.CaptureFixture[str], shape: str) -> None:
    line = _error(
        capsys, ["measure", str(model_path), "--oracle", "params", "--input-shape", shape]
    )
    assert "expected --input-shape like NAME=1x3x224x224" in line


def test_bad_batch(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--batch must be a positive integer" in _error(
        capsys, ["measure", str(model_path), "--oracle", "params", "--batch", "0"]
    )


def test_torch_oracle_is_refused(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("oracles.torch_latency") is None:
        pytest.skip("oracles.torch_latency is not written yet")
    line = _error(capsys, ["measure", str(model_path), "--oracle", "torch:cpu"])
    assert "measures a PyTorch module, not an ONNX file" in line


def test_cuda_provider_not_installed(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    line = _error(capsys, ["measure", str(model_path), "--oracle", "onnxruntime:cuda"])
    assert "CUDAExecutionProvider" in line and 'pip install "hwprune[gpu]"' in line


def test_tensorrt_not_installed(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("oracles.trt") is None:
        pytest.skip("oracles.trt is not written yet")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    line = _error(capsys, ["measure", str(model_path), "--oracle", "tensorrt"])
    assert "hwprune[tensorrt]" in line


def test_subprocess_exit_code_and_no_traceback(tmp_path: Path) -> None:
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "hwprune", "measure", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "missing.onnx" in proc.stderr


def test_progress_goes_to_stderr_as_plain_lines_when_it_is_not_a_terminal(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["measure", str(model_path), "--oracle", "params", "--oracle", "flops", "--no-cache"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == "measure: started (0/2) | elapsed 0:00", err
    assert lines[-1].startswith("measure: done 2/2 | elapsed "), err
    assert len(lines) == 2, err  # a fast command: no line between its first and its last
    assert "params" in out and "measure:" not in out  # stdout holds the table alone
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_json_keeps_the_progress_on_stderr_and_the_result_alone_on_stdout(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--json > result.json`: the file gets the JSON, the user still sees how the run goes.
    argv = ["measure", str(model_path), "--oracle", "params", "--no-cache", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert [m["quantity"] for m in json.loads(out)] == ["params"]
    assert err.splitlines()[-1].startswith("measure: done 1/1 | elapsed "), err
    assert main([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) and err == ""
