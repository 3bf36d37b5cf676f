"""Hostile models and tasks handed to ``hwprune.prune``: refused in one line before the search,
or pruned without silently shipping a wrong model (BatchNorm wiped, a weight tie split)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import hwprune
from hwprune.cli import main
from hwprune.errors import ConfigError, DataError, HwpruneError
from hwprune.task import TaskError, as_task, reestimate_bn_on
from tests.user_task import FidelityTask, SmallNet, TiedNet, small_net, tied_net

SMALL = dict(budgets=["params<=60%"], agent="random", evaluations=2)
X = torch.randn(1, 3, 16, 16)


def _bn_stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone())
            for m in model.modules() if isinstance(m, nn.BatchNorm2d)]  # fmt: skip


def _trained_bn_net() -> SmallNet:
    """small_net with BatchNorm statistics that are not the reset ones (as a trained net has)."""
    model = small_net()
    for i, m in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        m.running_mean.fill_(0.1 * (i + 1))
        m.running_var.fill_(2.0 + i)
        m.num_batches_tracked.fill_(100)
    return model


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert len(text.splitlines()) == 1, text
    return text


def _cli_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return " ".join(err.split())


# --------------------------------------------------------------------------- BatchNorm calibration


class _NoBatches(IterableDataset):
    def __iter__(self):
        return iter(())


@pytest.mark.parametrize(
    ("calibrate", "message"),
    [
        (DataLoader([]), "calibrate is an empty DataLoader"),
        ([], "calibrate is an empty list"),
        ((b for b in [torch.randn(4, 3, 16, 16)]), "calibrate is a one-pass iterator"),
        (DataLoader(_NoBatches(), batch_size=4), "yielded no batch"),
        (DataLoader(TensorDataset(torch.randn(3, 3, 16, 16)), batch_size=8, drop_last=True),
         "calibrate is an empty DataLoader"),
    ],
    ids=["empty-loader", "empty-list", "generator", "iterable-dataset", "drop-last"],
)  # fmt: skip
def test_a_calibration_loader_without_batches_is_refused_before_the_search(
    calibrate, message: str, tmp_path: Path
) -> None:
    model = _trained_bn_net()
    before = _bn_stats(model)
    out = tmp_path / "run"
    with pytest.raises(HwpruneError, match=message) as info:
        hwprune.prune(model, example_inputs=X, score=FidelityTask(model).score,
                      calibrate=calibrate, out=out, **SMALL)  # fmt: skip
    _one_line(info.value)
    assert not out.exists()  # refused before anything was measured: no folder claims the run
    assert all(torch.equal(a, c) and torch.equal(b, d)
               for (a, b), (c, d) in zip(before, _bn_stats(model), strict=True))  # fmt: skip


def _resets_and_runs_nothing(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()


def test_a_calibrate_callable_that_leaves_batchnorm_reset_is_refused(tmp_path: Path) -> None:
    model = _trained_bn_net()
    out = tmp_path / "run"
    with pytest.raises(TaskError) as info:
        hwprune.prune(model, example_inputs=X, score=FidelityTask(model).score,
                      calibrate=_resets_and_runs_nothing, out=out, **SMALL)  # fmt: skip
    text = _one_line(info.value)
    assert "task.calibrate left BatchNorm 'body.1' and 1 more reset with no batch seen" in text
    assert "before the search" in text
    assert not out.exists()


def test_a_task_that_calibrates_from_an_empty_loader_stops_the_cli_in_one_line(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    err = _cli_one_line(["prune", "--task", "tests.user_task:empty_calibration_factory",
                         "--budget", "params<=60%", "--agent", "random", "--evaluations", "2",
                         "--out", str(out), "--quiet"], capsys)  # fmt: skip
    assert "yielded no batch" in err and "left as they were" in err
    assert not out.exists()


def test_a_calibration_that_stops_refilling_batchnorm_is_caught_at_the_final_stage(
    tmp_path: Path,
) -> None:
    """Each candidate's calibration is checked, the final one included: a wiped BatchNorm never
    reaches the shipped model."""
    model = _trained_bn_net()
    inner = FidelityTask(model)
    stage = {"name": ""}

    def calibrate(m: nn.Module) -> None:
        if stage["name"] == "finetune":
            _resets_and_runs_nothing(m)
        else:
            reestimate_bn_on(m, inner.loader, batches=2)

    def progress(event) -> None:
        stage["name"] = event.stage

    with pytest.raises(TaskError, match=r"calibrate left BatchNorm 'body\.1' .* on the chosen"):
        hwprune.prune(model, example_inputs=X, score=inner.score, calibrate=calibrate,
                      progress=progress, out=tmp_path / "run", **SMALL)  # fmt: skip


def test_the_batchnorm_helpers_leave_statistics_alone_without_a_batch() -> None:
    from hwprune.train import reestimate_bn

    model = _trained_bn_net()
    before = _bn_stats(model)
    with pytest.raises(DataError, match="yielded no batch"):
        reestimate_bn_on(model, DataLoader([]))
    empty = DataLoader(TensorDataset(torch.randn(3, 3, 16, 16), torch.zeros(3)), batch_size=8,
                       drop_last=True)  # fmt: skip
    with pytest.raises(DataError, match="yielded no batch"):
        reestimate_bn(model, empty)
    after = _bn_stats(model)
    assert all(torch.equal(a, c) and torch.equal(b, d)
               for (a, b), (c, d) in zip(before, after, strict=True))  # fmt: skip
    # With one batch the statistics are re-estimated from it (not left reset).
    assert reestimate_bn_on(model, [torch.randn(8, 3, 16, 16)]) == 1
    assert all(not torch.equal(b, torch.ones_like(b)) for _, b in _bn_stats(model))


def test_the_builtin_task_refuses_a_calibration_set_without_images() -> None:
    from hwprune.data import get_dataset
    from hwprune.models import get_model
    from hwprune.task import ClassificationTask

    data = get_dataset("digits")
    task = ClassificationTask(data, bn_batches=2, bn_batch_size=16)
    task._bn_indices = []  # a training split with no image to calibrate on
    model = get_model("vgg11_cifar", width=0.25, input_size=8)
    before = [m.running_var.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with pytest.raises(DataError):
        task.calibrate(model)
    after = [m.running_var for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


# --------------------------------------------------------------------------- weight ties


def _tie_holds(model: nn.Module) -> bool:
    return model.c1.weight is model.c2.weight


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_a_weight_tie_survives_pruning(granularity: str, tmp_path: Path) -> None:
    model = tied_net()
    task = FidelityTask(model, shape=(3, 8, 8))
    out = tmp_path / "run"
    # No finetune: the user's training loop would refill the zeros of a sparse candidate.
    result = hwprune.prune(model, example_inputs=torch.randn(1, 3, 8, 8), score=task.score,
                           out=out,
                           budgets=["params<=85%"], agent="random", evaluations=3,
                           granularity=granularity)  # fmt: skip
    assert result.all_met
    assert _tie_holds(result.model)  # one Parameter, not two copies
    if granularity == "channel":
        assert result.model.c3.out_channels < 16  # the untied layer is still pruned
    again = hwprune.restore(TiedNet(), out)
    assert _tie_holds(again) and torch.equal(again.c1.weight, result.model.c1.weight)


def test_the_channel_space_keeps_tied_layers_unpruned_and_says_why() -> None:
    from hwprune.space import ChannelSpace, Policy

    space = ChannelSpace(tied_net(), example_inputs=torch.randn(1, 3, 8, 8))
    assert [u.id for u in space.units] == ["c3"]
    reasons = {s.id: s.reason for s in space.skipped}
    assert set(reasons) == {"c0", "c1", "c2"}
    assert "'c1.weight' and 'c2.weight' share (a weight tie)" in reasons["c1"]
    pruned = space.apply(Policy.uniform(space, 0.5))
    assert _tie_holds(pruned) and pruned.c3.out_channels == 8


def test_the_weight_space_prunes_tied_layers_as_one_unit() -> None:
    from hwprune.space import Policy, WeightSpace

    space = WeightSpace(tied_net(), example_inputs=torch.randn(1, 3, 8, 8))
    assert [u.layers for u in space.units] == [("c0",), ("c1", "c2"), ("c3",), ("head",)]
    policy = Policy.uniform(space, 0.5)
    pruned = space.apply(policy)
    assert _tie_holds(pruned)
    assert float((pruned.c1.weight == 0).float().mean()) == pytest.approx(0.5)
    nonzero = sum(int((p != 0).sum()) for p in pruned.parameters())  # each tensor once
    assert space.nonzero_params(policy) == nonzero


class _TiedHead(nn.Module):
    """A language-model head tied to its embedding (a tie with a layer that is not Conv/Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.mid = nn.Linear(16, 32)
        self.out = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.out(torch.relu(self.mid(self.emb(ids)))))


@pytest.mark.parametrize("space_type", ["ChannelSpace", "WeightSpace"])
def test_a_head_tied_to_an_embedding_keeps_its_tie(space_type: str) -> None:
    import hwprune.space as spaces
    from hwprune.space import Policy

    torch.manual_seed(0)
    space = getattr(spaces, space_type)(
        _TiedHead().eval(), example_inputs=torch.randint(0, 10, (1, 5))
    )
    assert "mid" in [u.id for u in space.units]  # the untied layer is still pruned
    assert "head" not in [layer for u in space.units for layer in u.layers]
    pruned = space.apply(Policy.uniform(space, 0.5))
    assert pruned.head.weight is pruned.emb.weight


def test_a_split_tie_is_never_silent() -> None:
    from hwprune.space._layers import check_ties, tied_parameters

    model = tied_net()
    ties = tied_parameters(model)
    assert ties == [("c1.weight", "c2.weight")]
    model.c2.weight = nn.Parameter(model.c1.weight.detach().clone())
    with pytest.raises(ConfigError, match="'c1.weight', 'c2.weight' share"):
        check_ties(model, ties)


def test_a_tied_model_from_a_task_factory_keeps_its_tie(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["prune", "--task", "tests.user_task:tied_factory", "--budget", "params<=85%",
                 "--agent", "random", "--evaluations", "3", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert _tie_holds(hwprune.load_pruned(out, allow_import=True))


# --------------------------------------------------------------------------- finetune's return


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        (lambda m, t: small_net(), r"task\.finetune returned a module that is not the candidate "
                                   r"it was given \(parameter 'body\.0\.weight' has shape "
                                   r"\[16, 3, 3, 3\], \[\d+, 3, 3, 3\] in the candidate\)"),
        (lambda m, t: nn.Sequential(m), r"\(it has no module 'body'\)"),
        (lambda m, t: "done", r"task\.finetune returned a str for the chosen candidate"),
    ],
    ids=["another-module", "wrapped", "str"],
)  # fmt: skip
def test_finetune_must_return_the_candidate(finetune, message: str, tmp_path: Path) -> None:
    model = small_net()
    with pytest.raises(TaskError, match=message) as info:
        hwprune.prune(model, example_inputs=X, score=FidelityTask(model).score,
                      finetune=finetune, out=tmp_path / "run", **SMALL)  # fmt: skip
    _one_line(info.value)


def test_finetune_returning_none_trained_the_candidate_in_place(tmp_path: Path) -> None:
    model = small_net()
    inner = FidelityTask(model)
    trained: list[nn.Module] = []

    def finetune(m: nn.Module, teacher: nn.Module) -> None:
        inner.finetune(m, teacher)
        trained.append(m)

    result = hwprune.prune(model, example_inputs=X, score=inner.score, finetune=finetune,
                           out=tmp_path / "run", **SMALL)  # fmt: skip
    assert result.all_met and result.finetuned
    assert result.model is trained[-1]


# --------------------------------------------------------------------------- meta device


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        (small_net, torch.randn(1, 3, 16, 16, device="meta"),
         "example input 'input' is a tensor on the meta device; example inputs must be real "
         "tensors on cpu or cuda"),
        (small_net, (torch.randn(1, 3, 16, 16, device="meta"),),
         "example input 'input_0' is a tensor on the meta device"),
        (lambda: small_net().to("meta"), X,
         "SmallNet's parameter 'body.0.weight' is a tensor on the meta device; the model's "
         "parameters and buffers must be real tensors on cpu or cuda"),
    ],
    ids=["input", "tuple-input", "model"],
)  # fmt: skip
def test_meta_tensors_are_refused_in_one_line(model, inputs, message: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        hwprune.prune(model(), example_inputs=inputs, score=lambda m: 0.0, out=out, **SMALL)
    assert message in _one_line(info.value)
    assert not out.exists()


# --------------------------------------------------------------------------- None outputs


class _Outputs(SmallNet):
    def __init__(self, shape: str) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor):
        y = super().forward(x)
        return {"none": None, "dict": {"logits": y, "aux": None}, "tuple": (y, None),
                "nested": {"heads": [y, None]}}[self.shape]  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "where"),
    [("none", "output"), ("dict", "output['aux']"), ("tuple", "output[1]"),
     ("nested", "output['heads'][1]")],
)  # fmt: skip
def test_an_output_that_is_none_is_named(shape: str, where: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ConfigError) as info:
        hwprune.prune(_Outputs(shape).eval(), example_inputs=X, score=lambda m: 0.0,
                      out=tmp_path / "run", **SMALL)  # fmt: skip
    text = _one_line(info.value)
    assert f"_Outputs's {where} is None with the example inputs" in text
    assert "ignored_layers" not in text


# --------------------------------------------------------------------------- score values


@pytest.mark.parametrize(
    "value",
    [0, 1, 0.5, -3.25, np.float32(0.5), np.int64(2), np.array(0.5), torch.tensor(0.5),
     torch.tensor(3)],
)  # fmt: skip
def test_a_real_finite_number_is_a_score(value) -> None:
    from hwprune.task import score_number

    assert score_number(value) == pytest.approx(float(value))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.5", "'0.5' (a str)"),
        (True, "True (a bool)"),
        (np.bool_(False), "False (a bool)"),
        (torch.tensor(True), "a 0-d tensor holding True (bool)"),
        (torch.tensor([0.5]), "a tensor of shape (1,)"),
        (np.array([0.5]), "a numpy value of shape (1,)"),
        (math.nan, "nan"),
        (torch.tensor(math.inf), "a 0-d tensor holding inf (float32)"),
        (None, "None"),
        (1 + 2j, "a complex"),
        ([0.5], "a list"),
        (10**400, "an int too large for a float"),
    ],
    ids=["str", "bool", "np-bool", "bool-tensor", "1-d-tensor", "1-d-array", "nan", "inf-tensor",
         "none", "complex", "list", "huge-int"],
)  # fmt: skip
def test_a_score_that_is_not_a_real_finite_number_is_refused(value, shown: str) -> None:
    from hwprune.task import score_number

    assert score_number(value) is None
    task = as_task(score=lambda m: value)
    with pytest.raises(TaskError) as info:
        task.checked_score(nn.Linear(1, 1), what="the dense model")
    assert _one_line(info.value) == (
        f"task.score returned {shown} for the dense model; it must return a real finite number "
        "(an int, a float, a 0-d tensor or a numpy scalar)"
    )


@pytest.mark.parametrize("value", ["0.5", True])
def test_prune_refuses_a_score_that_is_not_a_number(value, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(TaskError, match=r"task\.score returned .* \(a (str|bool)\) for the dense"):
        hwprune.prune(small_net(), example_inputs=X, score=lambda m: value, out=out, **SMALL)
    assert not out.exists()


def test_score_chance_follows_the_same_rule() -> None:
    class Chance(FidelityTask):
        score_chance = "0.1"

    with pytest.raises(ConfigError, match=r"Chance\.score_chance must be a finite number or None "
                                          r"\(.*\), got '0\.1' \(a str\)"):  # fmt: skip
        as_task(Chance(small_net()))
