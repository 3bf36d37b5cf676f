"""How precise a run's timings were: the search's, the dense reference's and the final proof's.

Every timed measurement carries its median's 95% confidence interval and whether
that interval reached the oracle's ``rel_ci`` before a cap stopped the timing
(``converged``). The search times each candidate with a capped stop rule
(``Evaluator.search_oracles``), so on a busy machine most search values stop at
the cap: the report says so, beside the precision of the values that are
verdicts (the final proof) and references (the dense model).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

__all__ = ["rel_ci", "timing_report"]


def rel_ci(m: Any) -> float | None:
    """Half-width of a measurement's confidence interval relative to its value (None: none)."""
    if m.ci_low is None or m.ci_high is None or not m.value > 0:
        return None
    return (float(m.ci_high) - float(m.ci_low)) / (2.0 * float(m.value))


def _one(m: Any) -> dict[str, Any]:
    extra = dict(m.extra or {})
    return {
        "value": float(m.value),
        "ci_low": m.ci_low,
        "ci_high": m.ci_high,
        "rel_ci": rel_ci(m),
        "converged": extra.get("converged"),
        "samples": int(m.samples),
        "cv": float(m.cv),
        "repeat_values": list(extra.get("repeat_values", [])),
        "oracle": m.oracle,
    }


def timing_report(evaluator: Any, final: Mapping[str, Any]) -> dict[str, Any]:
    """Per timed budget: the oracle's target, the search's stop rule and what its measured
    candidates reached, the dense reference and the final proof (each with its interval)."""
    out: dict[str, Any] = {}
    for c in evaluator.constraints:
        oracle = evaluator.oracles[c.name]
        if not oracle.timed:
            continue
        measured = [
            o.measurements[c.name]
            for o in evaluator.history
            if c.name in o.measurements and o.sources.get(c.name, "measured") == "measured"
        ]
        widths = [w for w in (rel_ci(m) for m in measured) if w is not None]
        search: dict[str, Any] = {
            "measured": len(measured),
            "converged": sum(1 for m in measured if (m.extra or {}).get("converged") is True),
            "rel_ci_median": statistics.median(widths) if widths else None,
            "rel_ci_max": max(widths) if widths else None,
            "samples_median": statistics.median(m.samples for m in measured) if measured else None,
        }
        entry: dict[str, Any] = {
            "oracle": oracle.spec,
            "target_rel_ci": oracle.precision_target(),
            "search_oracle": evaluator.search_oracles[c.name].spec,
            "search": search,
        }
        if c.name in evaluator.dense:
            entry["dense"] = _one(evaluator.dense[c.name])
        if c.name in final:
            entry["final"] = _one(final[c.name])
        out[c.name] = entry
    return out


def timing_lines(timing: Mapping[str, Any], *, units: Mapping[str, str]) -> list[str]:
    """report.md's section on the precision of the timed values (empty: nothing timed)."""
    from hwprune.budgets import format_value

    if not timing:
        return []

    def pct(x: float | None) -> str:
        return "-" if x is None else f"±{100 * x:.1f}%"

    def reached(m: Mapping[str, Any]) -> str:
        ok = m.get("converged")
        return "" if ok is None else (", target reached" if ok else ", target NOT reached")

    lines = ["", "## Timing precision", ""]
    for name, t in timing.items():
        unit = units.get(name, "")
        target = t.get("target_rel_ci")
        lines.append(
            f"`{name}` on `{t['oracle']}`: each value is the median of its runs; the target is "
            f"its 95% confidence interval within {pct(target)}."
        )
        lines.append("")
        s = t["search"]
        capped = t["search_oracle"] != t["oracle"]
        rule = f"timed with a capped stop rule, `{t['search_oracle']}`" if capped else "timed"
        if s["measured"]:
            lines.append(
                f"- search: {s['measured']} candidates {rule}; {s['converged']} reached the "
                f"target, the rest stopped at a cap (interval {pct(s['rel_ci_median'])} median, "
                f"{pct(s['rel_ci_max'])} worst; {s['samples_median']:g} runs median). These "
                "values rank candidates; the verdicts below are measured with the full rule."
            )
        for key, what in (("dense", "dense reference"), ("final", "final proof")):
            m = t.get(key)
            if not m:
                continue
            calls = m["repeat_values"]
            spread = (
                f"; {len(calls)} calls: " + ", ".join(format_value(v, unit) for v in calls)
                if calls
                else ""
            )
            interval = (
                f"95% CI {format_value(m['ci_low'], unit)}-{format_value(m['ci_high'], unit)} "
                f"({pct(m['rel_ci'])}, {m['samples']} runs{reached(m)})"
                if m["ci_low"] is not None
                else f"{m['samples']} runs"
            )
            lines.append(f"- {what}: {format_value(m['value'], unit)}, {interval}{spread}")
        lines.append("")
    return lines[:-1]
