"""Hostile command lines beyond bad values: huge integers, user code that is missing, broken or
exits, special files as inputs, and what a finished run leaves behind.

Each case runs the real CLI (``hwprune.cli.main`` in-process; the console script's own
``sys.path`` through a script file) and checks one line, the exit code and the files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from hwprune.cli import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
TASK_RUN = ["--budget", "params<=60%", "--agent", "uniform", "--evaluations", "2", "--quiet"]


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current folder, holding the user's modules, and a sys.path without it (as the
    ``hwprune`` console script starts); sys.path and sys.modules are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    here = {"", ".", str(tmp_path)}
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in here])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("hostile_"):
            del sys.modules[name]


def _write(folder: Path, name: str, code: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(code))


# ------------------------------------------------------------------ integer options in range


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "--model", "vgg11_cifar", "--width", "0.25", "--budget", "flops<=50%",
          "--agent", "uniform", "--evaluations", "2", "--finetune-epochs", "0",
          "--seed", str(2**63)],
         f"seed must be a whole number from 0 to {2**32 - 1}, got {2**63}"),
        (["train", "--model", "vgg11_cifar", "--width", "0.25", "--data", "digits",
          "--epochs", "1", "--seed", str(2**64)],
         f"argument --seed: must be a whole number from 0 to {2**32 - 1}, got {2**64}"),
    ],
    ids=["prune", "train"],
)  # fmt: skip
def test_a_seed_beyond_its_range_is_refused_in_one_line(
    argv: list[str], message: str, tmp_path: Path, cli_refusal
) -> None:
    out = tmp_path / "out"
    flag = "--out"
    err = cli_refusal([*argv, flag, str(out if argv[0] == "prune" else out / "m.pt")])
    assert message in err
    assert not out.exists()


def test_a_config_files_seed_beyond_its_range_is_refused(tmp_path: Path, cli_refusal) -> None:
    config = tmp_path / "run.toml"
    config.write_text(f'model = "vgg11_cifar"\nbudget = "flops<=50%"\nseed = {2**64}\n')
    err = cli_refusal(["prune", "--config", str(config), "--out", str(tmp_path / "o")])
    assert f"seed must be a whole number from 0 to {2**32 - 1}, got {2**64}" in err


def test_every_integer_option_has_its_range_checked_and_the_largest_seed_is_usable() -> None:
    import dataclasses

    from stable_baselines3.common.utils import set_random_seed

    from hwprune.config import SEED_RANGE, PruneConfig
    from hwprune.errors import ConfigError

    ints = [f for f in dataclasses.fields(PruneConfig) if f.metadata["kind"] == "int"]
    assert {f.name for f in ints} >= {"seed", "evaluations", "finetune_epochs", "workers"}
    for f in ints:
        lo, hi = f.metadata["range"]
        with pytest.raises(ConfigError, match=f"^{f.name} must be .*{hi}"):
            PruneConfig(**{f.name: hi + 1})
    assert PruneConfig(seed=SEED_RANGE[1]).seed == 2**32 - 1
    set_random_seed(SEED_RANGE[1])  # what the searchers seed with: numpy, torch, random


# --------------------------------------------------------------- module:callable from the cwd


def test_the_console_script_imports_a_task_module_from_the_current_folder(tmp_path: Path) -> None:
    """The console script's sys.path holds its own folder, not the current one; a module
    beside the user is found as ``python -m`` would find it."""
    script = tmp_path / "bin" / "hwprune"
    script.parent.mkdir()
    script.write_text("import sys\nfrom hwprune.cli import main\nsys.exit(main())\n")
    work = tmp_path / "work"
    work.mkdir()
    _write(work, "hostile_reached", 'def factory():\n    raise RuntimeError("factory reached")\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), "prune", "--task", "hostile_reached:factory",
         "--budget", "params<=50%", "--out", "o", "--quiet"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "task factory 'hostile_reached:factory' raised RuntimeError: factory reached" in (
        " ".join(done.stderr.split())
    )
    assert not (work / "o").exists()


@pytest.mark.parametrize("flag", ["--task", "--model"])
def test_a_module_in_the_current_folder_is_imported(
    flag: str, user_folder: Path, cli_refusal
) -> None:
    _write(user_folder, "hostile_here", 'def build(**kw):\n    raise RuntimeError("built")\n')
    err = cli_refusal(
        ["prune", flag, "hostile_here:build", "--budget", "params<=50%", "--out", "o", "--quiet"]
    )
    assert "RuntimeError" in err and "built" in err and "No module named" not in err


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import os\n\nimport hostile_missing_dependency\n\ndef f():\n    pass\n",
         "importing hostile_broken for task 'hostile_broken:f' raised ModuleNotFoundError: "
         "No module named 'hostile_missing_dependency' (hostile_broken.py line 3)"),
        ("x = 1\nraise ValueError('bad constant')\n",
         "importing hostile_broken for task 'hostile_broken:f' raised ValueError: bad constant "
         "(hostile_broken.py line 2)"),
        ("def f(:\n    pass\n",
         "importing hostile_broken for task 'hostile_broken:f' raised SyntaxError: "),
    ],
    ids=["missing_import", "raises", "syntax"],
)  # fmt: skip
def test_an_error_inside_the_users_module_is_shown(
    code: str, message: str, user_folder: Path, cli_refusal
) -> None:
    _write(user_folder, "hostile_broken", code)
    err = cli_refusal(
        ["prune", "--task", "hostile_broken:f", "--budget", "params<=50%", "--out", "o", "--quiet"]
    )
    assert message in err
    assert "(hostile_broken.py line" in err
    assert not (user_folder / "o").exists()


def test_a_module_that_is_nowhere_says_where_it_was_looked_for(
    user_folder: Path, cli_refusal
) -> None:
    err = cli_refusal(
        [
            "prune",
            "--task",
            "hostile_nowhere:f",
            "--budget",
            "params<=50%",
            "--out",
            "o",
            "--quiet",
        ]
    )
    assert "no module named 'hostile_nowhere' in the current folder" in err
    assert str(user_folder) in err


# ----------------------------------------------------------------------- exit() in user code

EXITING = """
import sys

import torch

from tests.user_task import FidelityTask, small_net


def factory():
    sys.exit(0)


def build(num_classes=10):
    exit()


class ExitingTask(FidelityTask):
    def score(self, model):
        sys.exit(3)


def exiting_score():
    model = small_net()
    return model, torch.randn(1, 3, 16, 16), ExitingTask(model)


class ExitingNet(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        sys.exit(5)


def exiting_forward(num_classes=10):
    return ExitingNet(num_classes)
"""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "hostile_exits:factory"],
         "hostile_exits:factory called exit(0) while building the model"),
        (["--model", "hostile_exits:build"],
         "hostile_exits:build called exit() while building the model"),
        (["--task", "hostile_exits_on_import:f"],
         "importing hostile_exits_on_import for task 'hostile_exits_on_import:f' called "
         "exit('bye')"),
        (["--task", "hostile_exits:exiting_score", "--agent", "uniform", "--evaluations", "2"],
         ".score called exit(3) on"),
        (["--model", "hostile_exits:exiting_forward"],
         "'hwprune prune' stopped: code it ran called exit(5)"),
    ],
    ids=["task_factory", "model_callable", "on_import", "task_score", "model_forward"],
)  # fmt: skip
def test_exit_in_user_code_is_an_error_naming_it(
    argv: list[str], message: str, user_folder: Path, cli_refusal
) -> None:
    _write(user_folder, "hostile_exits", EXITING)
    _write(user_folder, "hostile_exits_on_import", "import sys\n\nsys.exit('bye')\n")
    sys.path.append(str(REPO))  # tests.user_task
    err = cli_refusal(["prune", *argv, "--budget", "params<=60%", "--out", "o", "--quiet"])
    assert message in err


# ------------------------------------------------------------------- special files as input


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/dev/zero", "is a character device, not a regular file"),
        ("{tmp}", "is a folder"),
        ("{tmp}/fifo", "is a pipe, not a regular file"),
    ],
    ids=["device", "folder", "fifo"],
)
def test_config_that_is_not_a_regular_file_says_what_it_is(
    target: str, message: str, tmp_path: Path, cli_refusal
) -> None:
    os.mkfifo(tmp_path / "fifo")  # opened without waiting for a writer
    path = target.format(tmp=tmp_path)
    err = cli_refusal(["prune", "--config", path, "--out", str(tmp_path / "o")])
    assert f"config file {path!r} {message}" in err and "not found" not in err


def test_weights_that_are_a_device_say_so(tmp_path: Path, cli_refusal) -> None:
    err = cli_refusal(["prune", "--model", "vgg11_cifar", "--weights", "/dev/zero", "--budget", "params<=50%",
         "--out", str(tmp_path / "o")])  # fmt: skip
    assert "checkpoint file '/dev/zero' is a character device, not a regular file" in err


def test_measure_of_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "hwprune", "measure", str(tmp_path / "model.onnx")],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "which is not a regular file" in done.stderr


# ----------------------------------------------------------------------- version and --help


def test_version_comes_from_the_package_metadata(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hwprune {version('hwprune')}"


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_prints_no_doubled_percent(command: str | None, capsys) -> None:
    assert main([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert "%%" not in out
    if command == "prune":
        assert "--budget 'latency<=50%' --agent" in " ".join(out.split())


# ------------------------------------------------------------- a finished run and its lock


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWPRUNE_CACHE", str(root / "cache.sqlite"))
        code = main(["prune", "--task", "tests.user_task:factory", *TASK_RUN, "--out", str(run)])
    assert code == 0
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_finished_run_leaves_no_lock(finished: Path) -> None:
    assert (finished / "report.json").is_file()
    assert not (finished / ".hwprune.lock").exists()


def test_resume_of_a_finished_run_says_complete_and_changes_nothing(finished: Path, capsys) -> None:
    before, names = _files(finished), sorted(os.listdir(finished))
    assert main(["prune", "--resume", str(finished), "--quiet"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1 and not err, (out, err)
    assert "is complete (2 evaluations)" in lines[0]
    assert f"report: {finished / 'report.md'}" in lines[0]
    assert main(["prune", "--resume", str(finished), "--json", "--workers", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads((finished / "report.json").read_text())
    assert _files(finished) == before and sorted(os.listdir(finished)) == names


def test_a_stopped_resume_that_raised_evaluations_is_continued_not_called_complete(
    finished: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    import hwprune
    from hwprune.config import read_run_config

    run = tmp_path / "run"
    shutil.copytree(finished, run)

    def interrupt(event) -> None:
        if event.stage == "search":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hwprune.resume(run, evaluations=3, progress=interrupt)
    assert read_run_config(run, require_model=False).evaluations == 3
    assert main(["prune", "--resume", str(run), "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert "is complete" not in out
    report = json.loads((run / "report.json").read_text())
    assert report["options"]["evaluations"] == 3 and report["search"]["evaluations"] == 3


def test_a_run_stopped_by_an_error_or_ctrl_c_leaves_no_lock(tmp_path: Path, cli_refusal) -> None:
    import hwprune
    from tests.user_task import factory

    failed = tmp_path / "failed"
    err = cli_refusal(["prune", "--task", "tests.user_task:raising_factory", "--budget", "params<=60%",
         "--agent", "random", "--evaluations", "4", "--quiet", "--out", str(failed)])  # fmt: skip
    assert "the metric crashed" in err and (failed / "episodes.jsonl").is_file()
    assert not (failed / ".hwprune.lock").exists()

    def interrupt(event) -> None:
        if event.stage == "search" and event.done >= 1:
            raise KeyboardInterrupt

    model, inputs, task = factory()
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        hwprune.prune(model, example_inputs=inputs, task=task, budgets=["params<=60%"],
                      agent="uniform", evaluations=2, out=stopped, progress=interrupt)  # fmt: skip
    assert (stopped / "config.json").is_file()  # kept, resumable
    assert not (stopped / ".hwprune.lock").exists()
