"""Channel counts the runtime likes: each unit's latency staircase, measured, and its step tops.

On a real runtime the latency of a layer as a function of its channel count
is a staircase (SIMD width, GEMM tiles): flat runs, then a jump, with step
widths that differ by runtime, layer shape and direction (output or input
channels). ``probe_staircase`` measures it with the target oracle and
``Staircase.choices()`` gives, per unit, the largest count of every step, for
``ChannelSpace(channel_choices=...)``: a proposed count is then built with
the most channels its latency step allows. Never pay a step for a few
channels, never leave free channels on the table.

How a unit is timed. Pruning a unit changes the output channels of the
layers that produce it and the input channels of the layers that read it
(and the BatchNorms between, which ONNX Runtime and OpenVINO fold into the
convolution). The probe cuts the unit to ``k`` channels with the space's own
surgery (the rest dense), takes every Conv/Linear layer of the unit from that
pruned model, and times each one *alone* as a one-layer ONNX model at the
input shape it sees inside the network. The unit's latency at ``k`` is the sum
of its layers' times. Single layers rather than the whole network, because
the whole network's run-to-run noise on a loaded machine (5-20% of ~1 ms
measured here for a width-0.5 VGG-11) is larger than one unit's steps, while
one layer's median is known to well under 1% in a fraction of a second; what
the one-layer model leaves out (the layers that do not change with ``k``) adds
a constant, which moves no step. Layers with the same shape share one
measurement (the oracle cache keys by graph structure), and units whose
layers have the same shapes share one staircase, so the repeated blocks of a
ResNet are probed once.

Where the steps are. Counts are probed on a coarse grid
(``counts_per_unit`` points from the smallest count the space allows to the
full count); wherever two neighbours differ by more than the noise, the
interval is bisected while it is wider than ``resolution`` channels (one
channel up to 64 channels, 4 at 256): the halves are timed only where they are
wider still, so the last interval timed is at most twice that wide, and every
step edge is found to within a few percent of
the unit's channels without timing every count. The coarse grid's inner counts are
multiples of a power of two (the stride that gives about ``counts_per_unit``
points), because most runtimes are fastest at aligned counts; which
alignment, and how much it matters, is what is measured. The noise is the
larger of ``noise_floor`` (a fraction of the latency) and the spread the
oracle itself reports: half the range of three independent calls at the full
count plus each median's confidence half-width. Then, from the largest count
down, a count starts a new step only when it is faster than the current step by more than the noise:
the allowed counts are the step tops, and a count slower than a larger one
(a spike) is never allowed.

What it costs. Each oracle call exports and times one layer; the time is
mostly session set-up and the timing window, so the probe times one-layer
models for ``PROBE_MIN_TIME`` (0.1 s) instead of the oracle's default half
second (a spec that sets ``min_time`` keeps its own). Measured on a width-0.5
VGG-11 with ``onnxruntime:cpu?threads=1`` on a loaded 2-core machine: 12
coarse counts, bisection to one channel and half-second windows took 507
oracle calls and 239 s; the defaults here (8 coarse counts, bisection to
channels/64, 0.1 s windows) 308 calls and 144 s (benchmarks/RESULTS.md,
"staircase"). Every call goes through the measurement
cache, so a second probe of the same model on the same oracle and machine
makes none. On a slow oracle (an engine build per one-layer model) a time
budget (``seconds``) bounds the probe: the slowest units and the largest jumps
come first, and what was timed when the time runs out is kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwprune.errors import ConfigError

if TYPE_CHECKING:
    from hwprune.space.channel import ChannelSpace
    from oracles import Oracle

log = logging.getLogger(__name__)

__all__ = [
    "Staircase",
    "UnitStaircase",
    "default_resolution",
    "find_steps",
    "probe_staircase",
    "proposed_and_built",
    "staircase_table",
    "write_staircase_plots",
]

#: Independent oracle calls at a unit's full count, to measure the run-to-run spread.
NOISE_REPEATS = 3
#: Seconds each one-layer model is timed for (where the oracle spec leaves min_time alone).
PROBE_MIN_TIME = 0.1


@dataclass(frozen=True)
class UnitStaircase:
    """One unit's measured latency against its kept-channel count, and the counts chosen from it.

    ``counts`` ascending, ``latency`` the sum of the unit's layers' medians at
    each count (the oracle's unit, e.g. ms), ``noise`` the relative spread a
    step had to exceed, ``choices`` the step tops (ascending, the full count
    last), ``layers`` the Conv/Linear layers timed.
    """

    unit: str
    channels: int
    counts: tuple[int, ...]
    latency: tuple[float, ...]
    noise: float
    choices: tuple[int, ...]
    layers: tuple[str, ...] = ()
    #: Every jump bisected down to the resolution (False: the probe's time budget ran out).
    complete: bool = True

    def latency_at(self, count: int) -> float:
        """Latency of the step ``count`` falls in (the measured value of its step top)."""
        table = dict(zip(self.counts, self.latency, strict=True))
        top = next((c for c in self.choices if c >= count), self.channels)
        return table[top]

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "channels": self.channels,
            "counts": list(self.counts),
            "latency": list(self.latency),
            "noise": self.noise,
            "choices": list(self.choices),
            "layers": list(self.layers),
            "complete": self.complete,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitStaircase:
        return cls(
            unit=str(data["unit"]),
            channels=int(data["channels"]),
            counts=tuple(int(c) for c in data["counts"]),
            latency=tuple(float(x) for x in data["latency"]),
            noise=float(data["noise"]),
            choices=tuple(int(c) for c in data["choices"]),
            layers=tuple(str(n) for n in data.get("layers", ())),
            complete=bool(data.get("complete", True)),
        )


@dataclass(frozen=True)
class Staircase:
    """Every probed unit's staircase for one oracle, and what the probe cost.

    ``oracle_calls`` counts the calls the oracle really ran (each timed for
    ``min_time`` or more); ``cached_calls`` those answered by the measurement
    cache; ``seconds`` the probe's wall time (exports included). ``left_out``:
    the units the probe's time budget did not reach, with the counts they are
    built at instead (multiples of the fallback; empty: not rounded).
    """

    oracle: str
    unit: str  # the oracle's unit, e.g. "ms"
    units: tuple[UnitStaircase, ...]
    oracle_calls: int = 0
    cached_calls: int = 0
    seconds: float = 0.0
    settings: Mapping[str, Any] = field(default_factory=dict)
    left_out: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def choices(self) -> dict[str, tuple[int, ...]]:
        """Allowed kept-channel counts by unit id, for ``ChannelSpace(channel_choices=...)``."""
        out = {u: tuple(c) for u, c in self.left_out.items() if c}
        out.update({u.unit: u.choices for u in self.units})
        return out

    @property
    def complete(self) -> bool:
        """Every unit probed and every jump bisected (the time budget did not run out)."""
        return not self.left_out and all(u.complete for u in self.units)

    def by_unit(self) -> dict[str, UnitStaircase]:
        return {u.unit: u for u in self.units}

    def to_dict(self) -> dict[str, Any]:
        return {
            "oracle": self.oracle,
            "unit": self.unit,
            "oracle_calls": self.oracle_calls,
            "cached_calls": self.cached_calls,
            "seconds": self.seconds,
            "settings": dict(self.settings),
            "units": [u.to_dict() for u in self.units],
            "left_out": {k: list(v) for k, v in self.left_out.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Staircase:
        return cls(
            oracle=str(data["oracle"]),
            unit=str(data.get("unit", "")),
            units=tuple(UnitStaircase.from_dict(u) for u in data["units"]),
            oracle_calls=int(data.get("oracle_calls", 0)),
            cached_calls=int(data.get("cached_calls", 0)),
            seconds=float(data.get("seconds", 0.0)),
            settings=dict(data.get("settings", {})),
            left_out={
                str(k): tuple(int(c) for c in v) for k, v in data.get("left_out", {}).items()
            },  # fmt: skip
        )

    def save(self, path: str | Path) -> Path:
        """Write the staircase as JSON (atomically)."""
        from hwprune.files import write_atomic

        return write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Staircase:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read a staircase from {str(path)!r}: {exc}") from exc


# --------------------------------------------------------------------------- step finding


def find_steps(counts: Sequence[int], latency: Sequence[float], *, noise: float) -> tuple[int, ...]:
    """The top count of every latency step, ascending (the largest count is always one).

    Walking down from the largest count, a count opens a new, lower step only
    when it is faster than the current step's level by more than ``noise``
    (relative to that level); otherwise it is dominated: a larger count runs
    no slower. ``counts`` need not be sorted; duplicates are not allowed.

    >>> find_steps([8, 16, 24, 32], [1.0, 1.0, 2.0, 2.0], noise=0.05)
    (16, 32)
    """
    if len(counts) != len(latency) or not counts:
        raise ValueError("find_steps needs as many latencies as counts, and at least one")
    if len(set(counts)) != len(counts):
        raise ValueError(f"find_steps got a count twice: {sorted(counts)}")
    pairs = sorted(zip(counts, latency, strict=True), reverse=True)
    tops = [pairs[0][0]]
    level = pairs[0][1]
    for count, value in pairs[1:]:
        if value < level * (1.0 - noise):
            tops.append(count)
            level = value
    return tuple(sorted(tops))


# --------------------------------------------------------------------------- the probe


def _layer_inputs(space: Any) -> dict[str, tuple[int, ...]]:
    """Input shape of every Conv/Linear layer of the dense model (first call), by name."""
    import torch
    from torch import nn

    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor):
                shapes.setdefault(name, tuple(int(s) for s in inputs[0].shape))

        return record

    model = space.model
    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # The space's own inputs: a model may take integer ids or several named tensors.
            space.example_inputs.call(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


class _Prober:
    """Times one-layer models through the oracle cache, remembering each layer shape's value."""

    def __init__(self, space: Any, oracle: Any, cache: Any) -> None:
        self.space = space
        self.oracle = oracle
        self.cache = cache
        self.inputs = _layer_inputs(space)
        self.memo: dict[tuple[str, tuple[int, ...]], Any] = {}
        self.calls = 0
        self.cached = 0
        self.unit_ids = [u.id for u in space.units]

    def _layers_at(self, unit: Any, count: int) -> list[tuple[str, Any, tuple[int, ...]]]:
        """The unit's Conv/Linear layers cut to ``count`` (rest dense), with their input shapes."""
        from torch import nn

        kept = [count if u.id == unit.id else u.channels for u in self.space.units]
        pruned = self.space._apply_kept(kept)
        modules = dict(pruned.named_modules())
        out = []
        for name in unit.layers:
            m = modules.get(name)
            if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or name not in self.inputs:
                continue
            shape = list(self.inputs[name])
            if isinstance(m, nn.Linear):
                shape[-1] = m.in_features
            else:
                shape[1] = m.in_channels
            out.append((name, m, tuple(shape)))
        return out

    def _time(self, module: Any, shape: tuple[int, ...], *, repeats: int = 1) -> Any:
        import copy

        import oracles
        from hwprune.export.onnx import export_onnx

        key = (repr(module), shape)
        if key in self.memo and (repeats == 1 or "repeat_values" in self.memo[key].extra):
            return self.memo[key]
        layer = copy.deepcopy(module).eval()
        data = (
            layer if self.oracle.input_format == "torch" else export_onnx(layer, input_shape=shape)
        )
        m = oracles.measure(
            self.oracle, data, input_shapes={"input": shape}, cache=self.cache, repeats=repeats
        )
        if m.cached:
            self.cached += 1
        else:
            self.calls += repeats if self.oracle.timed else 1
        self.memo[key] = m
        return m

    def unit_shape(self, unit: Any, low: int) -> tuple:
        """What the unit's one-layer models are, cut to ``low`` channels (order aside).

        Units with the same shape time the same one-layer models at every count
        (which dimension of which layer shrinks shows at ``low``), so they share
        one staircase: the repeated blocks of a ResNet are probed once.
        """
        layers = self._layers_at(unit, low)
        return (unit.channels, low, tuple(sorted((repr(m), s) for _, m, s in layers)))

    def unit_latency(self, unit: Any, count: int, *, repeats: int = 1) -> tuple[float, float]:
        """(sum of the layers' medians, sum of their absolute spreads) at ``count`` channels."""
        total = spread = 0.0
        for _, module, shape in self._layers_at(unit, count):
            m = self._time(module, shape, repeats=repeats)
            total += m.value
            if m.ci_low is not None and m.ci_high is not None:
                spread += (m.ci_high - m.ci_low) / 2
            values = m.extra.get("repeat_values") if m.extra else None
            if values:
                spread += (max(values) - min(values)) / 2
        return total, spread


def _grid(low: int, high: int, points: int) -> list[int]:
    """About ``points`` counts from ``low`` to ``high`` (both included).

    The counts between are the multiples of a power of two, so that runtimes
    which are fast at aligned counts (most are) show their fast counts on the
    coarse grid; the bisection then finds the edges between them.
    """
    if high <= low:
        return [high]
    stride = 2 ** max(0, math.floor(math.log2(max(1.0, (high - low) / max(1, points - 1)))))
    first = -(-low // stride) * stride
    return sorted({low, high, *range(first, high, stride)})


def probe_staircase(
    space: ChannelSpace,
    oracle: Oracle | str,
    *,
    cache: Any | None,
    counts_per_unit: int = 8,
    noise_floor: float = 0.02,
    resolution: int | None = None,
    min_time: float | None = PROBE_MIN_TIME,
    units: Iterable[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    seconds: float | None = None,
    fallback: int = 1,
) -> Staircase:
    """Measure every unit's latency staircase on ``oracle`` and choose its step tops.

    ``oracle`` is a latency oracle (the one a run's latency budget was bound to,
    ``Constraint.judge``), or its spec string, built here.

    ``space`` is a ChannelSpace (its ``min_keep`` sets the smallest count
    probed); ``cache`` an ``oracles.MeasurementCache`` (a second probe of the
    same space on the same machine is answered from it with no oracle call);
    ``counts_per_unit`` the coarse grid's size before bisection near jumps;
    ``noise_floor`` the smallest relative jump that counts as a step;
    ``resolution`` the width, in channels, at which the bisection of a jump
    stops (default ``default_resolution(channels)``: 1 up to 64 channels, then
    1/64 of the unit's channels rounded down to a power of two; an interval no
    wider is not timed inside, so the lower count of the last interval timed is
    the step top, at most ``2 * resolution - 1`` channels short of the exact
    edge); ``min_time`` the seconds each one-layer
    model is timed for where the oracle's spec left its ``min_time`` at the
    default (None: the spec's own protocol); ``units`` restricts the probe to
    some unit ids; ``progress(done, total, unit_id)`` is called after each unit's
    coarse grid.

    ``seconds`` bounds the probe's wall time (None: no bound), for oracles whose
    call is slow (a TensorRT engine build per one-layer model, a remote server).
    The probe times every unit at its full count, then the coarse grids, slowest
    units first, then bisects the jumps where the most latency is at stake first,
    and stops where the time runs out: a unit with its coarse grid timed gets its
    steps from the counts timed (``UnitStaircase.complete`` False where a jump was
    left unbisected); a unit without is listed in ``Staircase.left_out``, built at
    multiples of ``fallback`` (1: not rounded). Without a bound the result is the
    same as bisecting unit by unit.

    Example::

        stairs = probe_staircase(space, "onnxruntime:cpu?threads=1", cache=MeasurementCache())
        space = ChannelSpace(model, example_input_shape=shape, channel_choices=stairs.choices())
    """
    _check_probe_options(
        space, counts_per_unit=counts_per_unit, noise_floor=noise_floor, resolution=resolution,
        seconds=seconds, fallback=fallback,
    )  # fmt: skip
    target, timing = _latency_oracles(oracle, min_time)
    chosen = _chosen_units(space, units)
    t0 = time.perf_counter()
    prober = _Prober(space, timing, cache)
    members = _shared_probes(
        prober, chosen, min_keep=space.min_keep, points=counts_per_unit, floor=noise_floor,
        resolution=resolution,
    )  # fmt: skip
    deadline = None if seconds is None else t0 + float(seconds)
    _run_probes(
        list({id(p): p for _, p in members}.values()), deadline=deadline, progress=progress,
        members=members,
    )  # fmt: skip
    results, left_out = _unit_results(prober, members, fallback=fallback)
    settings = {
        "counts_per_unit": counts_per_unit, "noise_floor": float(noise_floor),
        "resolution": resolution, "timing_spec": timing.spec,
        "seconds_budget": None if seconds is None else float(seconds), "fallback": int(fallback),
    }  # fmt: skip
    stairs = Staircase(
        oracle=target.spec, unit=timing.unit, units=tuple(results), oracle_calls=prober.calls,
        cached_calls=prober.cached, seconds=time.perf_counter() - t0, settings=settings,
        left_out=left_out,
    )  # fmt: skip
    _log_probe(stairs, seconds=seconds, fallback=fallback)
    return stairs


def _check_probe_options(
    space: Any,
    *,
    counts_per_unit: int,
    noise_floor: float,
    resolution: int | None,
    seconds: float | None,
    fallback: int,
) -> None:
    """ConfigError for a space that is not a channel space or an option out of its range."""
    if space.granularity != "channel":
        raise ConfigError("the latency staircase is probed on a channel space only")
    if not isinstance(counts_per_unit, int) or counts_per_unit < 2:
        raise ConfigError(
            f"counts_per_unit must be an integer of 2 or more, got {counts_per_unit!r}"
        )
    if not 0.0 <= float(noise_floor) < 1.0:
        raise ConfigError(f"noise_floor must lie in [0, 1), got {noise_floor!r}")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
    ):
        raise ConfigError(f"resolution must be a positive integer, got {resolution!r}")
    if seconds is not None and not float(seconds) > 0:
        raise ConfigError(f"the staircase probe's seconds must be positive, got {seconds!r}")
    if isinstance(fallback, bool) or not isinstance(fallback, int) or fallback < 1:
        raise ConfigError(f"fallback must be a positive integer, got {fallback!r}")


def _latency_oracles(oracle: Oracle | str, min_time: float | None) -> tuple[Oracle, Oracle]:
    """(the target oracle, the same oracle with the probe's short timing window)."""
    import oracles

    target = oracle if isinstance(oracle, oracles.Oracle) else oracles.get_oracle(oracle)
    timing = _probe_oracle(target, min_time)
    if timing.quantity != "latency":
        raise ConfigError(
            "the staircase is probed with a latency oracle (onnxruntime, tensorrt, torch, ...), "
            f"got {timing.spec!r}, which measures {timing.quantity}"
        )
    return target, timing


def _chosen_units(space: Any, units: Iterable[str] | None) -> list[Any]:
    """The space's units the probe times: all, or those named in ``units``."""
    chosen = list(space.units)
    if units is None:
        return chosen
    wanted = set(units)
    unknown = sorted(wanted - {u.id for u in chosen})
    if unknown:
        raise ConfigError(f"no unit named {', '.join(unknown)} in the space")
    return [u for u in chosen if u.id in wanted]


def _shared_probes(
    prober: _Prober,
    chosen: Sequence[Any],
    *,
    min_keep: float,
    points: int,
    floor: float,
    resolution: int | None,
) -> list[tuple[Any, _UnitProbe]]:
    """Each unit with its probe; units whose one-layer models have the same shapes share one
    probe (the repeated blocks of a ResNet are probed once)."""
    probes: dict[tuple, _UnitProbe] = {}
    members: list[tuple[Any, _UnitProbe]] = []
    for unit in chosen:
        low = _lowest(unit.channels, min_keep)
        shape = prober.unit_shape(unit, low)
        if shape not in probes:
            probes[shape] = _UnitProbe(
                prober, unit, low=low, points=points, floor=floor,
                resolution=resolution or default_resolution(unit.channels),
            )  # fmt: skip
        members.append((unit, probes[shape]))
    return members


def _unit_results(
    prober: _Prober, members: Sequence[tuple[Any, _UnitProbe]], *, fallback: int
) -> tuple[list[UnitStaircase], dict[str, tuple[int, ...]]]:
    """Each probed unit's staircase, and the fallback counts of the units left out."""
    results: list[UnitStaircase] = []
    left_out: dict[str, tuple[int, ...]] = {}
    for unit, p in members:
        if not p.coarse_done:  # the budget ran out before its coarse grid was timed
            left_out[unit.id] = _multiples(p.low, unit.channels, fallback)
            continue
        names = tuple(name for name, _, _ in prober._layers_at(unit, unit.channels))
        results.append(dataclasses.replace(p.result(), unit=unit.id, layers=names))
    return results, left_out


def _log_probe(stairs: Staircase, *, seconds: float | None, fallback: int) -> None:
    cut = [u.unit for u in stairs.units if not u.complete]
    left_out = stairs.left_out
    log.info(
        "latency staircase on %s: %d units, %d oracle calls, %d from the cache, %.1f s%s",
        stairs.oracle,
        len(stairs.units),
        stairs.oracle_calls,
        stairs.cached_calls,
        stairs.seconds,
        "" if not (cut or left_out) else (
            f"; the {seconds:g} s budget ran out: {len(cut)} units with steps not bisected to "
            f"the end, {len(left_out)} not probed (their counts are "
            + ("not rounded)" if fallback <= 1 else f"rounded to multiples of {fallback})")
        ),
    )  # fmt: skip


def _multiples(low: int, channels: int, step: int) -> tuple[int, ...]:
    """Counts for a unit the probe did not reach: multiples of ``step`` from ``low`` up, and the
    full count (none for ``step`` 1: the space's own rounding applies)."""
    if step <= 1:
        return ()
    return tuple(sorted({*range(-(-max(low, 1) // step) * step, channels, step), channels}))


class _UnitProbe:
    """One unit's (or shape class's) measurements as the probe goes."""

    def __init__(
        self, prober: _Prober, unit: Any, *, low: int, points: int, floor: float, resolution: int
    ) -> None:
        self.prober, self.unit, self.low, self.floor = prober, unit, low, floor
        self.resolution = resolution
        self.grid = _grid(low, unit.channels, points)
        self.values: dict[int, float] = {}
        self.noise = floor
        self.coarse_done = False
        self.complete = False  # every jump bisected down to the resolution

    def full(self) -> float:
        top, spread = self.prober.unit_latency(self.unit, self.unit.channels, repeats=NOISE_REPEATS)
        self.noise = max(self.floor, spread / top if top > 0 else 0.0)
        self.values[self.unit.channels] = top
        return top

    def at(self, count: int) -> float:
        if count not in self.values:
            self.values[count] = self.prober.unit_latency(self.unit, count)[0]
        return self.values[count]

    def splits(self, a: int, b: int) -> bool:
        """Whether the interval is bisected: wider than the resolution, and a jump above noise."""
        return b - a > self.resolution and self.at(b) > self.at(a) * (1.0 + self.noise)

    def result(self) -> UnitStaircase:
        counts = tuple(sorted(self.values))
        latency = tuple(self.values[c] for c in counts)
        choices = find_steps(counts, latency, noise=self.noise)
        log.debug("unit %s: %d counts timed, steps at %s", self.unit.id, len(counts), choices)
        return UnitStaircase(
            unit=self.unit.id, channels=self.unit.channels, counts=counts, latency=latency,
            noise=self.noise, choices=choices, complete=self.complete,
        )  # fmt: skip


def _run_probes(
    probes: list[_UnitProbe],
    *,
    deadline: float | None,
    progress: Callable[[int, int, str], None] | None,
    members: list[tuple[Any, _UnitProbe]],
) -> None:
    """Time every unit at its full count, then its coarse grid (slowest units first), then
    bisect the jumps where the most latency is at stake first, until ``deadline``.

    Without a deadline every unit ends as a depth-first bisection would leave it (the same
    intervals are split); with one, what was timed before it is kept: a unit whose coarse
    grid is complete has its steps from the counts timed (``complete`` False where a jump
    was left unbisected), the others none.
    """
    import heapq

    def late() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    timed: list[tuple[float, int]] = []
    for i, p in enumerate(probes):
        if late():
            break
        timed.append((p.full(), i))
    # Progress counts every unit twice: its coarse grid timed, then its step edges found.
    total, done = 2 * len(members), 0

    def finished(p: _UnitProbe, what: str) -> None:
        nonlocal done
        if progress is not None:
            for unit, q in members:
                if q is p:
                    done += 1
                    progress(done, total, f"{unit.id} {what}")

    for _, i in sorted(timed, key=lambda t: (-t[0], t[1])):
        p = probes[i]
        for count in p.grid:
            if late():
                break
            p.at(count)
        else:
            p.coarse_done = True
            finished(p, "coarse grid")
    # Bisection, the interval with the largest latency jump first. As in a depth-first
    # bisection, an interval's ends are timed only when it is wider than the resolution:
    # a halved interval inherits its parent's jump as its priority until its ends are timed.
    heap: list[tuple[float, int, int, int]] = []
    pending = [0] * len(probes)  # intervals of each unit still in the heap
    for i, p in enumerate(probes):
        if p.coarse_done:
            p.complete = True
            for a, b in zip(p.grid, p.grid[1:], strict=False):
                heapq.heappush(heap, (-(p.values[b] - p.values[a]), i, a, b))
                pending[i] += 1
            if not pending[i]:
                finished(p, "steps found")
    while heap:
        jump, i, a, b = heapq.heappop(heap)
        p = probes[i]
        pending[i] -= 1
        if b - a <= p.resolution:
            if not pending[i]:
                finished(p, "steps found")
            continue
        if late() and not (a in p.values and b in p.values):
            heapq.heappush(heap, (jump, i, a, b))
            _mark_unfinished(heap, probes)
            break
        if not p.splits(a, b):
            if not pending[i]:
                finished(p, "steps found")
            continue
        mid = (a + b) // 2
        rise = -(p.at(b) - p.at(a))
        heapq.heappush(heap, (rise, i, a, mid))
        heapq.heappush(heap, (rise, i, mid, b))
        pending[i] += 2


def _mark_unfinished(heap: list[tuple[float, int, int, int]], probes: list[_UnitProbe]) -> None:
    """At the deadline: every unit with a jump still waiting is not complete (no call: an
    interval with an end not timed yet counts as one)."""
    for _, j, c, d in heap:
        q = probes[j]
        if d - c > q.resolution and (c not in q.values or d not in q.values or q.splits(c, d)):
            q.complete = False


def _lowest(channels: int, min_keep: float) -> int:
    """The smallest count probed: ``min_keep`` of the unit's channels, at least 1."""
    return min(channels, max(1, math.floor(min_keep * channels + 0.5 + 1e-9)))


def default_resolution(channels: int) -> int:
    """Bisection width for a unit of ``channels``: 1 up to 64, then channels/64 as a power of 2.

    >>> [default_resolution(c) for c in (16, 64, 128, 256, 512)]
    [1, 1, 2, 4, 8]
    """
    return 2 ** max(0, math.floor(math.log2(max(1, channels) / 64))) if channels > 64 else 1


def _probe_oracle(oracle: Any, min_time: float | None) -> Any:
    """``oracle`` with a short timing window for one-layer models, where its spec left the default.

    A one-layer model runs in tens of microseconds: 0.1 s of timing is
    thousands of runs, and most of a probe's time was the default half-second
    window per call. A spec that sets ``min_time`` itself keeps it.
    """
    if min_time is None or not dataclasses.is_dataclass(oracle):
        return oracle
    fields = {f.name: f for f in dataclasses.fields(oracle)}
    if "min_time" not in fields or oracle.min_time != fields["min_time"].default:
        return oracle
    changes: dict[str, Any] = {"min_time": float(min_time)}
    if "max_time" in fields and oracle.max_time > 20 * min_time:
        changes["max_time"] = max(float(min_time), 20 * float(min_time))
    return dataclasses.replace(oracle, **changes)


# --------------------------------------------------------------------------- what was built


def proposed_and_built(space: Any, policy: Any) -> dict[str, tuple[int, int]]:
    """Per unit id, (the count ``policy`` proposes, the count the space builds).

    The proposed count is the ratio times the unit's channels (``min_keep``
    applied, rounded to the nearest channel, at least 1); the built count is
    ``space.kept_channels(policy)``: after ``round_to`` or the staircase's
    snapping.
    """
    built = space.kept_channels(policy)
    keep = policy.aligned(space).keep
    out = {}
    for k, unit in zip(keep, space.units, strict=True):
        want = max(float(k), space.min_keep) * unit.channels
        proposed = int(min(unit.channels, max(1, math.floor(want + 0.5 + 1e-9))))
        out[unit.id] = (proposed, int(built[unit.id]))
    return out


# --------------------------------------------------------------------------- report side


def _dominant(stairs: Staircase, top: int) -> list[UnitStaircase]:
    """The ``top`` units whose latency changes most between their smallest and full count."""
    return sorted(stairs.units, key=lambda u: u.latency[-1] - u.latency[0], reverse=True)[:top]


def staircase_table(
    stairs: Staircase, *, built: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """One row per unit: channels, allowed counts, the built count and its step's latency."""
    rows = []
    for u in stairs.units:
        count = None if built is None else built.get(u.unit)
        rows.append(
            {
                "unit": u.unit,
                "channels": u.channels,
                "choices": list(u.choices),
                "steps": len(u.choices),
                "noise": u.noise,
                "built": count,
                "latency_built": None if count is None else u.latency_at(count),
                "latency_full": u.latency[-1],
                "unit_of_latency": stairs.unit,
            }
        )
    return rows


def write_staircase_plots(
    stairs: Staircase,
    out_dir: str | Path,
    *,
    built: Mapping[str, int] | None = None,
    top: int = 3,
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Plot the measured staircase of the ``top`` units that dominate latency.

    Writes ``<out_dir>/staircase_<unit>.png`` (measured latency against kept
    channels, the allowed counts, and the count built in the final model from
    ``built``, unit id -> count, when given) and returns the paths and
    ``staircase_table(stairs, built=built)``. Needs matplotlib (the ``report``
    plots need it too).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for u in _dominant(stairs, top):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.step(u.counts, u.latency, where="post", color="0.6", lw=1)
        ax.plot(u.counts, u.latency, ".", color="0.3", label="measured")
        table = dict(zip(u.counts, u.latency, strict=True))
        ax.plot(
            u.choices,
            [table[c] for c in u.choices],
            "o",
            mfc="none",
            color="tab:blue",
            label="allowed (step tops)",
        )
        count = None if built is None else built.get(u.unit)
        if count is not None:
            ax.axvline(count, color="tab:red", ls="--", lw=1)
            ax.plot([count], [u.latency_at(count)], "*", ms=12, color="tab:red", label="built")
        ax.set_xlabel("kept channels")
        ax.set_ylabel(f"latency of the unit's layers ({stairs.unit})")
        ax.set_title(f"{u.unit} on {stairs.oracle} (noise {u.noise:.1%})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in u.unit)
        path = out / f"staircase_{safe}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths, staircase_table(stairs, built=built)
