"""One episodes log, one shipped candidate: the library, the CLI, a resumed run and the
benchmarks all choose by hwprune.run.choose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hwprune
from benchmarks.search import ship
from hwprune.budgets import bind_constraints
from hwprune.cli import main
from hwprune.config import read_run_config
from hwprune.evaluate import Evaluator, read_jsonl
from hwprune.run.load import build_space, space_options
from hwprune.space import Policy
from tests.user_task import factory

TASK = "tests.user_task:factory"
# A random search on a user's small net: its candidates differ in score and size, so the
# ranking decides, and a parameter budget keeps every verdict exact (no timing noise).
OPTIONS = {"agent": "random", "evaluations": 8, "seed": 0}


def _candidates(run_dir: Path) -> list[str]:
    rows = read_jsonl(run_dir / "episodes.jsonl")
    return [r["key"] for r in rows if r.get("type", "candidate") == "candidate"]


def test_one_log_ships_one_candidate_by_every_path(tmp_path: Path, capsys) -> None:
    # The library: a fresh run writes the log every other path is fed.
    api = tmp_path / "api"
    result = hwprune.prune(task=TASK, budgets=["params<=60%"], out=api, **OPTIONS)
    assert result.all_met

    # The space and evaluator the run used, rebuilt over that log (a copy: the choice may log).
    config = read_run_config(api)
    model, example_inputs, task = factory()
    space = build_space(model, example_inputs=example_inputs, options=space_options(config))
    log = tmp_path / "bench.jsonl"
    shutil.copy(api / "episodes.jsonl", log)
    evaluator = Evaluator(space=space, task=task, log_path=str(log), constraints=bind_constraints(
        list(config.budgets), oracles=dict(config.oracles)))  # fmt: skip
    evaluator.calibrate()
    logged = len(evaluator.history)
    assert logged == len(set(_candidates(api))) >= 4

    # The CLI with the same options: the same log, by the same seed.
    cli = tmp_path / "cli"
    args = ["prune", "--task", TASK, "--budget", "params<=60%", "--agent", "random",
            "--evaluations", "8", "--seed", "0", "--out", str(cli), "--quiet", "--json"]  # fmt: skip
    assert main(args) == 0
    cli_policy = json.loads(capsys.readouterr().out)["policy"]
    assert _candidates(cli) == _candidates(api)

    # A resumed run: the log kept, the finished outputs gone (a run stopped after its search).
    resumed = tmp_path / "resumed"
    shutil.copytree(api, resumed)
    for name in ("report.json", "report.md", "model.pt", "model.onnx"):
        (resumed / name).unlink()
    assert main(["prune", "--resume", str(resumed), "--quiet", "--json"]) == 0
    resumed_policy = json.loads(capsys.readouterr().out)["policy"]
    assert _candidates(resumed)[: len(_candidates(api))] == _candidates(api)

    # The benchmarks' choice, from the evaluator holding the log.
    choice = ship(space, evaluator)
    assert choice.best is not None and not choice.repaired
    assert len(evaluator.history) == logged  # chosen from the log: nothing new evaluated

    keys = {
        "api": space.shape_key(result.policy),
        "cli": space.shape_key(Policy.from_dict(cli_policy, space=space)),
        "resume": space.shape_key(Policy.from_dict(resumed_policy, space=space)),
        "benchmark": choice.best.key,
    }
    assert len(set(keys.values())) == 1, keys
    # The shipped candidate is a logged one, and not merely the first logged.
    assert evaluator.outcome(choice.best.key) is not None
    assert choice.best.key != _candidates(api)[0]
