"""The evaluator's settings: one typed object, or the same options given one by one."""

from __future__ import annotations

import pytest

from hwprune.budgets import bind_constraints
from hwprune.evaluate.evaluator import Evaluator, EvaluatorOptions, ProxyOptions
from hwprune.space import ChannelSpace
from hwprune.tasks import as_task
from tests.nets import tiny_net


@pytest.fixture(scope="module")
def space() -> ChannelSpace:
    return ChannelSpace(tiny_net(), example_input_shape=(1, 3, 16, 16))


def _task():
    return as_task(score=lambda model: 0.5)


def test_an_options_object_and_keywords_build_the_same_evaluator(space) -> None:
    typed = Evaluator(space=space, task=_task(), constraints=[],
                      options=EvaluatorOptions(seed=7, opset=17, surrogate="auto"))  # fmt: skip
    spelled = Evaluator(space=space, task=_task(), constraints=[], seed=7, opset=17,
                        surrogate="auto")  # fmt: skip
    assert typed.options == spelled.options
    assert (spelled.seed, spelled.opset, spelled.surrogate_mode) == (7, 17, "auto")


def test_a_keyword_overrides_the_options_object(space) -> None:
    ev = Evaluator(space=space, task=_task(), constraints=[],
                   options=EvaluatorOptions(seed=7, opset=17), seed=3)  # fmt: skip
    assert (ev.options.seed, ev.options.opset) == (3, 17)


def test_the_built_in_task_options_need_data(space) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'bn_batches'"):
        Evaluator(space=space, task=_task(), constraints=[], bn_batches=2)
    with pytest.raises(TypeError, match="proxy= only with data="):
        Evaluator(space=space, task=_task(), constraints=[], proxy=ProxyOptions())


def test_an_untimed_oracle_is_the_one_object_for_search_and_verdicts(space) -> None:
    ev = Evaluator(space=space, task=_task(), constraints=bind_constraints(["params<=50%"]))
    assert ev.search_oracles["params"] is ev.oracles["params"]  # untimed: the same object
