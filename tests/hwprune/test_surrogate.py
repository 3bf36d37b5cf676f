"""The latency surrogate's fit and decision rule (hwprune.evaluate.surrogate).

The timed oracle below is deterministic (a smooth function of the ONNX graph's
parameter count) and counts its calls: it tests the gate's logic, not measuring
(the real ONNX Runtime oracle is exercised in tests/test_surrogate_prune.py).
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import oracles
from hwprune.config import PruneConfig
from hwprune.constraints import bind_constraints
from hwprune.data import get_dataset
from hwprune.errors import ConfigError
from hwprune.evaluate import Evaluator, read_jsonl
from hwprune.evaluate.surrogate import (
    MIN_POINTS,
    OracleSurrogate,
    summarize,
    surrogate_report,
    surrogate_wanted,
)
from hwprune.space import ChannelSpace, Policy


@oracles.register_oracle("test-smooth-latency")
@dataclasses.dataclass
class SmoothLatency(oracles.Oracle):
    """0.05 ms + 1 ms per 100k parameters (+ a mild curve); counts its calls."""

    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True
    calls: ClassVar[list[int]] = [0]
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        self.calls[0] += 1
        p = oracles.get_oracle("params").measure(model).value / 1e5
        return oracles.Measurement(
            quantity="latency", value=0.05 + p + 0.1 * p * p, unit="ms", oracle=self.spec,
            statistic="median", samples=20,
        )  # fmt: skip


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()


@pytest.fixture(scope="module")
def data():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def space(data):
    return ChannelSpace(tiny_net(), example_input_shape=(1, *data.input_shape), min_keep=0.1)


def make_evaluator(space, data, *, surrogate: str, log_path=None) -> Evaluator:
    return Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints(["latency<=40%"], oracles={"latency": "test-smooth-latency"}),
        bn_batches=1,
        bn_batch_size=32,
        max_eval_samples=64,
        surrogate=surrogate,
        log_path=log_path,
    )


def policies(space, n: int, seed: int = 0) -> list[Policy]:
    rng = random.Random(seed)
    return [Policy(keep=tuple(rng.uniform(0.1, 1.0) for _ in space.units)) for _ in range(n)]


def run(ev: Evaluator, pols: list[Policy]) -> int:
    SmoothLatency.calls[0] = 0
    for p in pols:
        ev.evaluate(p)
    return SmoothLatency.calls[0]


# --------------------------------------------------------------------------- the model


def test_the_model_answers_only_after_enough_points_and_then_fits_a_smooth_target() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(0.1, 1.0, size=(40, 6))
    y = 1.0 + X @ np.array([3.0, 1.0, 0.5, 0.2, 0.0, 0.0]) + 0.5 * X[:, 0] ** 2
    model = OracleSurrogate(dense_features=np.ones(6), dense_value=float(y.max()), seed=0)
    for i in range(MIN_POINTS - 1):
        model.add(X[i], y[i])
    assert model.predict(X[30]) is None
    for i in range(MIN_POINTS - 1, 30):
        model.add(X[i], y[i])
    errors = []
    for i in range(30, 40):
        p = model.predict(X[i])
        assert p is not None and p.low < p.value < p.high and p.points == 30
        errors.append(abs(p.value - y[i]) / y[i])
    assert max(errors) < 0.05


def test_an_overconfident_model_widens_its_interval() -> None:
    model = OracleSurrogate(dense_features=np.ones(2), dense_value=1.0)
    for i in range(MIN_POINTS):
        model.add(np.array([i / 10, 1.0]), 1.0 + i / 10)
    p = model.predict(np.array([0.35, 1.0]))
    width = p.high - p.low
    for _ in range(6):  # every check missed by far more than its standard deviation
        model.check(p, p.value + 1000 * p.std)
    q = model.predict(np.array([0.35, 1.0]))
    assert q.high - q.low > 2 * width


# --------------------------------------------------------------------------- the rule


def test_auto_turns_on_for_slow_remote_or_engine_oracles_only() -> None:
    ort = oracles.get_oracle("onnxruntime:cpu?threads=1")
    assert surrogate_wanted("auto", ort, call_seconds=0.6)[0] is False
    assert surrogate_wanted("auto", ort, call_seconds=25.0)[0] is True
    assert surrogate_wanted("on", ort, call_seconds=0.6)[0] is True
    assert surrogate_wanted("off", ort, call_seconds=25.0)[0] is False
    remote = oracles.get_oracle("onnxruntime:cpu@http://127.0.0.1:9", check=False)
    assert surrogate_wanted("auto", remote, call_seconds=0.1) == (True, "auto: a remote oracle")
    params = oracles.get_oracle("params")
    assert surrogate_wanted("on", params, call_seconds=None)[0] is False  # exact counts: measured


def test_bad_mode_is_refused_in_one_sentence() -> None:
    with pytest.raises(ConfigError, match=r"surrogate must be one of auto, on, off, got 'often'"):
        PruneConfig(model="vgg11_cifar", budgets=("latency<=50%",), surrogate="often")


def test_the_gate_measures_fewer_and_only_where_it_may_predict(space, data, tmp_path) -> None:
    pols = policies(space, 40)
    off = make_evaluator(space, data, surrogate="off")
    off.calibrate()
    calls_off = run(off, pols)
    ev = make_evaluator(space, data, surrogate="on", log_path=str(tmp_path / "ep.jsonl"))
    ev.calibrate()
    calls_on = run(ev, pols)
    n = ev.evaluations
    assert calls_off == n  # one call per distinct candidate
    assert calls_on < 0.7 * n
    bound = ev.constraints[0].bound
    best = None
    for o in ev.history:
        info = o.surrogate["latency"]
        if o.sources["latency"] == "predicted":
            assert o.measurements["latency"].statistic == "predicted"
            p = info["prediction"]
            assert not p["low"] <= bound <= p["high"], "a straddling interval was trusted"
            # More accurate than every feasible candidate so far: measured, whatever the
            # predicted verdict (a wrong 'infeasible' would hide the best model from the choice).
            assert best is not None and o.accuracy <= best, "a would-be best was not measured"
        else:
            assert o.measurements["latency"].statistic == "median"
        assert info["reason"] in ("warmup", "interval", "audit", "best", "predicted")
        if o.feasible:
            best = o.accuracy if best is None else max(best, o.accuracy)
    assert [o.surrogate["latency"]["reason"] for o in ev.history[: MIN_POINTS - 1]] == [
        "warmup"
    ] * (MIN_POINTS - 1)  # the dense model is the first point
    s = summarize(ev.history, ev.constraints)["latency"]
    assert s["predicted"] == sum(o.sources["latency"] == "predicted" for o in ev.history) > 0
    assert s["checked"] > 0 and s["median_abs_error"] < 0.1
    # The log says which values were predicted, and so does a resumed evaluator.
    records = [r for r in read_jsonl(tmp_path / "ep.jsonl") if r.get("type") == "candidate"]
    assert [r["sources"]["latency"] for r in records] == [o.sources["latency"] for o in ev.history]
    again = make_evaluator(space, data, surrogate="on", log_path=str(tmp_path / "ep.jsonl"))
    assert [o.sources for o in again.history] == [o.sources for o in ev.history]
    assert surrogate_report(ev)["budgets"]["latency"]["predicted"] == s["predicted"]


def test_measured_only_measures_a_predicted_value_and_the_log_keeps_it(
    space, data, tmp_path
) -> None:
    path = str(tmp_path / "ep.jsonl")
    ev = make_evaluator(space, data, surrogate="on", log_path=path)
    ev.calibrate()
    run(ev, policies(space, 40, seed=1))
    predicted = next(o for o in ev.history if o.predicted)
    SmoothLatency.calls[0] = 0
    assert ev.evaluate(predicted.policy).predicted == ("latency",)  # the search may reuse it
    assert SmoothLatency.calls[0] == 0
    with ev.measured_only():
        measured = ev.evaluate(predicted.policy)
    assert SmoothLatency.calls[0] == 1
    assert measured.sources["latency"] == "measured" and measured.key == predicted.key
    assert ev._by_key[predicted.key] is measured
    assert ev.smallest()["latency"] == min(
        o.values["latency"] for o in ev.history if not o.predicted
    )
    # A resumed evaluator reads the later, measured record for that key.
    again = make_evaluator(space, data, surrogate="on", log_path=path)
    back = next(o for o in again.history if o.key == predicted.key)
    assert back.sources["latency"] == "measured"
    assert back.values["latency"] == pytest.approx(measured.values["latency"])
    assert len(again.history) == len(ev.history)


def test_the_auto_decision_is_logged_once_and_kept_on_resume(space, data, tmp_path) -> None:
    path = str(tmp_path / "ep.jsonl")
    ev = make_evaluator(space, data, surrogate="on", log_path=path)
    ev.calibrate()
    again = make_evaluator(space, data, surrogate="on", log_path=path)
    again.calibrate()
    decisions = [r for r in read_jsonl(path) if r.get("type") == "surrogate"]
    assert len(decisions) == 1 and decisions[0]["enabled"] == {"latency": True}
    assert again.surrogate is not None
