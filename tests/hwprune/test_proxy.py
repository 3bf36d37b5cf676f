"""Search proxies on a tiny CNN trained on digits, pruned by a real Torch-Pruning surgery."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from hwprune.data import get_dataset
from hwprune.errors import ConfigError
from hwprune.space import ChannelSpace, Policy
from hwprune.train import train
from hwprune.train.proxy import (
    ProxySpec,
    bn_proxy,
    distill_batches,
    kd_proxy,
    parse_proxy,
    proxy_scorer,
    recover_proxy,
    reference_outputs,
)


def _net() -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                nn.MaxPool2d(2)]  # fmt: skip

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 32), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    """A trained dense CNN (about a minute of CPU: the tests that use it are slow), two
    candidates pruned to keep 30% and 10% of every layer, and the fixed proxy inputs."""
    data = get_dataset("digits")
    torch.manual_seed(0)
    dense = _net()
    result = train(dense, data, epochs=4, batch_size=32, lr=0.05, seed=0)
    assert result.test_accuracy > 0.8, result
    dense.eval()
    space = ChannelSpace(dense, example_input_shape=(1, 3, 32, 32))
    calib = Subset(data.train, range(256))
    search = Subset(data.search, range(300))
    ref = reference_outputs(dense, search)
    batches = distill_batches(dense, data.train, steps=20, batch_size=32, seed=0)
    less = space.apply(Policy.uniform(space, 0.3))
    more = space.apply(Policy.uniform(space, 0.1))
    return {"calib": calib, "search": search, "ref": ref, "batches": batches, "less": less,
            "more": more, "data": data}  # fmt: skip


def test_parse_proxy():
    assert parse_proxy("bn") == ProxySpec("bn") and parse_proxy(" KD ") == ProxySpec("kd")
    assert parse_proxy("recover:50") == ProxySpec("recover", 50)
    assert str(parse_proxy("recover:50")) == "recover:50"
    for bad in ("recover:0", "recover", "recover:-3", "recover:2.5", "recover:10001", "acc",
                "bn:3"):  # fmt: skip
        with pytest.raises(ConfigError, match=r"proxy must be bn, kd or recover:STEPS .* got "):
            parse_proxy(bad)


@pytest.mark.slow
def test_kd_ranks_candidates_that_bn_accuracy_sees_at_chance(setup):
    s = setup
    bn = {k: bn_proxy(s[k], calib=s["calib"], search=s["search"]) for k in ("less", "more")}
    kd = {k: kd_proxy(s[k], calib=s["calib"], reference=s["ref"]) for k in ("less", "more")}
    # Both candidates are at chance (10 classes) after BN re-estimation ...
    assert bn["less"].value < 0.2 and bn["more"].value < 0.2, bn
    # ... where the distillation loss still tells the less-pruned one apart.
    assert kd["less"].value > kd["more"].value + 0.2, kd
    assert kd["less"].kd_loss == pytest.approx(-kd["less"].value)
    # kd's accuracy is the bn proxy's (same BN re-estimation, same images).
    assert kd["less"].accuracy == pytest.approx(bn["less"].accuracy)
    assert all(r.seconds > 0 for r in (*bn.values(), *kd.values()))


@pytest.mark.slow
def test_recover_improves_the_kd_score_deterministically_without_touching_the_candidate(setup):
    s = setup
    before = {n: p.clone() for n, p in s["more"].state_dict().items()}
    kd = kd_proxy(s["more"], calib=s["calib"], reference=s["ref"])
    args = {"calib": s["calib"], "reference": s["ref"], "batches": s["batches"], "seed": 0}
    first = recover_proxy(s["more"], **args)
    second = recover_proxy(s["more"], **args)
    assert first.proxy == "recover:20"
    assert first.value > kd.value + 0.3, (first, kd)
    assert first.accuracy > kd.accuracy
    assert (first.value, first.accuracy) == (second.value, second.accuracy)
    after = s["more"].state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_distill_batches_are_fixed_by_the_seed():
    torch.manual_seed(0)
    data = get_dataset("digits")
    calib, ref_set = Subset(data.train, range(64)), Subset(data.search, range(32))
    s = {"less": _net().eval(), "data": data, "calib": calib}
    s["ref"] = reference_outputs(s["less"], ref_set)
    a = distill_batches(s["less"], s["data"].train, steps=3, batch_size=16, seed=1)
    b = distill_batches(s["less"], s["data"].train, steps=3, batch_size=16, seed=1)
    c = distill_batches(s["less"], s["data"].train, steps=3, batch_size=16, seed=2)
    assert len(a) == 3 and all(len(x) == 16 for x in a)
    assert all(torch.equal(x.images, y.images) and torch.equal(x.logits, y.logits)
               for x, y in zip(a, b, strict=True))  # fmt: skip
    assert not torch.equal(a[0].images, c[0].images)
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        distill_batches(s["less"], s["data"].train, steps=0)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        kd_proxy(s["less"], calib=s["calib"], reference=s["ref"], temperature=0)


def test_proxy_scorer_matches_the_functions_and_reuses_the_dense_outputs():
    torch.manual_seed(0)
    data = get_dataset("digits")
    dense = _net().eval()
    candidate = nn.Sequential(*[m for m in _net().children()]).eval()
    calib, search = Subset(data.train, range(64)), Subset(data.search, range(32))
    ref = reference_outputs(dense, search)
    args = {"dense": dense, "calib": calib, "search": search, "train": data.train}
    bn = proxy_scorer("bn", **args)(candidate)
    assert bn.value == bn_proxy(candidate, calib=calib, search=search).value
    kd = proxy_scorer("kd", **args)(candidate)
    assert kd.value == kd_proxy(candidate, calib=calib, reference=ref).value
    recover = proxy_scorer("recover:2", **args)
    first, second = recover(candidate), recover(candidate)
    assert first.proxy == "recover:2" and (first.value, first.accuracy) == (
        second.value, second.accuracy)  # fmt: skip
    with pytest.raises(ConfigError, match="proxy must be bn, kd or recover:STEPS"):
        proxy_scorer("accuracy", **args)
