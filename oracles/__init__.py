"""hwprune's measurement layer: black-box oracles from a model to a Measurement.

This package never imports ``hwprune`` and its ONNX-based oracles import
neither torch nor stable-baselines3, so it runs on a target device that only
has onnx, onnxruntime, openvino or tensorrt installed.

>>> import oracles
>>> params = oracles.get_oracle("params")
>>> params.measure("model.onnx").value  # doctest: +SKIP
11689512.0
"""

from oracles.base import Capabilities, Measurement, Oracle, check_oracle_class, parse_spec
from oracles.cache import (
    MeasurementCache,
    default_cache_path,
    home_dir,
    machine_identity,
    measure,
)
from oracles.errors import (
    BackendUnavailableError,
    CacheError,
    DeviceUnavailableError,
    MeasurementFailedError,
    ModelInputError,
    OracleError,
    OracleSpecError,
    UnknownOracleError,
)
from oracles.registry import (
    capabilities,
    get_oracle,
    list_oracles,
    oracle_class,
    register_oracle,
)

__all__ = [
    "Capabilities",
    "Measurement",
    "Oracle",
    "check_oracle_class",
    "parse_spec",
    "MeasurementCache",
    "default_cache_path",
    "home_dir",
    "machine_identity",
    "measure",
    "OracleError",
    "CacheError",
    "OracleSpecError",
    "UnknownOracleError",
    "BackendUnavailableError",
    "DeviceUnavailableError",
    "ModelInputError",
    "MeasurementFailedError",
    "capabilities",
    "get_oracle",
    "list_oracles",
    "oracle_class",
    "register_oracle",
]
