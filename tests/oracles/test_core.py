"""The measurement core: spec parsing, the registry, model loading and keys, the SQLite cache."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_builders import conv_chain, make_model

import oracles
from oracles import Measurement, MeasurementCache, Oracle, parse_spec
from oracles.cache import cache_key
from oracles.errors import ModelInputError, OracleSpecError, UnknownOracleError
from oracles.model import fix_input_shapes, load_onnx, resolve_input_shapes, structure_key
from oracles.registry import _REGISTRY, register_oracle
from oracles.static import FlopsOracle, ParamsOracle

# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "onnxruntime:cpu?threads=1&batch=1",
            ("onnxruntime", "cpu", {"threads": "1", "batch": "1"}),
        ),
        ("  Params ", ("params", None, {})),
        ("TORCH:CUDA", ("torch", "cuda", {})),
        ("flops?Batch=2&&elementwise=1", ("flops", None, {"batch": "2", "elementwise": "1"})),
        ("x?path=a%26b%3Dc", ("x", None, {"path": "a&b=c"})),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected an oracle spec"),
        ("   ", "expected an oracle spec"),
        (None, "expected an oracle spec"),
        (":cpu", "no oracle name"),
        ("?threads=1", "no oracle name"),
        ("params?nonzero", "key=value"),
        ("params?=1", "key=value"),
    ],
)
def test_parse_spec_rejects(spec, message):
    with pytest.raises(OracleSpecError, match=message):
        parse_spec(spec)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EchoOracle(Oracle):
    """A test oracle with one setting of each type; it measures the number of graph nodes."""

    quantity = "nodes"
    unit = "nodes"
    devices = ("cpu", "cuda")

    device: str = "cpu"
    scale: float = 1.0
    count: int = 3
    flag: bool = False
    mode: str = "a"

    def validate(self) -> None:
        if self.count < 0:
            raise OracleSpecError(f"oracle {self.name!r}: count must be >= 0, got {self.count}")

    def measure(self, model, *, input_shapes=None) -> Measurement:
        n = len(load_onnx(model).graph.node)
        return Measurement(quantity="nodes", value=n * self.scale, unit="nodes", oracle=self.spec)


@pytest.fixture
def echo():
    register_oracle("test-echo")(EchoOracle)
    yield EchoOracle
    _REGISTRY.pop("test-echo", None)


def test_registry_lists_static_oracles():
    assert {"params", "flops", "weight-memory", "peak-memory"} <= set(oracles.list_oracles())
    assert oracles.oracle_class("Params") is ParamsOracle


def test_unknown_oracle_suggests_a_close_name():
    with pytest.raises(UnknownOracleError, match="Did you mean 'params'") as err:
        oracles.get_oracle("parms")
    assert isinstance(err.value, OracleSpecError)
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownOracleError, match="Known oracles: .*flops"):
        oracles.get_oracle("zzzzzz")


def test_bad_setting_names_and_values():
    with pytest.raises(OracleSpecError, match=r"no setting 'bogus' \(accepted: nonzero\)"):
        oracles.get_oracle("params?bogus=1")
    with pytest.raises(OracleSpecError, match="'batch' must be an integer, got 'two'"):
        oracles.get_oracle("flops?batch=two")
    with pytest.raises(OracleSpecError, match="'nonzero' must be 0 or 1, got 'maybe'"):
        oracles.get_oracle("params?nonzero=maybe")
    with pytest.raises(OracleSpecError, match="runs on cpu, not 'cuda'"):
        oracles.get_oracle("params:cuda")
    with pytest.raises(OracleSpecError, match="expected an oracle spec string, got int"):
        oracles.get_oracle(3)


def test_test_oracle_settings_convert_and_validate(echo):
    o = oracles.get_oracle("test-echo:cuda?scale=0.5&count=7&flag=yes&mode=fast")
    assert o == EchoOracle(device="cuda", scale=0.5, count=7, flag=True, mode="fast")
    with pytest.raises(OracleSpecError, match="'scale' must be a number, got 'inf'"):
        oracles.get_oracle("test-echo?scale=inf")
    with pytest.raises(OracleSpecError, match="count must be >= 0, got -1"):
        oracles.get_oracle("test-echo?count=-1")
    with pytest.raises(OracleSpecError, match="runs on cpu, cuda, not 'tpu'"):
        oracles.get_oracle("test-echo:tpu")
    assert o.measure(conv_chain()).value == 7 * 0.5


def test_register_twice_or_a_non_oracle_is_an_error(echo):
    with pytest.raises(ValueError, match="already registered"):
        register_oracle("test-echo")(EchoOracle)
    with pytest.raises(TypeError, match="not a subclass"):
        register_oracle("test-not-an-oracle")(dict)


@pytest.mark.parametrize(
    "spec",
    [
        "params",
        "params?nonzero=1",
        "flops?batch=2&elementwise=1",
        "test-echo:cpu",  # several devices: the spec always names one
        "test-echo:cuda",
        "test-echo:cpu?scale=0.25&count=0&flag=1&mode=b",
        "test-echo:cpu?mode=a%26b%3Dc%3F",  # '&', '=', '?' in a value survive the round trip
    ],
)
def test_spec_round_trip_and_pickle(echo, spec):
    o = oracles.get_oracle(spec)
    assert o.spec == spec
    assert oracles.get_oracle(o.spec) == o
    assert str(o) == spec
    clone = pickle.loads(pickle.dumps(o))
    assert clone == o and clone.spec == spec
    assert oracles.get_oracle(o) is o


def test_spec_is_canonical(echo):
    o = oracles.get_oracle("TEST-ECHO:cpu?mode=a&count=5&scale=1.0")
    assert o.spec == "test-echo:cpu?count=5"  # defaults dropped, fields in declaration order
    assert o.settings() == {"device": "cpu", "scale": 1.0, "count": 5, "flag": False, "mode": "a"}


def test_register_names_what_an_incomplete_oracle_lacks():
    @dataclass(frozen=True)
    class NoMeasure(Oracle):
        quantity = "nodes"
        unit = "nodes"

    class NotADataclass(Oracle):
        quantity = "nodes"
        unit = "nodes"

        def measure(self, model, *, input_shapes=None):
            raise NotImplementedError

    @dataclass(frozen=True)
    class NoUnit(EchoOracle):
        unit = ""

    @dataclass(frozen=True)
    class GpuNotADevice(EchoOracle):
        devices = ("cpu",)
        gpu_devices = ("cuda",)

    @dataclass(frozen=True)
    class UnknownArtifact(EchoOracle):
        export_format = "tflite"

    cases = [
        (NoMeasure, r"NoMeasure is not a complete oracle: it needs a measure\(model"),
        (NoUnit, "a non-empty string 'unit'"),
        (GpuNotADevice, r"'gpu_devices' among its devices \(cuda is not\)"),
        (UnknownArtifact, "'export_format' one of onnx, openvino-ir, engine, torch"),
        (NotADataclass, r"its settings as dataclass fields"),
    ]
    for cls, message in cases:
        with pytest.raises(TypeError, match=message):
            register_oracle("test-incomplete")(cls)
    assert "test-incomplete" not in oracles.list_oracles()


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize(
    ("spec", "runtime", "export_format", "needs_gpu", "slow"),
    [
        ("params", "static", "onnx", False, False),
        ("flops?batch=2", "static", "onnx", False, False),
        ("peak-memory", "static", "onnx", False, False),
        ("onnxruntime:cpu?threads=1", "onnxruntime", "onnx", False, False),
        ("onnxruntime:cuda", "onnxruntime", "onnx", True, False),
        ("onnxruntime:tensorrt", "onnxruntime", "onnx", True, True),
        ("tensorrt", "tensorrt", "engine", True, True),
        ("tensorrt-memory?precision=fp16", "tensorrt", "engine", True, True),
        ("torch", "torch", "torch", False, False),
        ("torch:cuda", "torch", "torch", True, False),
        ("openvino", "openvino", "openvino-ir", False, False),
        ("openvino:gpu", "openvino", "openvino-ir", True, False),
        ("openvino:npu", "openvino", "openvino-ir", True, False),
    ],
)
def test_capabilities_of_the_built_in_oracles(spec, runtime, export_format, needs_gpu, slow):
    caps = oracles.capabilities(spec)
    assert caps == oracles.Capabilities(runtime, export_format, needs_gpu, slow, remote=False)
    built = oracles.get_oracle(spec, check=False)  # the instance says the same
    assert built.capabilities == caps
    assert (built.runtime, built.export_format) == (runtime, export_format)
    assert (built.needs_gpu, built.slow, built.remote) == (needs_gpu, slow, False)
    if built.input_format == "onnx":  # served: the served oracle's, remote set
        served = f"{spec}@http://127.0.0.1:9"
        remote = oracles.get_oracle(served, check=False)
        assert oracles.capabilities(served) == remote.capabilities
        assert remote.capabilities == oracles.Capabilities(runtime, export_format, needs_gpu,
                                                           slow, remote=True)  # fmt: skip
        assert remote.remote and remote.needs_gpu is needs_gpu and remote.slow is slow


def test_capabilities_follow_the_class_for_a_registered_oracle(echo):
    assert not oracles.capabilities("test-echo:cuda").needs_gpu  # declares no GPU device
    with pytest.raises(OracleSpecError, match="runs on cpu, cuda, not 'npu'"):
        oracles.capabilities("test-echo:npu")
    with pytest.raises(UnknownOracleError, match="Did you mean 'tensorrt'"):
        oracles.capabilities("tensorrtt")


def test_capabilities_need_no_runtime_and_oracles_needs_neither_torch_nor_hwprune():
    import subprocess
    import sys

    code = (
        "import sys, oracles, oracles.onnx_graph, oracles.static, oracles.remote\n"
        "for s in ('tensorrt', 'openvino:npu', 'onnxruntime:cuda', 'torch:cuda', 'params'):\n"
        "    oracles.capabilities(s)\n"
        "print(sorted(m for m in ('torch', 'hwprune', 'tensorrt', 'openvino', 'onnxruntime')\n"
        "             if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_remote_oracle_does_not_import_the_registry():
    """The registry builds remote oracles; oracles.remote gets its resolver, one way only."""
    import ast
    from pathlib import Path

    import oracles.remote

    tree = ast.parse(Path(oracles.remote.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "oracles.base" in imported and "oracles.registry" not in imported


# --------------------------------------------------------------------------- models


def test_load_onnx_from_bytes_path_and_proto(tmp_path):
    proto = conv_chain()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    for given in (proto, proto.SerializeToString(), path, str(path)):
        assert load_onnx(given).graph == proto.graph


def test_load_onnx_rejects_bad_input(tmp_path):
    with pytest.raises(ModelInputError, match="model file not found: .*missing.onnx"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelInputError, match="directory"):
        load_onnx(tmp_path)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not an ONNX model, only some text\n")
    with pytest.raises(ModelInputError, match="is not an ONNX model"):
        load_onnx(text)
    with pytest.raises(ModelInputError, match="is not an ONNX model"):
        load_onnx(b"\x00\x01\x02garbage\xff\xfe")
    with pytest.raises(ModelInputError, match="got int"):
        load_onnx(42)


def two_inputs() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        inputs=[("a", ["N", 4], TensorProto.FLOAT), ("b", [1, 4], TensorProto.FLOAT)],
        outputs=[("y", TensorProto.FLOAT)],
    )


def test_dynamic_dimension_needs_a_shape_naming_the_input():
    with pytest.raises(
        ModelInputError, match="input 'input' has a dynamic shape \\('N', 3, 16, 16\\)"
    ):
        resolve_input_shapes(conv_chain(batch="N"))
    with pytest.raises(ModelInputError, match="input 'a' has a dynamic shape"):
        resolve_input_shapes(two_inputs())
    with pytest.raises(ModelInputError, match="'input'"):
        FlopsOracle().model_key(conv_chain(batch="N"))


def test_resolve_input_shapes():
    dyn = conv_chain(batch="N")
    # A single-input model takes its shape under any name.
    assert resolve_input_shapes(dyn, {"x": (2, 3, 16, 16)}) == {"input": (2, 3, 16, 16)}
    assert resolve_input_shapes(dyn, batch=4) == {"input": (4, 3, 16, 16)}
    assert resolve_input_shapes(two_inputs(), {"a": (5, 4)}) == {"a": (5, 4), "b": (1, 4)}
    with pytest.raises(ModelInputError, match="'c', which the model has no input named"):
        resolve_input_shapes(two_inputs(), {"c": (1, 4)})
    with pytest.raises(ModelInputError, match="rank 4, but the shape given has 2"):
        resolve_input_shapes(dyn, {"input": (1, 3)})
    with pytest.raises(ModelInputError, match="batch must be a positive integer, got 0"):
        resolve_input_shapes(dyn, batch=0)
    fixed, shapes = fix_input_shapes(dyn, batch=2)
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 16, 16] and shapes == {"input": (2, 3, 16, 16)}
    assert dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # original untouched


def test_structure_key_ignores_weights_but_not_structure_or_shapes():
    a, b = conv_chain(seed=0), conv_chain(seed=1)
    assert structure_key(a) == structure_key(b)
    assert structure_key(a, include_values=True) != structure_key(b, include_values=True)
    assert structure_key(a) != structure_key(conv_chain(channels=(8, 32)))
    dyn = conv_chain(batch="N")
    one = structure_key(dyn, input_shapes={"input": (1, 3, 16, 16)})
    two = structure_key(dyn, input_shapes={"input": (2, 3, 16, 16)})
    assert one != two
    flops = FlopsOracle()
    assert flops.model_key(dyn, input_shapes={"input": (1, 3, 16, 16)}) == one
    assert flops.model_key(a) == flops.model_key(b)


# --------------------------------------------------------------------------- cache


def sample(value: float, oracle: str = "test") -> Measurement:
    return Measurement(
        quantity="latency",
        value=value,
        unit="ms",
        oracle=oracle,
        statistic="median",
        samples=50,
        iqr=0.1,
        cv=0.02,
        ci_low=value - 0.1,
        ci_high=value + 0.1,
        backend="onnxruntime",
        threads=1,
        batch=1,
        seconds=1.5,
        extra={"provider": "cpu"},
    )


def test_cache_put_get_round_trip(tmp_path):
    cache = MeasurementCache(tmp_path / "c.sqlite")
    m = sample(2.5)
    assert cache.get("k") is None
    cache.put("k", m)
    assert cache.get("k") == m
    cache.put("k", sample(3.0))  # replaced, not duplicated
    assert cache.get("k").value == 3.0 and len(cache) == 1
    reopened = pickle.loads(pickle.dumps(cache))
    assert reopened.get("k").value == 3.0


def test_measure_hit_is_marked_cached(tmp_path):
    cache = MeasurementCache(tmp_path / "c.sqlite")
    model = conv_chain()
    first = oracles.measure(FlopsOracle(), model, cache=cache)
    second = oracles.measure(FlopsOracle(), conv_chain(seed=3), cache=cache)  # same structure
    assert not first.cached and second.cached
    assert second.value == first.value
    # Other settings are another key.
    other = oracles.measure(FlopsOracle(elementwise=True), model, cache=cache)
    assert not other.cached and other.value > first.value
    assert cache_key(FlopsOracle(), "m") != cache_key(FlopsOracle(batch=2), "m")


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2{more}

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model name\t: AMD EPYC
"""


def test_hosts_with_one_cpu_name_and_other_cpus_never_share_timings(tmp_path, monkeypatch):
    """A cloud VM's CPU can be just "AMD EPYC" on hosts of two generations that time the same
    model 2-3x apart: their timings must not answer each other from one cache."""
    from oracles import cache as c

    parse = c._cpuinfo

    def key_on(name: str, **cpu: object) -> tuple[str, str]:
        path = tmp_path / name
        path.write_text(_CPUINFO.format(**cpu))
        info = parse(str(path))
        monkeypatch.setattr(c, "_cpuinfo", lambda: info)
        c.machine_identity.cache_clear()
        try:
            timed = oracles.get_oracle("onnxruntime:cpu?threads=1")
            return cache_key(timed, "m"), cache_key(FlopsOracle(), "m")
        finally:
            c.machine_identity.cache_clear()

    zen3 = key_on("zen3", family=25, model=1, more="")
    assert parse(str(tmp_path / "zen3"))["cpu family"] == "25"  # the first block only
    zen5 = key_on("zen5", family=26, model=2, more="")
    avx512 = key_on("avx512", family=25, model=1, more=" avx512f")
    assert zen3 == key_on("zen3-again", family=25, model=1, more="")
    assert len({zen3[0], zen5[0], avx512[0]}) == 3  # timed: one entry per CPU
    assert zen3[1] == zen5[1] == avx512[1]  # counted (FLOPs): the same on every host


def _write_entries(path: str, tag: str, n: int) -> int:
    cache = MeasurementCache(path)
    for i in range(n):
        cache.put(f"{tag}-{i}", sample(float(i), oracle=tag))
    cache.close()
    return n


def test_two_processes_write_one_cache(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        done = pool.starmap(_write_entries, [(path, "p0", 200), (path, "p1", 200)])
    assert done == [200, 200]
    cache = MeasurementCache(path)
    assert len(cache) == 400
    for tag in ("p0", "p1"):
        for i in (0, 99, 199):
            got = cache.get(f"{tag}-{i}")
            assert got is not None and got.value == float(i) and got.oracle == tag
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_corrupted_cache_is_set_aside_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "c.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    with caplog.at_level(logging.WARNING, logger="oracles.cache"):
        cache = MeasurementCache(path)
    assert "unreadable" in caplog.text
    aside = list(tmp_path.glob("c.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 8192
    assert len(cache) == 0
    cache.put("k", sample(1.0))
    assert MeasurementCache(path).get("k").value == 1.0


def test_repeats_keep_the_median_call(tmp_path):
    """measure(repeats=3) calls a timed oracle three times and keeps the median value."""
    from dataclasses import dataclass

    import oracles
    from oracles import Measurement, Oracle

    @dataclass(frozen=True)
    class Sequence(Oracle):
        name = "test-sequence"
        quantity = "latency"
        unit = "ms"
        timed = True
        device: str = "cpu"

        def model_key(self, model, *, input_shapes=None):
            return "fixed"

        def measure(self, model, *, input_shapes=None):
            value = VALUES.pop(0)
            return Measurement(quantity="latency", value=value, unit="ms", oracle=self.spec)

    VALUES = [5.0, 1.0, 3.0]
    cache = oracles.MeasurementCache(tmp_path / "c.sqlite")
    m = oracles.measure(Sequence(), b"", cache=cache, repeats=3)
    assert m.value == 3.0
    assert m.extra["repeat_values"] == [1.0, 3.0, 5.0]
    assert not VALUES
    again = oracles.measure(Sequence(), b"", cache=cache, repeats=3)
    assert again.cached and again.value == 3.0
