"""Repairing a final model that misses its budget on re-measurement (``hwprune.run.final``).

Real parts throughout: a small conv net trained on digits, Torch-Pruning surgery,
BN re-estimation and the ``params`` oracle (deterministic, so the test does not
depend on timing; the repair logic is the same for any oracle).
"""

from __future__ import annotations

import pytest
from torch import nn

from hwprune.budgets import bind_constraints
from hwprune.data import get_dataset
from hwprune.evaluate import Evaluator
from hwprune.run.final import repair_candidate as _repair_candidate
from hwprune.space import ChannelSpace, Policy
from hwprune.train import train
from tests.nets import conv_net


@pytest.fixture(scope="module")
def trained():
    data = get_dataset("digits")
    net = conv_net(32, 64, pooled=1, seed=0)
    train(net, data, epochs=4, seed=0)
    return net.eval(), data


def make_evaluator(net: nn.Module, data, budget: str) -> tuple[ChannelSpace, Evaluator]:
    space = ChannelSpace(net, example_input_shape=(1, *data.input_shape), min_keep=0.1)
    evaluator = Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints([budget], oracles={"params": "params"}),
        bn_batches=2,
        bn_batch_size=64,
        max_eval_samples=300,
    )
    evaluator.calibrate()
    return space, evaluator


def test_repair_prefers_a_scaled_down_policy_to_a_far_smaller_candidate(trained):
    net, data = trained
    space, evaluator = make_evaluator(net, data, "params<=40%")
    # What a bisection leaves behind: one candidate just inside the bound, one at the floor.
    edge = evaluator.evaluate(Policy.uniform(space, 0.6))
    floor = evaluator.evaluate(Policy.uniform(space, 0.1))
    assert edge.feasible and floor.feasible and edge.max_cost > 0.8
    # The edge candidate's final model was re-measured 5% over its bound.
    worst = 1.05
    picked = _repair_candidate(evaluator, space, edge, worst=worst, tried={edge.key})
    assert picked is not None and picked.feasible
    assert picked.max_cost <= 0.98 * edge.max_cost / worst  # the margin is kept
    # The floor was the only earlier candidate with that margin; a scaled-down edge is better.
    assert floor.accuracy < 0.6
    assert picked.key != floor.key
    assert picked.accuracy > floor.accuracy
    assert picked.max_cost > 2 * floor.max_cost  # far less pruning than the floor


def test_repair_gives_up_when_nothing_has_the_margin(trained):
    net, data = trained
    space, evaluator = make_evaluator(net, data, "params<=5%")
    floor = evaluator.evaluate(Policy.uniform(space, 0.1))
    if not floor.feasible:
        pytest.skip("the floor misses a 5% budget on this net: nothing to repair towards")
    # Missed by 50%: even the floor cannot be that far under the bound.
    assert _repair_candidate(evaluator, space, floor, worst=1.5, tried={floor.key}) is None


def test_the_margin_scales_with_the_miss(trained):
    """A miss is a factor (a busy machine slows every model alike): a candidate measured at
    0.9 of its bound and re-measured 30% over needs 0.9 / 1.3, not 0.9 - 0.3."""
    net, data = trained
    space, evaluator = make_evaluator(net, data, "params<=40%")
    edge = evaluator.evaluate(Policy.uniform(space, 0.6))
    worst = 1.3
    picked = _repair_candidate(evaluator, space, edge, worst=worst, tried={edge.key})
    assert picked is not None
    assert edge.max_cost - (worst - 1.0) < picked.max_cost <= 0.98 * edge.max_cost / worst


def test_candidates_tied_on_proxy_accuracy_go_to_the_least_pruned(trained):
    """An untrained net scores near chance whatever is pruned (as a deep residual net cut
    hard does before fine-tuning): the repair keeps the largest candidate with the margin."""
    _, data = trained
    net = conv_net(32, 64, pooled=1, seed=1).eval()  # untrained
    space, evaluator = make_evaluator(net, data, "params<=40%")
    edge = evaluator.evaluate(Policy.uniform(space, 0.6))
    smaller = [evaluator.evaluate(Policy.uniform(space, k)) for k in (0.1, 0.2, 0.3)]
    accs = [o.accuracy for o in (edge, *smaller)]
    assert max(accs) - min(accs) < 0.05, accs  # all near chance: no signal to rank by
    picked = _repair_candidate(evaluator, space, edge, worst=1.05, tried={edge.key})
    assert picked is not None
    assert picked.max_cost > max(o.max_cost for o in smaller)  # not one of the small ones
    assert picked.max_cost <= 0.98 * edge.max_cost / 1.05
