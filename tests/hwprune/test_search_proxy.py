"""The search proxy of the built-in task (``--proxy bn|kd|recover:STEPS``) in real runs on digits:
each runs, is logged with its cost, is computed once per candidate, and never mixes settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hwprune
from hwprune.budgets import bind_constraints
from hwprune.data import get_dataset
from hwprune.errors import ConfigError
from hwprune.evaluate import Evaluator, Outcome, read_jsonl
from hwprune.models import get_model
from hwprune.run.choose import rank_feasible
from hwprune.space import ChannelSpace, Policy
from hwprune.task import ClassificationTask

RUN = dict(width=0.25, budgets=["flops<=40%"], agent="random", finetune_epochs=0)


def _candidates(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "episodes.jsonl") if r.get("type") == "candidate"]


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The real ClassificationTask.score, counted: one entry (the model's size) per call."""
    calls: list[int] = []
    real = ClassificationTask.score

    def counted(self: ClassificationTask, model: torch.nn.Module) -> float:
        calls.append(sum(p.numel() for p in model.parameters()))
        return real(self, model)

    monkeypatch.setattr(ClassificationTask, "score", counted)
    return calls


@pytest.mark.parametrize(
    "proxy",
    ["kd", pytest.param("bn", marks=pytest.mark.slow),
     pytest.param("recover:3", marks=pytest.mark.slow)],
)  # fmt: skip
def test_each_proxy_runs_is_logged_and_a_resumed_run_does_not_recompute_it(
    proxy: str, tmp_path: Path, scored: list[int]
) -> None:
    out = tmp_path / "run"
    result = hwprune.prune("vgg11_cifar", out=out, evaluations=3, proxy=proxy, **RUN)
    first = _candidates(out)
    dense_size = max(scored)
    # The dense model once (the reference score), then each distinct candidate once.
    assert scored.count(dense_size) == 1
    assert len(scored) == 1 + len(first)
    assert all(r["score_key"].startswith(f"{proxy} ") for r in first)
    for r in first:
        t = r["timings"]
        assert t["proxy"] == pytest.approx(t["bn"] + t["accuracy"]) and t["proxy"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
    report = json.loads((out / "report.json").read_text())
    mean = sum(r["timings"]["proxy"] for r in first) / len(first)
    assert report["search"]["proxy"] == proxy
    assert report["search"]["proxy_seconds_mean"] == pytest.approx(mean)
    assert f"search proxy: `{proxy}`" in (out / "report.md").read_text()
    if proxy == "kd":
        assert result.score_dense == 1.0  # exp(-KL) of the dense model against itself

    scored.clear()
    hwprune.resume(out, evaluations=5)
    after = _candidates(out)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)), "a candidate was scored twice"
    assert keys[: len(first)] == [r["key"] for r in first]
    # Nothing logged was scored again: the dense model and the new candidates only.
    assert len(scored) == 1 + len(after) - len(first)


def test_a_logged_score_is_reused_only_for_the_same_proxy_and_data(tmp_path: Path) -> None:
    data = get_dataset("digits")
    torch.manual_seed(0)
    model = get_model("vgg11_cifar", num_classes=10, width=0.25).eval()
    space = ChannelSpace(model, example_input_shape=(1, 3, 32, 32))
    log_path = str(tmp_path / "episodes.jsonl")
    policy = Policy.uniform(space, 0.5)

    def evaluator(data=data, **task: object) -> Evaluator:
        ev = Evaluator(space=space, task=ClassificationTask(data, teacher=model, **task),
                       constraints=bind_constraints(["params<=60%"]), log_path=log_path)  # fmt: skip
        ev.calibrate()
        return ev

    bn = evaluator(proxy="bn").evaluate(policy)
    again = evaluator(proxy="bn")
    assert again.evaluations == 1 and again.evaluate(policy).cached
    kd_ev = evaluator(proxy="kd")
    assert kd_ev.evaluations == 0  # the bn record is not a kd score
    kd = kd_ev.evaluate(policy)
    assert not kd.cached and kd.accuracy != bn.accuracy
    assert evaluator(proxy="kd").evaluations == 1
    assert evaluator(proxy="recover:2").evaluations == 0
    # Other data (another split seed) is another key too.
    assert evaluator(data=get_dataset("digits", seed=1), proxy="kd").evaluations == 0
    # A log written before scores had keys was scored by bn: reused by bn only.
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
    Path(log_path).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "score_key"})
                                      + "\n" for r in records))  # fmt: skip
    assert evaluator(proxy="bn").evaluations == 1
    assert evaluator(proxy="kd").evaluations == 0


def test_a_continuous_proxy_is_ranked_as_measured() -> None:
    data = get_dataset("digits")
    teacher = torch.nn.Linear(1, 1)
    bn, kd = ClassificationTask(data, proxy="bn"), ClassificationTask(data, proxy="kd",
                                                                      teacher=teacher)  # fmt: skip
    assert bn.score_samples == 359 and kd.score_samples == 0

    def outcome(key: str, score: float, cost: float) -> Outcome:
        return Outcome(index=0, policy=None, key=key, accuracy=score, values={"latency": cost},
                       costs={"latency": cost}, feasible=True)  # fmt: skip

    # Within two standard errors of a bn accuracy on 359 images the larger model is preferred;
    # a kd agreement has no binomial noise band: the higher score wins.
    outs = [outcome("small", 0.902, 0.5), outcome("large", 0.900, 0.99)]
    assert rank_feasible(outs, samples=bn.score_samples)[0].key == "large"
    assert rank_feasible(outs, samples=kd.score_samples)[0].key == "small"


def test_bad_proxy_settings_are_one_sentence() -> None:
    data = get_dataset("digits")
    with pytest.raises(ConfigError, match="proxy must be bn, kd or recover:STEPS"):
        ClassificationTask(data, proxy="accuracy")
    with pytest.raises(ConfigError, match="the kd proxy compares candidates with the dense model"):
        ClassificationTask(data, proxy="kd")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.raises(ConfigError, match="proxy 'kd' is an option of the built-in task"):
        hwprune.prune(net, example_inputs=torch.randn(1, 3, 8, 8), score=lambda m: 1.0,
                      budgets=["params<=50%"], out="unused", proxy="kd")  # fmt: skip


def test_the_bn_proxy_chance_is_the_largest_class_share_of_its_images() -> None:
    from collections import Counter

    data = get_dataset("digits")
    bn = ClassificationTask(data, proxy="bn", max_eval_samples=200)
    labels = Counter(int(data.search[i][1]) for i in bn._eval_indices)
    assert bn.score_chance == max(labels.values()) / 200
    assert 0.1 <= bn.score_chance < 0.2  # ten roughly balanced classes
    kd = ClassificationTask(data, proxy="kd", teacher=torch.nn.Linear(1, 1))
    assert kd.score_chance is None  # a continuous score still orders candidates at chance
