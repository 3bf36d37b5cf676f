"""Racing the proxy: a candidate clearly worse than the best feasible one, or clearly at chance,
is scored on fewer images, marked, logged as such and ranked after every full score; and the
BatchNorm re-estimation that stops once its statistics settle."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from hwprune.budgets import bind_constraints
from hwprune.data import get_dataset
from hwprune.evaluate import Evaluator
from hwprune.evaluate.racing import RaceBar, look_sizes, race, race_z, wilson_upper
from hwprune.run.choose import rank_feasible
from hwprune.space import ChannelSpace, Policy
from hwprune.train import reestimate_bn, train
from tests.nets import TinyNet


def test_looks_double_from_128_and_end_on_the_full_set() -> None:
    assert look_sizes(2000) == [128, 256, 512, 1024, 2000]
    assert look_sizes(359) == [128, 256, 359]
    assert look_sizes(64) == [64]


def test_the_wilson_bound_covers_the_truth_at_its_stated_rate() -> None:
    # Over many draws at a true accuracy of 0.3, the one-sided bound at z(0.95, 1 look) falls
    # below the truth in about 5% of them, and never far more.
    gen = torch.Generator().manual_seed(0)
    n, truth, z = 128, 0.3, race_z(0.95, 1)
    hits = torch.rand(4000, n, generator=gen) < truth
    below = sum(wilson_upper(float(h.float().mean()), n, z) < truth for h in hits)
    assert 0.02 < below / 4000 < 0.07
    assert race_z(0.95, 4) > race_z(0.95, 1)  # more looks, each one stricter


def _stream(scores: list[tuple[float, int]], consumed: list[int]):
    for score, n in scores:
        consumed.append(n)
        yield score, n


def test_a_race_stops_at_the_first_look_clearly_below_the_bar_and_not_otherwise() -> None:
    looks = [(0.30, 128), (0.31, 256), (0.30, 512), (0.30, 1024), (0.30, 2000)]
    consumed: list[int] = []
    result = race(_stream(looks, consumed), RaceBar(below=0.8, floor=None), total=2000)
    assert (result.stopped, result.samples, result.score) == ("worse", 128, 0.30)
    assert consumed == [128]  # nothing past the stopping look was scored
    consumed.clear()
    close = race(_stream(looks, consumed), RaceBar(below=0.32, floor=None), total=2000)
    assert close.stopped is None and close.samples == 2000 and consumed[-1] == 2000
    chance = race(_stream(looks, []), RaceBar(below=None, floor=0.45), total=2000)
    assert chance.stopped == "chance" and chance.samples == 128


def test_a_dense_model_at_chance_stops_every_candidate_at_the_first_look() -> None:
    # Even a score well above the floor: the dense model knows nothing, so it is noise.
    looks = [(0.40, 128), (0.40, 256), (0.40, 2000)]
    consumed: list[int] = []
    bar = RaceBar(below=None, floor=0.12, uninformed=True)
    result = race(_stream(looks, consumed), bar, total=2000)
    assert (result.stopped, result.samples, consumed) == ("chance", 128, [128])
    assert race(_stream(looks, []), RaceBar(below=None, floor=0.12), total=2000).stopped is None


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, object]:
    """TinyNet trained a little on digits: well above chance, so pruning hard sends it there."""
    data = get_dataset("digits")
    torch.manual_seed(0)
    model = TinyNet()
    train(model, data, epochs=4, batch_size=64)
    return model.eval(), data


def _evaluator(model, data, **options) -> Evaluator:
    space = ChannelSpace(model, example_input_shape=(1, 3, 8, 8), round_to=1, min_keep=0.05)
    ev = Evaluator(space=space, data=data, constraints=bind_constraints(["flops<=90%"]),
                   bn_batches=4, bn_batch_size=32, **options)  # fmt: skip
    ev.calibrate()
    return ev


KEEPS = (0.9, 0.05, 0.5)


@pytest.mark.slow
def test_racing_scores_clearly_worse_candidates_on_fewer_images_and_marks_them(
    trained, tmp_path: Path
) -> None:
    model, data = trained
    full = _evaluator(model, data)
    raced = _evaluator(model, data, racing=True, log_path=str(tmp_path / "episodes.jsonl"))
    units = len(full.space.units)
    a = [full.evaluate(Policy(keep=(k,) * units)) for k in KEEPS]
    b = [raced.evaluate(Policy(keep=(k,) * units)) for k in KEEPS]
    # The first candidate has no feasible one to race against, and is above chance: in full,
    # the very score of the unraced run.
    assert b[0].raced is None and b[0].accuracy == a[0].accuracy
    assert a[0].accuracy > raced.score_floor
    # Cut to 5% the net is at chance; cut to half, far below the first: both stopped at the
    # first look with their estimate there, which is no full score.
    assert b[1].raced == "chance" and b[1].score_samples == 128
    assert b[2].raced in ("worse", "chance") and b[2].score_samples == 128
    assert all(o.raced is None and o.score_samples is None for o in a)
    assert b[2].timings["accuracy"] < a[2].timings["accuracy"]
    # Ranked after every full score above the floor, whatever its estimate.
    order = rank_feasible(b, samples=raced.eval_samples, floor=raced.score_floor)
    assert order[0].key == b[0].key
    # Read back from the log as it was: marked, with its sample count.
    again = _evaluator(model, data, racing=True, log_path=str(tmp_path / "episodes.jsonl"))
    by_key = {o.key: o for o in again.history}
    assert by_key[b[1].key].raced == "chance" and by_key[b[1].key].score_samples == 128
    assert by_key[b[0].key].raced is None


def test_with_an_untrained_dense_model_every_candidate_is_raced_at_chance_and_ranked_by_size() -> (
    None
):
    """Random weights (the dense model at chance): each candidate is scored on the first look
    only, counts as at chance whatever its estimate, and the larger one leads the choice and
    the search signal."""
    data = get_dataset("digits")
    torch.manual_seed(0)
    ev = _evaluator(TinyNet().eval(), data, racing=True)
    assert ev.dense_accuracy <= ev.score_floor  # untrained
    units = len(ev.space.units)
    small, large = (ev.evaluate(Policy(keep=(k,) * units)) for k in (0.3, 0.8))
    assert small.raced == large.raced == "chance"
    assert small.score_samples == large.score_samples == 128
    order = rank_feasible([small, large], samples=ev.eval_samples, floor=ev.score_floor)
    assert [o.key for o in order] == [large.key, small.key]
    assert ev.signal(large).signal > ev.signal(small).signal
    assert ev.signal(large).signal <= ev.score_floor  # never above an informed score
    # An estimate on 128 images can land above the floor by luck: still at chance.
    lucky = dataclasses.replace(small, accuracy=ev.score_floor + 0.1)
    order = rank_feasible([lucky, large], samples=ev.eval_samples, floor=ev.score_floor)
    assert [o.key for o in order] == [large.key, lucky.key]
    assert ev.signal(lucky).signal < ev.signal(large).signal
    full = _evaluator(TinyNet().eval(), data)  # the same without racing: every image scored
    assert full.evaluate(Policy(keep=(0.3,) * units)).raced is None


@pytest.mark.slow
def test_settled_batchnorm_runs_fewer_batches_and_keeps_the_score_close(trained) -> None:
    model, data = trained
    calib = torch.utils.data.Subset(data.train, list(range(256)))
    fixed = reestimate_bn(TinyNet().eval(), calib, batches=8, batch_size=32)
    import copy

    settled_model = copy.deepcopy(model)
    settled = reestimate_bn(settled_model, calib, batches=8, batch_size=32, settle=0.05)
    assert fixed == 256 and 64 <= settled < 256
    never = reestimate_bn(copy.deepcopy(model), calib, batches=8, batch_size=32, settle=1e-9)
    assert never == 256  # a tolerance never met runs every batch
    ev = _evaluator(model, data, bn_settle=0.05)
    units = len(ev.space.units)
    plain = _evaluator(model, data)
    policy = Policy(keep=(0.9,) * units)
    a, b = plain.evaluate(policy), ev.evaluate(policy)
    assert math.isclose(a.accuracy, b.accuracy, abs_tol=0.05)
    assert "bn settle 0.05" in ev.task.score_key and "settle" not in plain.task.score_key
