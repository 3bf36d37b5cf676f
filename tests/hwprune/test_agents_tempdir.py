"""A search writes only into its run folder: no agent leaves anything in the temp directory."""

from __future__ import annotations

import tempfile

import pytest

from hwprune.agents import get_searcher
from hwprune.budgets import bind_constraints
from hwprune.data import get_dataset
from hwprune.evaluate import Evaluator
from hwprune.space import ChannelSpace
from tests.nets import tiny_net


@pytest.mark.parametrize(
    ("agent", "options"),
    [
        ("ppo-lagrangian", {"episodes_per_update": 2}),
        ("amc", {"warmup_episodes": 2}),
        ("qlp", {}),
    ],
)
def test_each_agent_leaves_the_temp_directory_empty(agent, options, tmp_path, monkeypatch):
    data = get_dataset("digits", input_size=8)
    space = ChannelSpace(tiny_net(data.input_shape[0]), example_input_shape=(1, *data.input_shape))
    evaluator = Evaluator(
        space=space,
        data=data,
        constraints=bind_constraints(["params<=50%"]),
        bn_batches=1,
        bn_batch_size=16,
        max_eval_samples=32,
    )
    evaluator.calibrate()
    # torch makes its per-user compile cache (<tempdir>/torchinductor_<user>) once, when
    # torch._dynamo is first imported, shared by every torch program: not the search's.
    import torch._dynamo  # noqa: F401

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    result = get_searcher(agent, seed=0, **options).search(
        space=space, evaluator=evaluator, evaluations=14, checkpoint_dir=tmp_path / "agent"
    )
    assert result.evaluations >= 1
    assert sorted(p.name for p in temp.iterdir()) == []
