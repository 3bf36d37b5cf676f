"""Baselines (uniform, global-magnitude, random) and the multi-visit env on a tiny conv net.

Real parts: Torch-Pruning surgery, ONNX export, the params oracle reading the
ONNX graph and ONNX Runtime timing sessions on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import oracles
from hwprune.agents import get_searcher
from hwprune.agents.baselines import bisect_largest_feasible, global_keep
from hwprune.budgets import bind_constraints
from hwprune.data import get_dataset
from hwprune.evaluate import Evaluator
from hwprune.space import ChannelSpace, Policy
from tests.nets import TinyNet

LATENCY = "onnxruntime:cpu?threads=1&min_time=0.1&warmup=5"


@pytest.fixture(scope="module")
def data():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = TinyNet()
    # Scale each conv's filters differently so magnitudes differ across and within units.
    with torch.no_grad():
        for i, m in enumerate(m for m in net.modules() if isinstance(m, nn.Conv2d)):
            m.weight.mul_(torch.linspace(0.2, 2.0, m.out_channels).view(-1, 1, 1, 1) * (i + 1))
    return net.eval()


def make_space(model, data, *, min_keep: float = 0.1) -> ChannelSpace:
    return ChannelSpace(model, example_input_shape=(1, *data.input_shape), min_keep=min_keep)


def make_evaluator(space, data, budgets, *, oracle_overrides=None) -> Evaluator:
    constraints = bind_constraints(budgets, oracles=oracle_overrides)
    ev = Evaluator(
        space=space,
        data=data,
        constraints=constraints,
        bn_batches=1,
        bn_batch_size=32,
        max_eval_samples=64,
    )
    ev.calibrate()
    return ev


def remeasure(space, policy, data, spec: str) -> float:
    """The policy's value measured by a fresh oracle, no cache."""
    from hwprune.export.onnx import export_onnx

    shape = (1, *data.input_shape)
    onnx_bytes = export_onnx(space.apply(policy), input_shape=shape)
    return oracles.get_oracle(spec).measure(onnx_bytes, input_shapes={"input": shape}).value


# ----------------------------------------------------------------- units
def test_global_keep_removes_the_lowest_scores_globally():
    scores = [np.array([1.0, 5.0, 6.0, 7.0]), np.array([2.0, 3.0, 4.0, 8.0])]
    # remove 3 of 8: 1.0 (unit 0), 2.0 and 3.0 (unit 1)
    assert global_keep(scores, 3 / 8) == (0.75, 0.5)
    assert global_keep(scores, 0.0) == (1.0, 1.0)
    # min_keep floors a unit that would lose everything
    assert global_keep(scores, 1.0, min_keep=0.25) == (0.25, 0.25)


# ------------------------------------------------------------- searchers
def test_uniform_finds_the_largest_feasible_keep(model, data):
    space = make_space(model, data)
    ev = make_evaluator(space, data, ["params<=40%"])
    result = get_searcher("uniform", tolerance=0.002).search(
        space=space, evaluator=ev, evaluations=30
    )
    assert result.best is not None and result.best.feasible and not result.repaired
    assert len(set(result.best.policy.keep)) == 1
    bound = ev.constraints[0].bound
    assert remeasure(space, result.best.policy, data, "params") <= bound
    # The bisection's answer (the best is the most accurate feasible probe, maybe a smaller one).
    keep = result.extra["keep"]
    assert remeasure(space, Policy.uniform(space, keep), data, "params") <= bound
    # The next larger uniform shape is over the budget: the budget is used as fully as possible.
    kept = space.kept_channels(Policy.uniform(space, keep))
    step = keep
    while space.kept_channels(Policy.uniform(space, step)) == kept:
        step += 0.001
    assert remeasure(space, Policy.uniform(space, step), data, "params") > bound
    assert result.evaluations <= 12


def test_uniform_meets_a_latency_budget_on_onnxruntime(model, data):
    space = make_space(model, data)
    ev = make_evaluator(space, data, ["latency<=60%"], oracle_overrides={"latency": LATENCY})
    result = get_searcher("uniform", tolerance=0.02).search(
        space=space, evaluator=ev, evaluations=10
    )
    assert result.best is not None and result.best.feasible
    assert result.best.policy.keep[0] < 1.0
    assert result.best.values["latency"] <= ev.constraints[0].bound
    # A fresh session agrees that the pruned net is the faster one; both are timed
    # now (a bound fixed earlier would test the machine's load, not the searcher).
    assert remeasure(space, result.best.policy, data, LATENCY) < remeasure(
        space, Policy.uniform(space, 1.0), data, LATENCY
    )


def test_global_magnitude_is_feasible_and_not_uniform(model, data):
    space = make_space(model, data)
    ev = make_evaluator(space, data, ["params<=40%"])
    result = get_searcher("global-magnitude").search(space=space, evaluator=ev, evaluations=20)
    assert result.best is not None and result.best.feasible and not result.repaired
    assert remeasure(space, result.best.policy, data, "params") <= ev.constraints[0].bound
    # The bisection's answer (the reported best is the most accurate feasible probe).
    keep = result.extra["policy"]
    assert (
        remeasure(space, Policy.dense(space).with_keep(keep), data, "params")
        <= ev.constraints[0].bound
    )
    assert max(keep) - min(keep) > 0.05  # scaled filters: the global ranking prunes unevenly
    assert result.evaluations <= 20


@pytest.mark.gpu
def test_layer_costs_of_a_model_moved_to_the_gpu(model, data):
    """QLP's parameter shares profiled space.model with the space's CPU inputs after the run
    moved the model to the GPU (`hwprune prune --device cuda --agent qlp`)."""
    import copy

    from hwprune.space._layers import profile

    space = make_space(copy.deepcopy(model), data)
    want = profile(space.model, space.example_inputs).total_macs
    space.model.to("cuda")
    assert profile(space.model, space.example_inputs).total_macs == want


@pytest.mark.gpu
def test_global_magnitude_on_a_model_moved_to_the_gpu(model, data):
    import copy

    from hwprune.agents.baselines import channel_magnitudes

    space = make_space(copy.deepcopy(model), data)
    want = channel_magnitudes(space)
    space.model.to("cuda")
    got = channel_magnitudes(space)
    assert all(np.allclose(a, b, rtol=1e-4) for a, b in zip(got, want, strict=True))


def test_random_search_spends_its_budget_and_repeats_with_its_seed(model, data):
    space = make_space(model, data)
    ev = make_evaluator(space, data, ["params<=50%"])
    a = get_searcher("random", seed=3).search(space=space, evaluator=ev, evaluations=6)
    assert a.evaluations == 6
    assert a.best is not None and a.best.feasible
    assert remeasure(space, a.best.policy, data, "params") <= ev.constraints[0].bound
    ev2 = make_evaluator(space, data, ["params<=50%"])
    b = get_searcher("random", seed=3).search(space=space, evaluator=ev2, evaluations=6)
    assert [o.policy.keep for o in a.history] == [o.policy.keep for o in b.history]
    c = get_searcher("random", seed=4).search(space=space, evaluator=ev2, evaluations=6)
    assert [o.policy.keep for o in a.history] != [o.policy.keep for o in c.history]


@pytest.mark.parametrize("name", ["uniform", "global-magnitude", "random"])
def test_unreachable_budget_is_reported_infeasible(model, data, name):
    space = make_space(model, data, min_keep=0.1)
    ev = make_evaluator(space, data, ["params<=0.01%"])
    result = get_searcher(name, seed=0).search(space=space, evaluator=ev, evaluations=3)
    assert result.infeasible and result.best is None
    smallest = remeasure(space, Policy.uniform(space, 0.1), data, "params")
    assert result.smallest["params"] == pytest.approx(smallest)


def test_bisection_stops_when_both_ends_share_a_shape(model, data):
    space = make_space(model, data)
    ev = make_evaluator(space, data, ["params<=40%"])
    from hwprune.agents.base import BudgetedEvaluator

    budget = BudgetedEvaluator(ev, 100)
    best = bisect_largest_feasible(
        lambda k: Policy.uniform(space, k), budget, space=space, lo=0.1, hi=1.0, tolerance=1e-9
    )
    assert best is not None and best.feasible
    # 48 channels at most: about log2(48 * 0.9) + 2 distinct shapes, never 30 (1e-9 tolerance).
    assert budget.used <= 10
