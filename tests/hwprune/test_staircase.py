"""The latency staircase: step finding on synthetic staircases, a real ONNX Runtime probe, snapping."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import ClassVar

import pytest
import torch
from torch import nn

import oracles
from hwprune.errors import ConfigError
from hwprune.space import ChannelSpace, Policy
from hwprune.space.staircase import (
    Staircase,
    find_steps,
    probe_staircase,
    proposed_and_built,
    staircase_table,
    write_staircase_plots,
)
from oracles import MeasurementCache

# Short timing protocol: the probe's logic is under test here, not the oracle's precision.
FAST_ORT = "onnxruntime:cpu?threads=1&warmup=2&min_runs=5&max_runs=50&min_time=0.01&max_time=0.5"


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _space(**kwargs) -> ChannelSpace:
    torch.manual_seed(0)
    return ChannelSpace(_Tiny().eval(), example_input_shape=(1, 3, 16, 16), **kwargs)


# ------------------------------------------------------------------ step finding (pure)


def _staircase(edges: list[int], levels: list[float], top: int) -> list[tuple[int, float]]:
    """Counts 1..top; latency ``levels[i]`` up to and including ``edges[i]``."""
    out = []
    for c in range(1, top + 1):
        i = next(i for i, e in enumerate(edges) if c <= e)
        out.append((c, levels[i]))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_find_steps_returns_the_top_of_every_step_under_noise(seed):
    rng = random.Random(seed)
    width = rng.choice([4, 6, 8, 16])
    edges = list(range(width, 64 + 1, width))
    if edges[-1] != 64:
        edges.append(64)
    levels = [1.15**i for i in range(len(edges))]  # every step 15% above the one below
    points = _staircase(edges, levels, 64)
    counts = [c for c, _ in points]
    noisy = [v * (1.0 + rng.uniform(-0.02, 0.02)) for _, v in points]  # +-2% timing noise
    assert find_steps(counts, noisy, noise=0.05) == tuple(edges)


def test_find_steps_ignores_steps_below_the_noise_and_spikes():
    counts = [8, 16, 24, 32, 40, 48]
    # a 3% rise (below 5% noise), a spike at 40 (slower than 48), a real 40% step after 16
    latency = [1.0, 1.03, 1.4, 1.41, 2.5, 1.42]
    assert find_steps(counts, latency, noise=0.05) == (16, 48)
    # with a smaller noise the 3% rise is a step
    assert find_steps(counts, latency, noise=0.02) == (8, 16, 48)
    with pytest.raises(ValueError, match="twice"):
        find_steps([8, 8], [1.0, 1.0], noise=0.05)


# ------------------------------------------------------------------ snapping in ChannelSpace


def test_channel_choices_snap_up_to_the_step_top_and_keep_round_to_elsewhere():
    space = _space(round_to=4, channel_choices={"conv1": [4, 8, 12]})
    assert space.channel_choices == {"conv1": (4, 8, 12, 16)}  # the full count is added
    kept = space.kept_channels(Policy.uniform(space, 0.3))
    assert kept["conv1"] == 8  # 0.3 * 16 = 4.8 -> 5 -> the step topped by 8
    assert kept["conv2"] == 8  # round_to 4: 0.3 * 24 = 7.2 -> 8
    assert space.kept_channels(Policy.uniform(space, 0.75))["conv1"] == 12
    assert space.kept_channels(Policy.dense(space))["conv1"] == 16
    # the callers' channels_for(keep, channels) keeps its round_to meaning
    assert space.channels_for(0.3, 16) == 4
    pruned = space.apply(Policy.uniform(space, 0.3))
    assert pruned.conv1.out_channels == 8 and pruned.conv2.in_channels == 8
    assert proposed_and_built(space, Policy.uniform(space, 0.3)) == {
        "conv1": (5, 8),
        "conv2": (7, 8),
    }


def test_bad_channel_choices_are_rejected():
    with pytest.raises(ConfigError, match="does not have: conv9"):
        _space(channel_choices={"conv9": [4]})
    with pytest.raises(ConfigError, match=r"outside 1\.\.16"):
        _space(channel_choices={"conv1": [0, 8]})
    with pytest.raises(ConfigError, match="must be channel counts"):
        _space(channel_choices={"conv1": ["x"]})


# ------------------------------------------------------------------ a real probe


def test_probe_on_onnxruntime_chooses_probed_counts_and_a_second_probe_is_cached(tmp_path):
    space = _space()
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    first = probe_staircase(space, FAST_ORT, cache=cache, counts_per_unit=4)
    assert [u.unit for u in first.units] == ["conv1", "conv2"]
    assert first.oracle_calls > 0
    for u in first.units:
        assert list(u.counts) == sorted(set(u.counts))
        assert set(u.choices) <= set(u.counts)
        assert list(u.choices) == sorted(u.choices)
        assert u.choices[-1] == u.channels
        assert u.counts[0] == max(1, round(space.min_keep * u.channels))
        assert all(v > 0 for v in u.latency)
        assert u.layers  # the unit's producer and consumer layers were timed
    assert first.by_unit()["conv1"].layers == ("conv1", "conv2")

    second = probe_staircase(space, FAST_ORT, cache=cache, counts_per_unit=4)
    assert second.oracle_calls == 0
    assert second.cached_calls > 0
    assert second.choices() == first.choices()

    # The choices drive a space, and the result round-trips through JSON.
    snapped = _space(channel_choices=first.choices())
    kept = snapped.kept_channels(Policy.uniform(snapped, 0.5))
    for u in first.units:
        assert kept[u.unit] in u.choices
    path = first.save(tmp_path / "staircase.json")
    assert Staircase.load(path) == first

    plots, table = write_staircase_plots(first, tmp_path / "plots", built=kept, top=1)
    assert len(plots) == 1 and plots[0].name.startswith("staircase_") and plots[0].stat().st_size
    assert [r["unit"] for r in table] == ["conv1", "conv2"]
    assert table == staircase_table(first, built=kept)
    assert all(r["built"] == kept[r["unit"]] for r in table)


def test_probe_rejects_a_non_latency_oracle():
    with pytest.raises(ConfigError, match="latency oracle"):
        probe_staircase(_space(), "params", cache=None)


class _Twins(nn.Module):
    """Two units with the same layer shapes (a -> b and b -> c, all 16 -> 16), then a third."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


def test_units_of_the_same_shape_share_one_probe(monkeypatch):
    from hwprune.space import staircase as mod

    torch.manual_seed(0)
    space = ChannelSpace(_Twins().eval(), example_input_shape=(1, 16, 8, 8))
    assert [u.id for u in space.units] == ["a", "b", "c"]
    cuts: dict[str, int] = {}
    layers_at = mod._Prober._layers_at

    def counted(self, unit, count):
        cuts[unit.id] = cuts.get(unit.id, 0) + 1
        return layers_at(self, unit, count)

    monkeypatch.setattr(mod._Prober, "_layers_at", counted)
    stairs = probe_staircase(space, FAST_ORT, cache=None)
    a, b, c = stairs.units
    assert (b.unit, b.counts, b.latency, b.choices) == ("b", a.counts, a.latency, a.choices)
    assert b.layers == ("b", "c") and a.layers == ("a", "b")
    assert cuts["b"] == 2  # its shape, and its layer names: no count of its own was timed
    assert cuts["a"] > len(a.counts) and cuts["c"] > 2  # c (into the Linear) is probed itself


# ------------------------------------------------------------------ the probe's time budget


@oracles.register_oracle("test-stair-latency")
@dataclasses.dataclass
class StairLatency(oracles.Oracle):
    """A one-layer model's latency as a known staircase: 0.01 ms per started block of 8 output
    channels times per started block of 8 input channels. Each call moves ``CLOCK`` on by one
    "second", so a time budget is a number of calls."""

    quantity: ClassVar[str] = "latency"
    unit: ClassVar[str] = "ms"
    timed: ClassVar[bool] = True
    input_format: ClassVar[str] = "torch"
    device: str = "cpu"

    def measure(self, model, *, input_shapes=None) -> oracles.Measurement:
        CLOCK[0] += 1.0
        w = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))).weight
        out_c, in_c = int(w.shape[0]), int(w.shape[1])
        value = 0.01 * math.ceil(out_c / 8) * math.ceil(in_c / 8)
        return oracles.Measurement(quantity="latency", value=value, unit="ms", oracle=self.spec,
                                   statistic="median", samples=10)  # fmt: skip


CLOCK = [0.0]


class _Wide(nn.Module):
    """Three units of different cost: 64 -> 64 -> 32 channels, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 64, 3, padding=1)
        self.b = nn.Conv2d(64, 64, 3, padding=1)
        self.c = nn.Conv2d(64, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def fake_clock(monkeypatch):
    from hwprune.space import staircase as mod

    CLOCK[0] = 0.0
    monkeypatch.setattr(mod.time, "perf_counter", lambda: CLOCK[0])
    return CLOCK


def _wide_space() -> ChannelSpace:
    torch.manual_seed(0)
    return ChannelSpace(_Wide().eval(), example_input_shape=(1, 3, 8, 8), min_keep=0.1)


def test_without_a_budget_the_probe_finds_every_step_edge(fake_clock):
    stairs = probe_staircase(_wide_space(), "test-stair-latency", cache=None, noise_floor=0.01)
    assert stairs.complete and not stairs.left_out
    # Every unit's latency jumps after each multiple of 8 (its output channels feed the next
    # layer's input channels): the step tops are the multiples of 8 and the full count.
    for u in stairs.units:
        assert u.complete
        low = max(1, round(0.1 * u.channels))
        want = {c for c in range(8, u.channels + 1, 8) if c >= low} | {u.channels}
        assert set(u.choices) == want, u.unit


def test_progress_reaches_its_total_only_when_the_step_edges_are_found(fake_clock):
    """Each unit counts twice, its coarse grid and its step edges: the bar is not full (and
    its time left not zero) while the bisection, most of the probe's calls, still runs."""
    seen: list[tuple[int, int, float]] = []
    stairs = probe_staircase(
        _wide_space(), "test-stair-latency", cache=None, noise_floor=0.01,
        progress=lambda done, total, unit: seen.append((done, total, CLOCK[0])),
    )  # fmt: skip
    units = len(stairs.units)
    assert [d for d, _, _ in seen] == list(range(1, 2 * units + 1))
    assert {t for _, t, _ in seen} == {2 * units}
    coarse_end = seen[units - 1][2]
    assert coarse_end < CLOCK[0]  # calls made after the coarse grids, while the bar was not full
    assert seen[-1][2] == CLOCK[0]  # full when the last call is made


@pytest.mark.parametrize("budget", [0.5, 30.0, 45.0, 100.0])
def test_a_budget_stops_the_probe_and_what_it_timed_is_kept(fake_clock, budget):
    space = _wide_space()
    whole = probe_staircase(space, "test-stair-latency", cache=None, noise_floor=0.01)
    calls_whole = whole.oracle_calls
    fake_clock[0] = 0.0
    part = probe_staircase(space, "test-stair-latency", cache=None, noise_floor=0.01,
                           seconds=budget, fallback=8)  # fmt: skip
    # The check comes before each count is timed: past the budget by one count's calls at
    # most (a unit's two layers, three times each at its full count).
    assert part.oracle_calls <= budget + 6 and part.oracle_calls < calls_whole
    assert not part.complete
    by_unit = {u.unit: u for u in whole.units}
    for u in part.units:  # probed: steps from a subset of the counts the whole probe timed
        assert set(u.counts) <= set(by_unit[u.unit].counts)
        assert u.choices[-1] == u.channels
        assert set(u.choices) <= set(u.counts)
    for unit_id, counts in part.left_out.items():  # not reached: multiples of the fallback
        channels = next(u.channels for u in space.units if u.id == unit_id)
        assert counts[-1] == channels and all(c % 8 == 0 for c in counts[:-1])
    assert part.choices().keys() == {u.id for u in space.units}
    # The costliest units are probed first: a unit left out is no slower than one probed.
    full = {u.unit: u.latency[-1] for u in whole.units}
    if part.units and part.left_out:
        assert min(full[u.unit] for u in part.units) >= max(full[k] for k in part.left_out)
    # The result round-trips through JSON, budget state included.
    assert Staircase.from_dict(part.to_dict()) == part


def test_bad_probe_budgets_are_refused():
    with pytest.raises(ConfigError, match="seconds must be positive"):
        probe_staircase(_space(), FAST_ORT, cache=None, seconds=0)
    with pytest.raises(ConfigError, match="fallback"):
        probe_staircase(_space(), FAST_ORT, cache=None, fallback=0)


def test_without_a_budget_the_counts_timed_are_a_depth_first_bisections(fake_clock):
    """The budgeted probe's order (slowest units, largest jumps first) times the same counts
    as bisecting unit by unit, depth first, would: a budget changes only where it stops."""
    from hwprune.space import staircase as mod

    space = _wide_space()
    stairs = probe_staircase(space, "test-stair-latency", cache=None, noise_floor=0.01,
                             resolution=3)  # fmt: skip
    prober = mod._Prober(space, oracles.get_oracle("test-stair-latency"), None)
    for u in stairs.units:
        unit = next(x for x in space.units if x.id == u.unit)
        values = {c: prober.unit_latency(unit, c)[0] for c in mod._grid(u.counts[0], u.channels, 8)}

        def refine(a: int, b: int, unit=unit, values=values, noise=u.noise) -> None:
            if b - a <= 3:
                return
            for c in (a, b):
                values.setdefault(c, prober.unit_latency(unit, c)[0])
            if values[b] <= values[a] * (1 + noise):
                return
            refine(a, (a + b) // 2)
            refine((a + b) // 2, b)

        grid = sorted(values)
        for a, b in zip(grid, grid[1:], strict=False):
            refine(a, b)
        assert u.counts == tuple(sorted(values)), u.unit
