"""A task's optional parts, read once by ``as_task``: what the run asks of every task alike."""

from __future__ import annotations

import pytest
from torch import nn

from hwprune.errors import ConfigError
from hwprune.tasks import BoundTask, TaskError, as_task


class _Scored:
    def calibrate(self, model: nn.Module) -> None:
        return None

    def score(self, model: nn.Module) -> float:
        return 0.5


class _Recipe(_Scored):
    finetune_epochs = 3

    def finetune(self, model: nn.Module, teacher: nn.Module) -> None:
        return None

    def describe_finetune(self) -> str:
        return "Fine-tuning: 3 epochs of my own loop."


def test_a_task_declares_its_epochs_and_recipe_like_the_built_in_one() -> None:
    bound = as_task(_Recipe())
    assert bound.finetune_epochs == 3
    assert bound.finetune_text() == "Fine-tuning: 3 epochs of my own loop."


def test_without_a_recipe_the_report_line_says_what_is_known() -> None:
    class Trains(_Scored):
        def finetune(self, model: nn.Module, teacher: nn.Module) -> None:
            return None

    assert as_task(_Scored()).finetune_epochs is None
    assert as_task(_Scored()).finetune_text() == "Fine-tuning: none (the task has no finetune)."
    assert as_task(Trains()).finetune_text() is None  # it trains, and does not say how


@pytest.mark.parametrize("epochs", ["3", -1, 2.5, True])
def test_finetune_epochs_that_is_not_a_count_is_refused_in_one_sentence(epochs: object) -> None:
    class Odd(_Scored):
        finetune_epochs = epochs

    with pytest.raises(ConfigError, match=r"^Odd\.finetune_epochs must be a non-negative int"):
        as_task(Odd())


def test_a_failing_recipe_is_a_task_error_naming_it() -> None:
    class Broken(_Scored):
        def describe_finetune(self) -> str:
            raise RuntimeError("no words")

    with pytest.raises(TaskError, match=r"Broken\.describe_finetune raised RuntimeError"):
        as_task(Broken()).finetune_text()


def test_binding_is_done_once() -> None:
    bound = as_task(_Recipe())
    assert isinstance(bound, BoundTask) and as_task(bound) is bound
