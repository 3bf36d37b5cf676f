"""A pruned candidate whose forward pass fails is an infeasible candidate, never the task's error;
groups whose pruning breaks the forward or whose channels cannot be scored are left whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import hwprune
from hwprune.budgets import bind_constraints
from hwprune.evaluate import Evaluator, read_jsonl
from hwprune.evaluate.evaluator import FAILED_COST
from hwprune.space import ChannelSpace, Policy


class _FixedHeads(nn.Module):
    """Self-attention over tokens that splits its projection into a fixed number of heads with
    the head size derived (``x.view(b, s, heads, -1)``): a projection width that is not a
    multiple of ``heads`` breaks the forward pass."""

    heads = 4

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.qkv = nn.Linear(16, 32)
        self.proj = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = torch.relu(self.embed(x))
        q = self.qkv(h).view(b, s, self.heads, -1).transpose(1, 2)
        a = torch.softmax(q @ q.transpose(-1, -2), dim=-1) @ q
        a = a.transpose(1, 2).reshape(b, s, -1)
        return self.head(torch.relu(self.proj(a)).mean(1))


class _Fidelity:
    """Scores a model by how close its outputs stay to the dense model's; counts its calls."""

    def __init__(self, model: nn.Module) -> None:
        torch.manual_seed(1)
        self.batch = torch.randn(16, 5, 8)
        with torch.no_grad():
            self.target = model(self.batch)
        self.calls = 0

    def score(self, model: nn.Module) -> float:
        self.calls += 1
        with torch.no_grad():
            return -float(((model(self.batch) - self.target) ** 2).mean())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return _FixedHeads().eval()


X = torch.randn(2, 5, 8)


def test_a_candidate_whose_forward_fails_is_infeasible_with_its_cause_logged(tmp_path: Path):
    model = _model()
    # min_keep 0.25: every count tried before the search (8, 16, 24 of 32) is a multiple of 4.
    space = ChannelSpace(model, example_inputs=X, min_keep=0.25)
    assert "qkv" in [u.id for u in space.units]
    task = _Fidelity(model)
    log_path = tmp_path / "episodes.jsonl"
    ev = Evaluator(space=space, task=task, constraints=bind_constraints(["params<=80%"]),
                   log_path=log_path)  # fmt: skip
    ev.calibrate()
    calls = task.calls
    broken = ev.evaluate(Policy.uniform(space, 0.3))  # qkv keeps 10 of 32
    assert space.kept_channels(broken.policy)["qkv"] % 4
    assert not broken.feasible and broken.error and "shape" in broken.error
    assert broken.costs == {"params": FAILED_COST}
    assert task.calls == calls  # the task never saw the model that does not run
    fine = ev.evaluate(Policy.uniform(space, 0.5))  # 16 of 32
    assert fine.error is None and fine.feasible and task.calls == calls + 1
    assert broken.accuracy <= fine.accuracy
    records = [r for r in read_jsonl(log_path) if r.get("type") == "candidate"]
    assert records[0]["error"] == broken.error and "error" not in records[1]
    assert records[0]["sources"] == {"params": "failed"}
    # Read back on resume: the same infeasible candidate, not evaluated again.
    again = Evaluator(space=space, task=task, constraints=bind_constraints(["params<=80%"]),
                      log_path=log_path)  # fmt: skip
    back = again.outcome(broken.key)
    assert back is not None and back.error == broken.error and not back.feasible


def test_a_search_through_candidates_that_do_not_run_ships_a_model_that_runs(tmp_path: Path):
    model = _model()
    task = _Fidelity(model)
    out = tmp_path / "run"
    result = hwprune.prune(model, example_inputs=X, score=task.score, out=out,
                           budgets=["params<=70%"], agent="random", evaluations=8,
                           min_keep=0.25, seed=0)  # fmt: skip
    assert result.all_met
    with torch.no_grad():
        assert result.model(X).shape == (2, 3)
    records = [r for r in read_jsonl(out / "episodes.jsonl") if r.get("type") == "candidate"]
    failed = [r for r in records if "error" in r]
    assert failed and all(not r["feasible"] and "shape" in r["error"] for r in failed)
    report = json.loads((out / "report.json").read_text())
    assert report["output_shapes"] == {"output": {"dense": [2, 3], "final": [2, 3]}}
    md = (out / "report.md").read_text()
    assert "| `output` | 2x3 | 2x3 |" in md


def test_units_are_tried_at_their_smallest_count_and_between_before_the_search():
    # Every count below the full 32 that min_keep 0.1 reaches at the tried ratios (3, 8, 16,
    # 24) but 8, 16 and 24 is no multiple of 4: the smallest (3) breaks, so qkv is left whole.
    space = ChannelSpace(_model(), example_inputs=X, min_keep=0.1)
    assert "qkv" not in [u.id for u in space.units]
    reason = {s.id: s.reason for s in space.skipped}["qkv"]
    assert "breaks the forward pass" in reason and "3 of 32" in reason


class _ChannelMultiplier(nn.Module):
    """A depthwise convolution with two output channels per input (groups=C, 2C outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(self.pw(x).mean((2, 3)))


def test_a_group_whose_channels_cannot_be_scored_is_left_out():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    # Torch-Pruning's importance raises IndexError on the stem's group (through the
    # channel-multiplier conv); only that group is left out.
    space = ChannelSpace(_ChannelMultiplier().eval(), example_inputs=x)
    reasons = {s.id: s.reason for s in space.skipped}
    assert "cannot score its channels (IndexError" in reasons["stem"]
    assert [u.id for u in space.units] == ["dw", "pw"]
    assert space.apply(Policy.uniform(space, 0.5))(x).shape == (1, 4)
