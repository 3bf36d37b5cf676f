"""Racing a proportion score: stop scoring a candidate once it is clearly worse than the best.

A proxy accuracy is a proportion over the task's fixed images. Scored on a growing prefix of
them (128, 256, 512, ... images, then all), a candidate can be stopped at a look where, at the
stated confidence, its accuracy on all the images could not matter to the search or the final
choice:

* ``worse``: its one-sided Wilson upper bound is below the best feasible candidate's score less
  the final choice's tie tolerance (:func:`~hwprune.evaluate.accuracy_tolerance`): it could not
  even tie with that candidate;
* ``chance``: its upper bound is at or below the chance floor
  (:func:`~hwprune.evaluate.chance_floor`), where the searchers learn from its size and the final
  choice ranks it by size, not by its score.
* ``chance`` too, at the first look, when the dense model itself scores at or below the chance
  floor (``RaceBar.uninformed``: random weights, or a task the model has not learnt): then no
  candidate's score says anything the searchers or the final choice use (every candidate is
  ranked by size), and scoring the rest of the images would only cost time.

The error bound: the per-look bounds use ``(1 - confidence) / looks`` each (Bonferroni over the
looks that may stop), so a candidate whose true accuracy is above the bar is stopped with
probability at most ``1 - confidence`` over the whole race. A stopped candidate keeps its
estimate on the images it saw and the count (``Outcome.score_samples``): an honest score,
marked, never taken for a full measurement.

Leaf module: used by the evaluator and the final choice, depends on nothing of theirs.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "FIRST_LOOK",
    "RACE_CONFIDENCE",
    "RaceBar",
    "RaceResult",
    "look_sizes",
    "race",
    "race_z",
    "wilson_upper",
]

#: Images of the first look; each later look doubles it until the full set.
FIRST_LOOK = 128
#: The probability, over a whole race, that a candidate above the bar is not stopped wrongly.
RACE_CONFIDENCE = 0.95


def look_sizes(total: int, *, first: int = FIRST_LOOK) -> list[int]:
    """The prefix sizes a race scores at: ``first``, doubling, then ``total`` (always last)."""
    sizes: list[int] = []
    n = max(int(first), 1)
    while n < total:
        sizes.append(n)
        n *= 2
    return [*sizes, int(total)] if total > 0 else []


def race_z(confidence: float, looks: int) -> float:
    """The one-sided normal quantile each of ``looks`` stopping looks uses (Bonferroni)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be a fraction between 0 and 1, got {confidence!r}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / max(int(looks), 1))


def wilson_upper(p: float, n: int, z: float) -> float:
    """The one-sided Wilson score upper bound of a proportion ``p`` observed over ``n`` trials."""
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


@dataclass(frozen=True)
class RaceBar:
    """What a candidate must be able to reach to be scored in full.

    ``below``: the best feasible score less its tie tolerance (None: no such candidate yet);
    ``floor``: the chance floor (None: none). ``confidence``: see the module docstring.
    ``uninformed``: the dense model scores at chance, so every candidate stops at the first look.
    """

    below: float | None
    floor: float | None
    confidence: float = RACE_CONFIDENCE
    uninformed: bool = False

    @property
    def active(self) -> bool:
        return self.below is not None or self.floor is not None or self.uninformed


@dataclass(frozen=True)
class RaceResult:
    """A raced score: ``score`` over ``samples`` images; ``stopped`` names the rule that ended it
    early (``worse`` or ``chance``; None: scored on every image, a full measurement)."""

    score: float
    samples: int
    stopped: str | None = None


def race(
    stream: Generator[tuple[float, int], None, None], bar: RaceBar, *, total: int
) -> RaceResult:
    """Consume ``stream`` (the score on each look's prefix, with the prefix's size; the last
    look covers all ``total`` images) until ``bar`` stops it or it ends."""
    z = race_z(bar.confidence, max(len(look_sizes(total)) - 1, 1))
    score, seen = math.nan, 0
    try:
        for score, seen in stream:
            if seen >= total or not bar.active:
                continue
            upper = wilson_upper(score, seen, z)
            if bar.uninformed or (bar.floor is not None and upper <= bar.floor):
                return RaceResult(score=score, samples=seen, stopped="chance")
            if bar.below is not None and upper < bar.below:
                return RaceResult(score=score, samples=seen, stopped="worse")
    finally:
        stream.close()  # a stopped race leaves the rest of the images unscored
    return RaceResult(score=score, samples=seen)
