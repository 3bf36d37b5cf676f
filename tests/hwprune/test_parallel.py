"""Parallel evaluation: worker processes / Ray tasks prepare candidates, one device times them.

Real parts: spawned worker processes and a Ray instance started here, the CIFAR
VGG-11 at width 0.25 on the built-in digits, Torch-Pruning surgery, ONNX
export, the flops oracle and ONNX Runtime timing in a device process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwprune.config import PruneConfig
from hwprune.errors import ConfigError
from hwprune.evaluate import read_jsonl
from hwprune.evaluate.parallel import check_ray, plan_cores

ROOT = Path(__file__).resolve().parents[2]
LATENCY = "onnxruntime:cpu?threads=1&min_time=0.05&warmup=3"


def _candidates(run: Path) -> list[dict]:
    return [
        r for r in read_jsonl(run / "episodes.jsonl") if r.get("type", "candidate") == "candidate"
    ]


def _same_log(a: Path, b: Path, *, exact: tuple[str, ...] = ("flops",)) -> None:
    ra, rb = _candidates(a), _candidates(b)
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb, strict=True):
        assert (x["index"], x["key"], x["policy"], x["accuracy"], x["params"]) == (
            y["index"], y["key"], y["policy"], y["accuracy"], y["params"])  # fmt: skip
        assert {k: x["values"][k] for k in exact} == {k: y["values"][k] for k in exact}
        assert sorted(x["values"]) == sorted(y["values"])


def _prune(out: Path, **options) -> None:
    import hwprune

    hwprune.prune(model="vgg11_cifar", width=0.25, finetune_epochs=0, tensorrt=False, out=out,
                  **options)  # fmt: skip


# ------------------------------------------------------------------ plain logic
def test_timing_devices_get_cores_of_their_own() -> None:
    assert plan_cores(1, cores=[0, 1]) == ([1], [0])
    assert plan_cores(2, cores=[0, 1, 2, 3]) == ([2, 3], [0, 1])
    # Never every core: the workers keep one, devices share the rest round robin.
    assert plan_cores(3, cores=[0, 1]) == ([1, 1, 1], [0])
    assert plan_cores(1, cores=[0]) == ([None], None)
    assert plan_cores(1, cores=[0, 1], dedicated=False) == ([None], None)
    assert plan_cores(0, cores=[0, 1]) == ([], None)


@pytest.mark.parametrize("workers", [0, -2, 5000, 1.5, True])
def test_bad_workers_value_says_what_is_accepted(workers) -> None:
    with pytest.raises(ConfigError, match=r"workers must be (an integer|.* from 1 to 1024), got"):
        PruneConfig(model="vgg11_cifar", budgets=("flops<=50%",), workers=workers)


def test_unreachable_ray_address_is_refused_quickly() -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at '127.0.0.1:9'"):
        check_ray("127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"HOST:PORT"):
        check_ray("nowhere")
    assert time.monotonic() - t0 < 60  # not Ray's own minutes of retrying


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "workers must be a whole number of worker processes from 1 to 1024"),
        (["--ray", "127.0.0.1:9"], "cannot reach the Ray cluster at '127.0.0.1:9'"),
        (
            ["--ray", "ray://127.0.0.1:9", "--budget", "latency<=90%"],
            "would time there, not on this machine",
        ),
    ],
)
def test_cli_bad_workers_or_ray_is_one_line_exit_2(tmp_path: Path, flags, message) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hwprune", "prune", "--model", "vgg11_cifar", "--width", "0.25",
           "--budget", "flops<=50%", "--out", str(tmp_path / "run"), "--quiet", *flags]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


class _Line:
    """A fake one-number space and evaluator: feasible below a known threshold (searcher logic)."""

    min_keep = 0.0

    def __init__(self, threshold: float, budget: int, width: int) -> None:
        self.threshold, self.budget, self.width = threshold, budget, width
        self.asked: list[list[float]] = []
        self._keys: set[str] = set()

    def shape_key(self, x: float) -> str:
        return f"{round(x * 1000)}"

    @property
    def used(self) -> int:
        return len(self._keys)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.budget

    def _one(self, x: float):
        from types import SimpleNamespace

        self._keys.add(self.shape_key(x))
        return SimpleNamespace(feasible=x <= self.threshold, key=self.shape_key(x), policy=x)

    def __call__(self, x: float):
        self.asked.append([x])
        return self._one(x)

    def evaluate_many(self, xs: list[float]):
        self.asked.append(list(xs))
        return [self._one(x) for x in xs]


@pytest.mark.parametrize("width", [1, 2, 4])
def test_n_section_finds_the_bisection_boundary_in_fewer_rounds(width: int) -> None:
    from hwprune.agents.baselines import bisect_largest_feasible

    line = _Line(0.6173, budget=100, width=width)
    best = bisect_largest_feasible(lambda x: x, line, space=line, lo=0.0, hi=1.0,
                                   tolerance=0.005, width=width)  # fmt: skip
    assert best.feasible and 0.6173 - 0.005 <= best.policy <= 0.6173
    assert all(len(batch) <= width for batch in line.asked)
    rounds = {1: len(line.asked)}
    if width == 1:
        # Point for point the classic bisection: hi, lo, then one midpoint per round.
        assert line.asked[:3] == [[1.0], [0.0], [0.5]]
    else:
        assert line.asked[0] == [1.0, 0.0] and len(line.asked[1]) == width
        one = _Line(0.6173, budget=100, width=1)
        bisect_largest_feasible(lambda x: x, one, space=one, lo=0.0, hi=1.0, tolerance=0.005)
        rounds[1] = len(one.asked)
        assert len(line.asked) < rounds[1]


# ------------------------------------------------------------------ batched RL episodes
class _Deferred:
    """An Evaluator wrapper that works on several candidates "at once": ``submit`` returns an
    unfinished handle (width > 1), and the candidate is evaluated (here, in this process) only
    when its result is asked for. Counts how many were outstanding together (searcher logic; real
    workers are tested below)."""

    def __init__(self, evaluator, width: int) -> None:
        self.inner, self.width = evaluator, width
        self.outstanding = self.most = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def submit(self, policy):
        owner = self

        class Handle:
            outcome = None

            def done(self) -> bool:
                return self.outcome is not None

            def result(self):
                if self.outcome is None:
                    self.outcome = owner.inner.evaluate(policy)
                    owner.outstanding -= 1
                return self.outcome

        handle = Handle()
        self.outstanding += 1
        self.most = max(self.most, self.outstanding)
        if self.width == 1:  # one at a time: answered before submit returns, as in one process
            handle.result()
        return handle


def _digits_evaluator(space, budgets: list[str]):
    from hwprune.budgets import bind_constraints
    from hwprune.data import get_dataset
    from hwprune.evaluate import Evaluator
    from hwprune.task import ClassificationTask

    task = ClassificationTask(get_dataset("digits"), max_eval_samples=64, bn_batches=1,
                              bn_batch_size=32)  # fmt: skip
    ev = Evaluator(space=space, task=task, constraints=bind_constraints(budgets))
    ev.calibrate()
    return ev


@pytest.mark.parametrize(
    ("agent", "options", "learner"),
    [
        ("amc", {"warmup_episodes": 2, "anchor": False}, "TD3"),
        ("qlp", {"visits": 2, "learning_starts": 8, "batch_size": 8}, "DQN"),
    ],
)
def test_rl_agents_play_a_batch_of_episodes_and_learn_when_every_reward_is_in(
    agent: str, options: dict, learner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """amc and qlp ask for the evaluator's width of candidates before waiting for any, never
    past the budget, and every reward of a batch is in the replay buffer before an update."""
    import numpy as np
    import stable_baselines3

    from hwprune.agents import get_searcher

    base = getattr(stable_baselines3, learner)
    train, updates = base.train, []

    def checked_train(model, *args, **kwargs):
        buf = model.replay_buffer
        rows = slice(0, buf.buffer_size if buf.full else buf.pos)
        ends = buf.dones[rows, 0] > 0
        # AMC pays every step of an episode its final reward; DQN the last step only.
        paid = buf.rewards[rows, 0] if agent == "amc" else buf.rewards[rows, 0][ends]
        updates.append((int(ends.sum()), bool(np.all(paid != 0))))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(base, "train", checked_train)

    space = _vgg_space()

    def run(width: int, **batch):
        ev = _Deferred(_digits_evaluator(space, ["flops<=40%"]), width=width)
        result = get_searcher(agent, seed=0, **options, **batch).search(
            space=ev.space, evaluator=ev, evaluations=7, confirm=0, repair_infeasible=False
        )
        return ev, result

    ev, result = run(2)
    assert ev.most == 2  # two episodes' candidates were in flight together
    # An odd budget, not overrun (QLP keeps its last evaluation for a greedy rollout, which
    # may find a shape it has seen).
    assert ev.inner.evaluations == result.evaluations <= 7
    assert result.evaluations == 7 or agent == "qlp"
    keys = [o.key for o in ev.inner.history]
    assert len(keys) == len(set(keys))
    assert updates and all(paid for _, paid in updates), updates
    assert result.extra["batch_episodes"] == 2
    # The batch, not the evaluator, decides what is found: batches of two with candidates
    # evaluated one at a time (each answer there before the next episode) play the same
    # episodes with the same seed (how a run resumed with other --workers replays).
    one, same = run(1, batch_episodes=2)
    assert one.most == 1
    assert [o.policy.keep for o in same.history] == [o.policy.keep for o in result.history]


# ------------------------------------------------------------------ real workers
def test_two_local_workers_log_what_one_worker_logs(tmp_path: Path) -> None:
    """Random search: the same candidates, scores and counts in the same order; the latency
    is timed by a device process on a core of its own and lands in the cache."""
    from oracles import MeasurementCache

    common = {"budgets": ["flops<=40%", "latency<=100%"], "oracles": {"latency": LATENCY},
              "agent": "random", "evaluations": 5}  # fmt: skip
    _prune(tmp_path / "one", **common)
    _prune(tmp_path / "two", workers=2, **common)
    _same_log(tmp_path / "one", tmp_path / "two")
    two = _candidates(tmp_path / "two")
    assert all(r["measurements"]["latency"]["samples"] >= 1 for r in two)
    assert all("worker" in r["timings"] for r in two)  # prepared in a worker process
    cache = MeasurementCache(tmp_path / "two" / "oracle-cache.sqlite")
    assert len(cache) >= len(two)  # every distinct shape's latency (and flops) stored by main
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["all_met"] is True
    assert report["search"]["evaluations"] == 5


def _vgg_space():
    import torch

    from hwprune.models import get_model
    from hwprune.run.load import build_space

    model = get_model("vgg11_cifar", num_classes=10, width=0.25).eval()
    options = {"granularity": "channel", "round_to": 1, "min_keep": 0.1, "importance": "l2"}
    return build_space(model, example_inputs=torch.randn(1, 3, 32, 32), options=options)


def test_device_is_pinned_to_its_own_core_and_times_the_dense_model() -> None:
    from hwprune.budgets import bind_constraints
    from hwprune.data import get_dataset
    from hwprune.evaluate.parallel import DeviceOracle, ParallelEvaluator
    from hwprune.task import ClassificationTask

    constraints = bind_constraints(["latency<=90%"], oracles={"latency": LATENCY})
    task = ClassificationTask(get_dataset("digits"), max_eval_samples=64)
    ev = ParallelEvaluator(workers=2, space=_vgg_space(), task=task, constraints=constraints)
    try:
        (info,) = ev.devices.values()
        assert info["pid"] != os.getpid()
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2:
            assert info["cores"] == [cores[-1]]
        assert isinstance(ev._oracles["latency"], DeviceOracle)
        (c,) = ev.calibrate()
        assert c.dense_value > 0 and ev.dense["latency"].samples >= 1
    finally:
        ev.close()


def test_a_task_that_cannot_reach_a_worker_is_one_clear_error() -> None:
    from hwprune.budgets import bind_constraints
    from hwprune.evaluate.parallel import ParallelEvaluator
    from hwprune.task import as_task

    def score(model):  # a local function: it cannot be pickled for another process
        return 0.5

    with pytest.raises(ConfigError, match=r"workers need the model and task .* module level"):
        ParallelEvaluator(workers=2, space=_vgg_space(), task=as_task(None, score=score),
                          constraints=bind_constraints(["flops<=50%"]))  # fmt: skip


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_workers_log_what_one_worker_logs(tmp_path: Path, ray_instance) -> None:
    common = {"budgets": ["flops<=40%", "latency<=100%"], "oracles": {"latency": LATENCY},
              "agent": "random", "evaluations": 4}  # fmt: skip
    _prune(tmp_path / "one", **common)
    _prune(tmp_path / "ray", workers=2, ray="auto", **common)
    _same_log(tmp_path / "one", tmp_path / "ray")


@pytest.mark.slow
def test_ppo_lagrangian_learns_the_same_with_two_workers(tmp_path: Path) -> None:
    """A rollout's episodes are evaluated side by side and their rewards collected before the
    update: the same episodes, in the same order, as one worker (anchor included)."""
    common = {"budgets": ["flops<=40%"], "agent": "ppo-lagrangian", "evaluations": 14}
    _prune(tmp_path / "one", **common)
    _prune(tmp_path / "two", workers=2, **common)
    _same_log(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_sigkill_with_workers_then_resume_measures_no_candidate_twice(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hwprune", "prune", "--model", "vgg11_cifar", "--width", "0.25",
           "--budget", "flops<=40%", "--agent", "random", "--evaluations", "16", "--workers", "2",
           "--finetune-epochs", "0", "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "episodes.jsonl").exists() and len(_candidates(out)) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "prune finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        # The killed run's workers: gone with it (they read from the dead parent's pipe).
        with pytest.raises(ProcessLookupError):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
    before = _candidates(out)
    assert 3 <= len(before) < 16
    done = subprocess.run([sys.executable, "-m", "hwprune", "prune", "--resume", str(out),
                           "--workers", "2", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = _candidates(out)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 16, "a candidate was evaluated twice, or lost"
    assert keys[: len(before)] == [r["key"] for r in before]
    assert [r["index"] for r in after] == list(range(16))


def _kill_once(title: str, *, after: Path, min_logged: int, killed: list) -> None:
    """SIGKILL the first process whose title starts with ``title`` (a Ray worker names itself
    after what it runs: ``ray::_prepare_ray``, ``ray::_Device.measure``) once ``after``'s log
    holds ``min_logged`` candidates."""
    import psutil

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (after / "episodes.jsonl").exists() and len(_candidates(after)) >= min_logged:
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if cmd.startswith(title) and p.pid != os.getpid():
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(cmd)
                    return
        time.sleep(0.05)


@pytest.mark.slow
def test_ray_run_survives_a_killed_worker_and_a_killed_timing_actor(
    tmp_path: Path, ray_instance, caplog
) -> None:
    """kill -9 of a preparation worker and of the timing actor mid-search: the task is sent
    again, the actor restarted; every candidate logged once, in order, the run finishes."""
    import threading

    out = tmp_path / "ray"
    killed: list[str] = []

    def killer() -> None:
        _kill_once("ray::_prepare_ray", after=out, min_logged=1, killed=killed)
        _kill_once("ray::_Device.measure", after=out, min_logged=3, killed=killed)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    common = {"budgets": ["flops<=40%", "latency<=100%"], "oracles": {"latency": LATENCY},
              "agent": "random", "evaluations": 8}  # fmt: skip
    with caplog.at_level("WARNING", logger="hwprune.evaluate.parallel"):
        _prune(out, workers=2, ray="auto", **common)
    thread.join(timeout=5)
    assert len(killed) == 2, killed
    lost = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert any("preparing" in m for m in lost) and any("timing actor" in m for m in lost), lost
    records = _candidates(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 8
    assert [r["index"] for r in records] == list(range(8))


def test_ray_run_survives_a_killed_preparation_worker(tmp_path: Path, ray_instance) -> None:
    """The fast case: one preparation worker killed; its candidate sent again, logged once."""
    import threading

    out = tmp_path / "ray"
    killed: list[str] = []
    thread = threading.Thread(target=_kill_once, args=("ray::_prepare_ray",), daemon=True,
                              kwargs={"after": out, "min_logged": 1, "killed": killed})  # fmt: skip
    thread.start()
    _prune(out, workers=2, ray="auto", budgets=["flops<=40%"], agent="random", evaluations=4)
    thread.join(timeout=5)
    assert len(killed) == 1, killed
    keys = [r["key"] for r in _candidates(out)]
    assert len(keys) == len(set(keys)) == 4


@pytest.mark.slow
def test_ray_timing_actor_dead_for_good_stops_in_one_line_and_resume_continues(
    tmp_path: Path,
) -> None:
    """The timing actor killed past its restarts: rc 2, one line naming it and --resume;
    the resumed run measures no logged candidate again and loses none."""
    import psutil

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hwprune", "prune", "--model", "vgg11_cifar", "--width", "0.25",
           "--budget", "flops<=40%", "--budget", "latency<=100%", "--oracle", f"latency={LATENCY}",
           "--round-to", "8", "--agent", "random", "--evaluations", "10", "--workers", "2",
           "--ray", "local", "--finetune-epochs", "0", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    kills: list[int] = []
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(kills) < 3:
            if (out / "episodes.jsonl").exists() and len(_candidates(out)) >= 2:
                for p in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        title = " ".join(p.cmdline())
                    except psutil.Error:
                        continue
                    if title.startswith("ray::_Device") and p.pid not in kills:
                        os.kill(p.pid, signal.SIGKILL)
                        kills.append(p.pid)
            time.sleep(0.1)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(kills) == 3, "the timing actor was not found three times"
    assert proc.returncode == 2, stderr
    errors = [t for t in stderr.splitlines() if t.startswith("error:")]
    assert len(errors) == 1 and "timing actor" in errors[0] and "--resume" in errors[0], stderr
    assert "Traceback" not in stderr
    before = _candidates(out)
    assert 2 <= len(before) < 10
    done = subprocess.run([sys.executable, "-m", "hwprune", "prune", "--resume", str(out),
                           "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = _candidates(out)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 10, "a candidate was evaluated twice, or lost"
    assert keys[: len(before)] == [r["key"] for r in before]


@pytest.mark.slow
def test_a_ray_run_timed_on_another_machine_is_not_resumed_here(
    tmp_path: Path, ray_instance
) -> None:
    """A Ray run's timing devices run on the driver's node: its timings are this machine's,
    and a resume elsewhere is refused as a local run's is."""
    import hwprune
    from hwprune.errors import RunDirError

    out = tmp_path / "ray"
    _prune(out, workers=2, ray="auto", budgets=["latency<=100%"], oracles={"latency": LATENCY},
           agent="random", evaluations=2)  # fmt: skip
    here = json.loads((out / "machine.json").read_text())
    (out / "machine.json").write_text(json.dumps({**here, "cpu_id": "another vendor"}))
    with pytest.raises(RunDirError, match="its candidates were timed on another"):
        hwprune.resume(out, evaluations=3, workers=2, ray="auto")
