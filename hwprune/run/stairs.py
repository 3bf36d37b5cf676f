"""Stage ``staircase`` (``round_to='auto'``): the channel counts the latency oracle's runtime likes.

Before the search, every prunable unit's latency is timed at a handful of
channel counts on the first latency budget's oracle
(``hwprune.space.staircase.probe_staircase``, on the round_to=1 space the
load stage built) and the space is rebuilt with ``channel_choices``: each
count the searcher proposes is built as the top of its latency step. The
staircase is written to ``RUN/staircase.json``; a resumed run reads it back
and never probes again. The probe's measurements go through the machine's
measurement cache (``oracles.default_cache_path()``, ``$HWPRUNE_CACHE``), not
the run's, so a second run of the same model on the same oracle and machine
is answered from it without an oracle call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from hwprune.config import AUTO, default_round_to
from hwprune.run.context import RunContext
from hwprune.run.load import Loaded, build_space, check_export, space_options

log = logging.getLogger(__name__)

__all__ = [
    "STAIRCASE_FILE",
    "staircase",
    "channel_section",
    "needs_staircase",
    "read_staircase",
]

STAIRCASE_FILE = "staircase.json"


def staircase(ctx: RunContext, loaded: Loaded, constraints: Sequence[Any]) -> Loaded:
    """``loaded`` with its space snapped to the measured staircase (round_to 'auto'), else as is."""
    from hwprune.space.staircase import Staircase, probe_staircase
    from oracles import MeasurementCache

    config = ctx.config
    # A searcher that prices units by their staircase (latency-knapsack) gets it measured
    # whatever round_to is; the space then keeps its own round_to.
    snap = config.round_to == AUTO
    if not (snap or needs_staircase(config.agent)) or config.granularity != "channel":
        return loaded
    lead = next((c for c in constraints if c.name == "latency"), None)
    if lead is None:  # the config resolves 'auto' away without a latency budget
        return loaded
    spec = lead.oracle
    oracle = lead.judge if lead.judge is not None else spec  # built once, when bound
    path = ctx.path(STAIRCASE_FILE)
    units = sum(1 for u in loaded.space.units if u.step == 1)
    with ctx.stage("staircase", units, "probing the latency staircase") as step:
        if path.is_file():
            stairs = Staircase.load(path)
            log.info("latency staircase read back from %s (not probed again)", path)
            step(units, message="read back")
        else:

            def progress(done: int, total: int, unit: str) -> None:
                step(done, total=total, unit=unit)

            # The probe takes minutes; a model the run could not export is refused first.
            check_export(config, loaded.space)
            # Units pruned in blocks (attention heads) keep their block size: not probed.
            single = [u.id for u in loaded.space.units if u.step == 1]
            try:
                stairs = probe_staircase(
                    loaded.space, oracle, cache=MeasurementCache(), units=single,
                    progress=progress, seconds=config.staircase_seconds or None,
                    fallback=default_round_to([oracle]),
                )  # fmt: skip
            except Exception as exc:  # a one-layer model the oracle cannot time: no staircase
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                log.warning(
                    "round_to auto: the latency staircase could not be probed on %s (%s: %s); "
                    "channel counts are not rounded (pass --round-to N to choose a multiple)",
                    spec, type(exc).__name__, first,
                )  # fmt: skip
                return loaded
            stairs.save(path)
            step(units, oracle_calls=stairs.oracle_calls, cached_calls=stairs.cached_calls)
        if not snap:
            return loaded
        choices = {k: [int(c) for c in v] for k, v in stairs.choices().items()}
        options = {**space_options(config), "channel_choices": choices}
        space = build_space(loaded.model, example_inputs=loaded.example_inputs, options=options,
                            structure=loaded.structure)  # fmt: skip
    return dataclasses.replace(loaded, space=space)


def needs_staircase(agent: str) -> bool:
    """Whether the searcher named ``agent`` asks the run for the latency staircase."""
    from hwprune.agents import SEARCHERS

    cls = SEARCHERS.get(agent) if agent in SEARCHERS else None
    return cls is not None and cls.needs_staircase


def read_staircase(ctx: RunContext) -> Any:
    """The staircase the ``staircase`` stage measured (``RUN/staircase.json``), or None."""
    from hwprune.space.staircase import Staircase

    path = ctx.path(STAIRCASE_FILE)
    return Staircase.load(path) if path.is_file() else None


def channel_section(ctx: RunContext, loaded: Loaded, policy: Any) -> tuple[str, list[Any]]:
    """report.md's "Channel counts" section and its plots (empty without a channel space).

    Per unit: its channels, the count the chosen policy proposed and the count
    built; with a staircase, the allowed counts and the unit's measured latency
    at the built count against the full count, and a plot of the staircase of
    the three units whose latency changes most, the built count marked.
    """
    from hwprune.space.staircase import Staircase, proposed_and_built, write_staircase_plots

    space = loaded.space
    if space.granularity != "channel":
        return "", []
    pb = proposed_and_built(space, policy)
    path = ctx.path(STAIRCASE_FILE)
    # A staircase measured for the searcher alone (round_to N) did not snap the counts.
    snapped = path.is_file() and ctx.config.round_to == AUTO
    stairs = Staircase.load(path) if snapped else None
    lines = ["## Channel counts", ""]
    plots: list[Any] = []
    if stairs is None:
        lines += [
            f"Counts are multiples of {space.round_to} (`round_to`). Proposed: the searcher's "
            "keep ratio times the unit's channels; built: the count in the final model.",
            "",
            "| unit | channels | proposed | built |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| `{u.id}` | {u.channels} | {pb[u.id][0]} | {pb[u.id][1]} |"
                  for u in space.units]  # fmt: skip
        return "\n".join(lines), plots
    built = {k: b for k, (_, b) in pb.items()}
    try:
        plots, table = write_staircase_plots(stairs, ctx.run_dir / "plots", built=built, top=3)
    except Exception as exc:  # a plotting failure must not cost a finished run its report
        log.warning("staircase plots failed: %s", exc)
        from hwprune.space.staircase import staircase_table

        table = staircase_table(stairs, built=built)
    rows = {r["unit"]: r for r in table}
    lines += [
        f"`round_to auto`: each unit's latency against its channel count was measured on "
        f"`{stairs.oracle}` ({stairs.oracle_calls} oracle calls, {stairs.cached_calls} answered "
        f"by the measurement cache, {stairs.seconds:.0f} s; `{STAIRCASE_FILE}`), and every "
        "proposed count was built as the top of its latency step (the most channels for the "
        "same latency). Latency: the sum of the unit's layers timed alone.",
    ]
    if not stairs.complete:
        lines += ["", _unfinished_probe(stairs)]
    lines += _staircase_table(space, stairs, pb, rows)
    if plots:
        lines += ["", "The units whose latency changes most, their measured staircase and the "
                  "count built:", ""]  # fmt: skip
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines), plots


def _unfinished_probe(stairs: Any) -> str:
    """What a probe whose time budget ran out left coarse or unprobed, and how to finish it."""
    cut = [u.unit for u in stairs.units if not u.complete]
    budget = stairs.settings.get("seconds_budget")
    fallback = int(stairs.settings.get("fallback", 1))
    return (
        f"The probe's time budget ({budget:g} s, `staircase_seconds`) ran out before it was "
        f"done: {len(cut)} units have steps from a coarser set of counts (a jump not "
        f"bisected to its edge), and {len(stairs.left_out)} were not probed "
        + ("(their counts are not rounded)." if fallback <= 1 else
           f"(built at multiples of {fallback}).")
        + " A larger `--staircase-seconds` (or 0, no limit) probes them; the measurements "
        "made so far are in the measurement cache, so the next probe starts from them."
    )  # fmt: skip


def _staircase_table(
    space: Any, stairs: Any, pb: dict[str, tuple[int, int]], rows: dict[str, Any]
) -> list[str]:
    """The "Channel counts" table with a staircase: allowed counts and latency built / full."""
    lines = [
        "",
        f"| unit | channels | proposed | built | allowed counts | latency built / full "
        f"({stairs.unit}) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for u in space.units:
        r = rows.get(u.id)
        allowed = " ".join(str(c) for c in r["choices"]) if r else "-"
        if r is None and u.id in stairs.left_out:
            allowed = "not probed" + (
                f": multiples of {stairs.settings.get('fallback')}" if stairs.left_out[u.id] else ""
            )
        lat = (f"{r['latency_built']:.4f} / {r['latency_full']:.4f}"
               if r and r["latency_built"] is not None else "-")  # fmt: skip
        lines.append(f"| `{u.id}` | {u.channels} | {pb[u.id][0]} | {pb[u.id][1]} | {allowed} "
                     f"| {lat} |")  # fmt: skip
    return lines
